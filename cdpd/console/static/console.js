// The console's own script: charts from data attributes (uPlot), the live debugger (an
// EventSource with Live/Pause, search, pretty/raw), and the CSRF header for htmx requests.
"use strict";

document.addEventListener("htmx:configRequest", (event) => {
  const main = document.getElementById("main");
  if (main && main.dataset.csrf) event.detail.headers["X-CSRF-Token"] = main.dataset.csrf;
});

function drawCharts(root) {
  if (typeof uPlot === "undefined") return;
  const colours = ["#0550ae", "#bc4c00", "#a40e26"];
  for (const el of root.querySelectorAll("[data-chart]:not([data-drawn])")) {
    el.dataset.drawn = "1";
    const data = JSON.parse(el.dataset.chart);
    const names = el.dataset.series.split(",");
    const opts = {
      width: Math.max(280, el.clientWidth), height: 180,
      series: [{}, ...names.map((n, i) => ({ label: n, stroke: colours[i % colours.length], width: 2 }))],
      axes: [{}, { size: 50 }],
    };
    new uPlot(opts, [data.t, ...names.map((n) => data[n])], el);
  }
}

function pretty(message) {
  // The call as the library would have written it.
  const args = [];
  if (message.type === "track") args.push(message.event, message.properties || {});
  else if (message.type === "identify") args.push(message.userId || message.anonymousId, message.traits || {});
  else if (message.type === "page" || message.type === "screen") args.push(message.name || "", message.properties || {});
  else if (message.type === "group") args.push(message.groupId, message.traits || {});
  else if (message.type === "alias") args.push(message.userId, message.previousId);
  return "analytics." + message.type + "(" + args.map((a) => JSON.stringify(a, null, 2)).join(", ") + ")";
}

function startDebugger(section) {
  const list = section.querySelector("[data-events]");
  const status = section.querySelector("[data-status]");
  const search = section.querySelector("[data-action=search]");
  const live = section.querySelector("[data-action=live]");
  const pause = section.querySelector("[data-action=pause]");
  const view = section.querySelector("[data-action=view]");
  const capacity = Number(section.dataset.capacity) || 500;
  let source = null;
  let raw = false;

  const matches = (li) => !search.value || li.dataset.raw.toLowerCase().includes(search.value.toLowerCase());
  const render = (li) => {
    li.querySelector("pre code").textContent = raw ? JSON.stringify(JSON.parse(li.dataset.raw), null, 2) : li.dataset.pretty;
  };
  const add = (item) => {
    const message = JSON.parse(item.payload);
    const li = document.createElement("li");
    li.dataset.raw = item.payload;
    li.dataset.pretty = pretty(message);
    li.dataset.messageId = item.message_id;
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = item.type + (item.event ? ": " + item.event : "");
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = item.received_at;
    summary.appendChild(when);
    const pre = document.createElement("pre");
    pre.appendChild(document.createElement("code"));
    details.append(summary, pre);
    li.appendChild(details);
    render(li);
    li.hidden = !matches(li);
    list.prepend(li);
    while (list.children.length > capacity) list.lastElementChild.remove();
  };
  const connect = () => {
    source = new EventSource(section.dataset.stream);
    source.addEventListener("open", () => { status.textContent = "live"; });
    source.addEventListener("message", (e) => add(JSON.parse(e.data)));
    source.addEventListener("error", () => { status.textContent = "reconnecting…"; });
    live.setAttribute("aria-pressed", "true");
    pause.setAttribute("aria-pressed", "false");
  };
  live.addEventListener("click", () => { if (!source) connect(); });
  pause.addEventListener("click", () => {
    if (source) { source.close(); source = null; }
    status.textContent = "paused";
    live.setAttribute("aria-pressed", "false");
    pause.setAttribute("aria-pressed", "true");
  });
  search.addEventListener("input", () => { for (const li of list.children) li.hidden = !matches(li); });
  view.addEventListener("click", () => {
    raw = !raw;
    view.setAttribute("aria-pressed", String(raw));
    for (const li of list.children) render(li);
  });
  connect();
}

// The overview refreshes itself (htmx, every 10 s): draw the chart of the new copy.
document.addEventListener("htmx:afterSettle", () => drawCharts(document));

document.addEventListener("DOMContentLoaded", () => {
  drawCharts(document);
  for (const section of document.querySelectorAll("[data-stream]")) startDebugger(section);
});
