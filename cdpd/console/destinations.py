"""Destination pages: Segment's Delivery Overview (received, filtered at source, filtered at
the destination with the reason, pending retry, failed, delivered, p95 latency, over 10 min /
1 h / 24 h / 7 days), the error table with samples of what was sent, the request made and the
response, dead letters with a replay button, the circuit state; and the catalog."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from cdpd.config import ConfigError, Destination
from cdpd.console import catalog, overview
from cdpd.console.access import Principal
from cdpd.console.changes import NoConfigFile
from cdpd.console.web import Refused, redirect
from cdpd.destinations import rehearsal

if TYPE_CHECKING:
    from cdpd.console.web import Console


def routes(console: Console) -> list[web.RouteDef]:
    pages = DestinationPages(console)
    base = "/console/w/{workspace}/destinations/{destination}"
    return [
        web.get(base, console.page(pages.destination)),
        web.get(base + "/errors/{index}", console.page(pages.error_samples)),
        web.post(base + "/replay", console.page(pages.replay_dead, change=True)),
        web.post(base + "/retry", console.page(pages.retry, change=True)),
        web.post(base + "/enabled", console.page(pages.set_enabled, change=True)),
        web.get(base + "/settings", console.page(pages.settings_form)),
        web.post(base + "/settings", console.page(pages.settings_save, change=True)),
        web.get("/console/w/{workspace}/catalog", console.page(pages.catalog)),
        web.get("/console/w/{workspace}/catalog/{type}", console.page(pages.catalog_form)),
        web.post(
            "/console/w/{workspace}/catalog/{type}", console.page(pages.catalog_check, change=True)
        ),
    ]


class DestinationPages:
    def __init__(self, console: Console) -> None:
        self.console = console

    def _destination(
        self, request: web.Request, principal: Principal, needed: str = "read-only"
    ) -> tuple[Any, Destination]:
        console = self.console
        workspace = console.workspace_for(request, principal, needed)
        name = request.match_info["destination"]
        console.member_of(workspace, "destinations", name)
        destination = next(d for d in console.config.destinations if d.name == name)
        return workspace, destination

    def _sources_of(self, destination: Destination) -> list[str]:
        names = [s.name for s in self.console.config.sources]
        if destination.sources is None:
            return names
        return [n for n in names if n in destination.sources]

    async def destination(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, destination = self._destination(request, principal)
        parts = self.console.parts
        window = overview.window(request.query.get("window"))
        figures = await parts.data.destination_figures(
            destination, self._sources_of(destination), window
        )
        return self.console.render(
            request,
            "destination.html",
            {
                "title": destination.name,
                "workspace": workspace,
                "destination": destination,
                "type": type(destination).__name__,
                "window": window,
                "windows": list(overview.WINDOWS_S),
                "counts": figures.counts,
                "filtered": figures.filtered,
                "p95_ms": figures.p95_ms,
                "backlog": figures.backlog,
                "circuit": figures.circuit,
                "errors": figures.errors,
                "dead": figures.dead,
                "dead_total": figures.dead_total,
                "dead_counted": overview.DEAD_COUNTED,
                "notes": figures.notes,
                "settings": catalog.masked(destination),
                "chart": json.dumps(figures.chart) if figures.chart is not None else None,
                "may_operate": principal.may(workspace.name, "member"),
                "may_change": principal.may(workspace.name, "owner"),
                "from_console": parts.changes is not None
                and parts.changes.fragment_of(destination.name) is not None,
                "notice": request.query.get("notice"),
            },
            principal=principal,
        )

    async def error_samples(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        """An error's samples: what was sent, the request made (rebuilt by the same code that
        sends), and the response (status and the error the destination answered)."""
        workspace, destination = self._destination(request, principal)
        data = self.console.parts.data
        window = overview.window(request.query.get("window"))
        sources = self._sources_of(destination)
        errors = (await data.destination_figures(destination, sources, window)).errors
        index = request.match_info["index"]
        if not index.isdigit() or int(index) >= len(errors):
            raise Refused(404, "That error is no longer in this window.")
        group = errors[int(index)]
        samples = []
        for message_id in group.message_ids:
            sent = await data.payload(message_id, sources)
            if sent is None:
                continue
            samples.append(
                {
                    "message_id": message_id,
                    "sent": _pretty(sent),
                    "request": await _request(destination, sent),
                    "response": f"{group.status or 'no response'}: {group.error}",
                }
            )
        return self.console.render(
            request,
            "error_samples.html",
            {
                "title": f"{destination.name}: error samples",
                "workspace": workspace,
                "destination": destination,
                "group": group,
                "samples": samples,
                "window": window,
            },
            principal=principal,
        )

    async def replay_dead(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, destination = self._destination(request, principal, "member")
        if not destination.enabled:
            raise Refused(409, f"{destination.name} is disabled; enable it before replaying.")
        count = await self.console.parts.data.replay_dead(destination)
        return _back(workspace.name, destination.name, f"{count} dead letters queued again")

    async def retry(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, destination = self._destination(request, principal, "member")
        count = await self.console.parts.data.retry(destination)
        return _back(workspace.name, destination.name, f"{count} waiting retries are due now")

    async def set_enabled(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        """Owners enable or disable a destination the console added; the reload stops or
        starts its lane from its stored position."""
        workspace, destination = self._destination(request, principal, "owner")
        enabled = (await request.post()).get("enabled") == "true"
        try:
            await self.console.changes().set_enabled(workspace.name, destination.name, enabled)
        except (ConfigError, NoConfigFile) as exc:
            raise Refused(409, str(exc)) from None
        done = "enabled" if enabled else "disabled"
        return _back(workspace.name, destination.name, f"{destination.name} is {done}")

    async def settings_form(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, destination = self._destination(request, principal, "owner")
        if self.console.changes().fragment_of(destination.name) is None:
            raise Refused(409, f"{destination.name} is defined in the main config file.")
        return self._form_page(
            request,
            principal,
            workspace,
            _as_form(destination),
            None,
            None,
            type_name=_kind(destination),
            editing=True,
        )

    async def settings_save(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        """New settings for a destination the console added; a secret left empty is kept."""
        workspace, destination = self._destination(request, principal, "owner")
        submitted = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        type_name = _kind(destination)
        current = msgspec.to_builtins(destination)
        for field in catalog.form(type_name):
            if (
                field.kind == "password"
                and not submitted.get(field.name)
                and current.get(field.name)
            ):
                submitted[field.name] = current[field.name]
        others = [d for d in self.console.config.destinations if d.name != destination.name]
        try:
            settings = catalog.read_form(type_name, destination.name, submitted)
            catalog.check(
                msgspec.structs.replace(self.console.config, destinations=others), settings
            )
            await self.console.changes().replace_destination(workspace.name, settings)
        except (ConfigError, NoConfigFile) as exc:
            shown = {**submitted, "name": destination.name}
            return self._form_page(
                request, principal, workspace, shown, str(exc), None, 422,
                type_name=type_name, editing=True,
            )  # fmt: skip
        return _back(workspace.name, destination.name, f"{destination.name}'s settings are saved")

    async def catalog(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = self.console.workspace_for(request, principal)
        return self.console.render(
            request,
            "catalog.html",
            {"title": "Catalog", "workspace": workspace, "types": catalog.types()},
            principal=principal,
        )

    async def catalog_form(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = self.console.workspace_for(request, principal)
        return self._form_page(request, principal, workspace, {}, None, None)

    async def catalog_check(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = self.console.workspace_for(request, principal, "owner")
        submitted = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        type_name = request.match_info["type"]
        try:
            settings = catalog.read_form(type_name, submitted.get("name", ""), submitted)
            catalog.check(self.console.config, settings)
            if submitted.get("action") == "add":
                await self.console.changes().add_destination(workspace.name, settings)
                return _back(workspace.name, settings["name"], f"{settings['name']} is added")
        except (ConfigError, NoConfigFile) as exc:
            return self._form_page(request, principal, workspace, submitted, str(exc), None, 422)
        return self._form_page(
            request, principal, workspace, submitted, None, catalog.fragment(settings)
        )

    def _form_page(
        self,
        request: web.Request,
        principal: Principal,
        workspace: Any,
        submitted: dict[str, str],
        error: str | None,
        fragment: str | None,
        status: int = 200,
        *,
        type_name: str | None = None,
        editing: bool = False,
    ) -> web.Response:
        type_name = type_name or request.match_info["type"]
        try:
            fields = catalog.form(type_name)
        except KeyError:
            raise Refused(404, f"The catalog has no destination type {type_name!r}.") from None
        info = next(t for t in catalog.types() if t.type == type_name)
        return self.console.render(
            request,
            "catalog_form.html",
            {
                "title": f"Add {info.catalog_name}",
                "workspace": workspace,
                "info": info,
                "fields": fields,
                "submitted": submitted,
                "error": error,
                "fragment": fragment,
                "may_change": principal.may(workspace.name, "owner"),
                "no_config_file": self._no_config_file(),
                "editing": editing,
            },
            status=status,
            principal=principal,
        )

    def _no_config_file(self) -> str | None:
        try:
            self.console.changes().conf_dir()
        except Refused as exc:
            return exc.message
        except NoConfigFile as exc:
            return str(exc)
        return None


def _kind(destination: Destination) -> str:
    return str(type(destination).__struct_config__.tag)


def _as_form(destination: Destination) -> dict[str, str]:
    """A destination's settings as its form shows them (secrets left empty: kept unless typed)."""
    shown: dict[str, str] = {}
    for key, value in msgspec.to_builtins(destination).items():
        if value is None or catalog.is_secret(key):
            continue
        if isinstance(value, bool):
            if value:
                shown[key] = "on"
        elif isinstance(value, (dict, list)):
            shown[key] = json.dumps(value)
        else:
            shown[key] = str(value)
    return shown


def _back(workspace: str, destination: str, notice: str) -> web.StreamResponse:
    from urllib.parse import quote

    return redirect(f"/console/w/{workspace}/destinations/{destination}?notice={quote(notice)}")


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


async def _request(destination: Destination, payload: str) -> str:
    try:
        message = json.loads(payload)
        rehearsed = await rehearsal.rehearse(destination, message)
    except (ValueError, ConfigError) as exc:
        return f"(cannot be rebuilt: {exc})"
    requests = [
        r for action in rehearsed.actions for r in (action.requests or []) if action.triggered
    ]
    if not requests:
        return "(no HTTP request: this destination is not sent over HTTP)"
    shown = []
    for r in requests:
        headers = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
        body = r.body if isinstance(r.body, str) else json.dumps(r.body, indent=2)
        shown.append(f"{r.method} {r.url}\n{headers}\n\n{body}")
    return "\n\n".join(shown)
