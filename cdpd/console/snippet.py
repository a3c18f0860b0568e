"""The analytics.js snippet a website pastes, pointing at this cdpd: the bundle, its chunks
and the settings all load from `base_url` (see cdpd/ingest/bundle.py), and the settings send
the events back to it."""

# ruff: noqa: E501 (the snippet is kept as Segment ships it, on one line)
from __future__ import annotations

import json
import shlex

# Segment's snippet 5.2.0, with the CDN host replaced by cdpd's and `_cdn` set so that
# analytics-next loads its chunks and settings from cdpd too.
_SNIPPET = """<script>
  !function(){var i="analytics",analytics=window[i]=window[i]||[];if(!analytics.initialize)if(analytics.invoked)window.console&&console.error&&console.error("Segment snippet included twice.");else{analytics.invoked=!0;analytics.methods=["trackSubmit","trackClick","trackLink","trackForm","pageview","identify","reset","group","track","ready","alias","debug","page","screen","once","off","on","addSourceMiddleware","addIntegrationMiddleware","setAnonymousId","addDestinationMiddleware","register"];analytics.factory=function(e){return function(){if(window[i].initialized)return window[i][e].apply(window[i],arguments);var n=Array.prototype.slice.call(arguments);if(["track","screen","alias","group","page","identify"].indexOf(e)>-1){var c=document.querySelector("link[rel='canonical']");n.push({__t:"bpc",c:c&&c.getAttribute("href")||void 0,p:location.pathname,u:location.href,s:location.search,t:document.title,r:document.referrer})}n.unshift(e);analytics.push(n);return analytics}};for(var n=0;n<analytics.methods.length;n++){var key=analytics.methods[n];analytics[key]=analytics.factory(key)}analytics.load=function(key,n){var t=document.createElement("script");t.type="text/javascript";t.async=!0;t.setAttribute("data-global-segment-analytics-key",i);t.src=analytics._cdn+"/analytics.js/v1/"+key+"/analytics.min.js";var r=document.getElementsByTagName("script")[0];r.parentNode.insertBefore(t,r);analytics._loadOptions=n};analytics._cdn=BASE_URL;analytics._writeKey=WRITE_KEY;analytics.SNIPPET_VERSION="5.2.0";
  analytics.load(WRITE_KEY);
  analytics.page();
  }}();
</script>"""


def snippet(base_url: str, write_key: str) -> str:
    """The snippet for one source; the values are JSON-quoted (and `</` escaped) so that no
    key or URL can end the script element."""
    return _SNIPPET.replace("BASE_URL", _js(base_url.rstrip("/"))).replace(
        "WRITE_KEY", _js(write_key)
    )


def _js(value: str) -> str:
    return json.dumps(value).replace("</", "<\\/")


SOURCE_TYPES = {
    "javascript": "Website (analytics.js)",
    "server": "Server (Python, Node.js, Go, Java, ... libraries)",
    "mobile": "Mobile app (iOS, Android, React Native)",
    "http": "HTTP API (any program)",
}


def setup(source_type: str | None, base_url: str, write_key: str) -> str | None:
    """How a library of the source's type is pointed at this cdpd (None: the website snippet
    is the setup)."""
    base = base_url.rstrip("/")
    host = base.split("://", 1)[-1]
    key = json.dumps(write_key)
    if source_type == "server":
        return (
            f"# Python (segment-analytics-python)\nimport segment.analytics as analytics\n"
            f"analytics.write_key = {key}\nanalytics.host = {json.dumps(base)}\n\n"
            f"// Node.js (@segment/analytics-node)\n"
            f"const analytics = new Analytics({{ writeKey: {key}, host: {json.dumps(base)} }})"
        )
    if source_type == "mobile":
        return (
            f"// iOS (analytics-swift)\nAnalytics(configuration: Configuration(writeKey: {key})"
            f'\n    .apiHost("{host}/v1").cdnHost("{host}/v1"))\n\n'
            f"// Android (analytics-kotlin)\nAnalytics({key}, applicationContext) {{\n"
            f'    apiHost = "{host}/v1"\n    cdnHost = "{host}/v1"\n}}'
        )
    if source_type == "http":
        return (
            f"curl -u {shlex.quote(write_key + ':')} {shlex.quote(base + '/v1/track')} \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            """  -d '{"userId": "u1", "event": "Order Completed", "properties": {"revenue": 7}}'"""
        )
    return None
