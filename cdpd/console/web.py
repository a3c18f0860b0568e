"""The console's HTTP side: sessions and CSRF, sign-in with its rate limit, static files, and
the page helpers the page modules share. Pages are rendered on the server with Jinja2; the
little JavaScript there is (htmx, uPlot, console.js) is served from this package.

Every page checks that the signed-in person has a role in the workspace in its path and that
the source, destination or warehouse it shows belongs to that workspace; anything else answers
404, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
import structlog
from aiohttp import web

from cdpd.config import Config, Workspace
from cdpd.console import access, seams
from cdpd.console.access import Principal, SigninLimit
from cdpd.console.changes import ConfigChanges
from cdpd.console.seams import ConsoleData, ConsoleState

log = structlog.get_logger()

COOKIE = "cdpd_session"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
        " img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    """A page that cannot be shown: its status and what to tell the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Parts:
    """What the console reads and operates on, through its seams (`cdpd.console.seams`). The
    config is read at each use: a reload replaces it. `changes` is None where the console does
    not change the config."""

    config_of: Callable[[], Config]
    state: ConsoleState
    data: ConsoleData
    closing: Callable[[], bool]
    changes: ConfigChanges | None = None

    @property
    def config(self) -> Config:
        return self.config_of()


Page = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


class Console:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        console = parts.config.console
        self.limit = SigninLimit(console.signin_max_failures, console.signin_window_s)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("cdpd.console", "templates"),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["kind"] = _kind
        self.templates.filters["figure"] = _figure
        self._static = resources.files("cdpd.console") / "static"

    @property
    def config(self) -> Config:
        return self.parts.config

    def routes(self) -> list[web.RouteDef]:
        from cdpd.console import (
            audiences,
            destinations,
            privacy,
            profiles,
            source_changes,
            sources,
            unavailable,
            warehouses,
        )

        routes = [
            web.get("/console", self.home_redirect),
            web.get("/console/", self.page(self.home)),
            web.get("/console/signin", self.signin_form),
            web.post("/console/signin", self.signin),
            web.post("/console/signout", self.page(self.signout, change=True)),
            web.get("/console/static/{name}", self.static),
            web.get("/console/w/{workspace}/", self.page(self.workspace_page)),
        ]
        for module in (sources, destinations, warehouses, privacy, profiles, audiences):
            routes += module.routes(self)
        elsewhere = {seams.CONFIG_CHANGES: source_changes}
        for page, module in elsewhere.items():
            reason = self.parts.data.unavailable.get(page)
            routes += (
                module.routes(self) if reason is None else unavailable.routes(self, module, reason)
            )
        return routes

    def changes(self) -> ConfigChanges:
        """The config changes, where the console makes them (409 with the reason elsewhere)."""
        if self.parts.changes is None:
            reason = self.parts.data.unavailable.get(seams.CONFIG_CHANGES, "")
            raise Refused(409, f"The console does not change the config here: {reason}")
        return self.parts.changes

    # -- wrapping --------------------------------------------------------------------------

    def page(self, handler: Page, *, change: bool = False) -> Callable[..., Any]:
        """Sign-in required; for a change, a valid CSRF token and a same-origin request."""

        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                principal = await self.principal(request)
                if principal is None:
                    if request.method == "GET":
                        return _redirect_signin(request)
                    raise Refused(401, "Sign in first.")
                if change:
                    await self._check_csrf(request, principal)
                response = await handler(request, principal)
            except Refused as exc:
                response = self.render(
                    request, "error.html", {"message": exc.message}, status=exc.status
                )
            response.headers.update(SECURITY_HEADERS)
            return response

        return wrapped

    async def principal(self, request: web.Request) -> Principal | None:
        session_id = request.cookies.get(COOKIE)
        if not session_id:
            return None
        found = await self.parts.state.session(session_id)
        if found is None:
            return None
        person = await self.parts.state.person(found.person)
        if person is None:
            return None
        return Principal(person.name, person.roles, "person", found.csrf_token)

    async def _check_csrf(self, request: web.Request, principal: Principal) -> None:
        _same_origin(request)
        given = request.headers.get("X-CSRF-Token")
        if given is None:
            form = await request.post()
            value = form.get("csrf")
            given = value if isinstance(value, str) else ""
        if not hmac.compare_digest(given.encode(), principal.csrf_token.encode()):
            raise Refused(403, "This form has expired or did not come from this console.")

    def render(
        self,
        request: web.Request,
        template: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        principal: Principal | None = None,
    ) -> web.Response:
        body = self.templates.get_template(template).render(
            principal=principal, csrf=principal.csrf_token if principal else "", **context
        )
        return web.Response(text=body, status=status, content_type="text/html")

    # -- access ----------------------------------------------------------------------------

    def workspace_for(
        self, request: web.Request, principal: Principal, needed: str = "read-only"
    ) -> Workspace:
        """The workspace in the path, when the person has a role there (else 404); 403 when
        the role is below `needed`."""
        name = request.match_info["workspace"]
        role = principal.role(name)
        found = next((w for w in self.config.workspaces if w.name == name), None)
        if role is None or found is None:
            raise Refused(404, f"There is no workspace named {name!r}.")
        if not principal.may(name, needed):
            raise Refused(403, f"You are {role} of {name}; this needs the {needed} role.")
        return found

    def member_of(self, workspace: Workspace, section: str, name: str) -> None:
        if name not in getattr(workspace, section):
            raise Refused(404, f"There is no {section[:-1]} named {name!r} in {workspace.name}.")

    # -- pages -----------------------------------------------------------------------------

    async def home_redirect(self, request: web.Request) -> web.Response:
        return redirect("/console/")

    async def home(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        mine = [w for w in self.config.workspaces if principal.role(w.name)]
        if len(mine) == 1:
            return redirect(f"/console/w/{mine[0].name}/")
        return self.render(
            request, "home.html", {"workspaces": mine, "title": "Workspaces"}, principal=principal
        )

    async def workspace_page(
        self, request: web.Request, principal: Principal
    ) -> web.StreamResponse:
        workspace = self.workspace_for(request, principal)
        return self.render(
            request,
            "workspace.html",
            {
                "workspace": workspace,
                "role": principal.role(workspace.name),
                "title": workspace.title or workspace.name,
                "sources": [s for s in self.config.sources if s.name in workspace.sources],
                "destinations": [
                    d for d in self.config.destinations if d.name in workspace.destinations
                ],
                "warehouses": workspace.warehouses,
                "identity": self.parts.data.profiles.resolved,
                "notice": request.query.get("notice"),
            },
            principal=principal,
        )

    async def signin_form(self, request: web.Request) -> web.Response:
        response = self.render(
            request, "signin.html", {"title": "Sign in", "error": None, "next": _next(request)}
        )
        response.headers.update(SECURITY_HEADERS)
        return response

    async def signin(self, request: web.Request) -> web.Response:
        try:
            _same_origin(request)
        except Refused as exc:
            return self.render(request, "error.html", {"message": exc.message}, status=403)
        form = await request.post()
        name = str(form.get("name", ""))[:200]
        password = str(form.get("password", ""))[:1000]
        address = request.remote or ""
        keys = (f"name:{name}", f"address:{address}")
        if self.limit.blocked(*keys):
            log.warning("console_signin_limited", person=name, address=address)
            await self.parts.state.log_signin(name, address, succeeded=False)
            return self._signin_failed(request, 429, "Too many failed sign-ins; try later.")
        person = await self.parts.state.person(name)
        password_hash = person.password_hash if person else access.dummy_hash()
        matches = await asyncio.to_thread(access.verify_password, password_hash, password)
        if person is None or not matches:
            self.limit.failed(*keys)
            log.warning("console_signin_failed", person=name, address=address)
            await self.parts.state.log_signin(name, address, succeeded=False)
            return self._signin_failed(request, 401, "Wrong name or password.")
        self.limit.succeeded(keys[0])
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        ttl_s = self.config.console.session_ttl_s
        await self.parts.state.add_session(session_id, name, csrf, ttl_s)
        await self.parts.state.log_signin(name, address, succeeded=True)
        log.info("console_signin", person=name, address=address)
        response = redirect(_next(request, str(form.get("next", ""))))
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=ttl_s,
            path="/console",
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
        )
        return response

    def _signin_failed(self, request: web.Request, status: int, error: str) -> web.Response:
        response = self.render(
            request,
            "signin.html",
            {"title": "Sign in", "error": error, "next": _next(request)},
            status=status,
        )
        response.headers.update(SECURITY_HEADERS)
        return response

    async def signout(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        await self.parts.state.end_session(request.cookies.get(COOKIE, ""))
        response = redirect("/console/signin")
        response.del_cookie(COOKIE, path="/console")
        return response

    def _secure(self, request: web.Request) -> bool:
        setting = self.config.console.secure_cookies
        if setting != "auto":
            return setting
        public = self.config.server.public_url or ""
        return public.startswith("https://") or request.secure

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        suffix = Path(name).suffix
        resource = self._static / name
        if "/" in name or suffix not in STATIC_TYPES or not resource.is_file():
            raise web.HTTPNotFound()
        return web.Response(
            body=resource.read_bytes(),
            content_type=STATIC_TYPES[suffix],
            headers={"Cache-Control": "max-age=3600"},
        )


def _figure(count: int | None) -> str:
    """A count, or a dash where this backend does not keep it."""
    return "–" if count is None else str(count)


def _kind(item: Any) -> str:
    """A destination's or warehouse's `type`: the tag of its config Struct."""
    return str(type(item).__struct_config__.tag)


def redirect(location: str) -> web.Response:
    """303 See Other: after a form, the browser GETs the page it names."""
    return web.Response(status=303, headers={"Location": location})


def _redirect_signin(request: web.Request) -> web.Response:
    from urllib.parse import quote

    return redirect(f"/console/signin?next={quote(request.path_qs)}")


def _same_origin(request: web.Request) -> None:
    """Browsers send Origin on every POST: one naming another site is refused (SameSite
    cookies and the CSRF token already stop it; this stops it before the body is read)."""
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        raise Refused(403, "This request came from another site.")


def _next(request: web.Request, given: str | None = None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    target = given if given is not None else request.query.get("next", "")
    if target.startswith("/console/") and not target.startswith("//"):
        return target
    return "/console/"
