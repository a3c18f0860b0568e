"""Sources added and changed from the console (owners): a new source gets a name, a type and a
write key drawn from the system's secure random generator; it can be changed (its type),
disabled, enabled and removed. Each is checked as `cdpd check-config` checks a file, written to
`conf.d/source-<name>.toml` and put in force by the live reload: ingest takes the new write key
(and refuses a removed or disabled one) from the next request on.
"""

from __future__ import annotations

import re
import secrets
import string
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec
from aiohttp import web

from cdpd.config import Config, ConfigError, Source, Workspace
from cdpd.console.access import Principal
from cdpd.console.catalog import explain
from cdpd.console.changes import NoConfigFile
from cdpd.console.snippet import SOURCE_TYPES
from cdpd.console.web import Refused, redirect
from cdpd.settings import NAME_PATTERN, NAME_RULE

if TYPE_CHECKING:
    from cdpd.console.web import Console

WRITE_KEY_ALPHABET = string.ascii_letters + string.digits
WRITE_KEY_LENGTH = 32  # as Segment's; about 190 bits


def routes(console: Console) -> list[web.RouteDef]:
    pages = SourceChanges(console)
    base = "/console/w/{workspace}/sources/{source}"
    # Not under /sources/: a source may be named "new".
    add = "/console/w/{workspace}/add-source"
    return [
        web.get(add, console.page(pages.form)),
        web.post(add, console.page(pages.add, change=True)),
        web.post(base + "/settings", console.page(pages.save, change=True)),
        web.post(base + "/enabled", console.page(pages.set_enabled, change=True)),
        web.post(base + "/remove", console.page(pages.remove, change=True)),
    ]


def new_write_key() -> str:
    return "".join(secrets.choice(WRITE_KEY_ALPHABET) for _ in range(WRITE_KEY_LENGTH))


def check(config: Config, settings: dict[str, Any], *, new: bool) -> Source:
    """Validate a source as check-config would; ConfigError names the field."""
    name = settings.get("name", "")
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name) or len(name) > 100:
        raise ConfigError(f"name: {NAME_RULE}")
    if new and any(s.name == name for s in config.sources):
        raise ConfigError(f"name: a source named {name!r} exists already")
    if settings.get("type") not in SOURCE_TYPES:
        raise ConfigError(f"type: expected one of {', '.join(SOURCE_TYPES)}")
    try:
        return msgspec.convert(settings, type=Source)
    except msgspec.ValidationError as exc:
        raise ConfigError(explain(str(exc))) from None


class SourceChanges:
    def __init__(self, console: Console) -> None:
        self.console = console

    async def form(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = self.console.workspace_for(request, principal, "owner")
        return self._form(request, principal, workspace, {}, None)

    async def add(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = self.console.workspace_for(request, principal, "owner")
        form = await request.post()
        submitted = {k: str(form.get(k, "")).strip() for k in ("name", "type")}
        settings = {**submitted, "write_key": new_write_key()}
        try:
            check(self.console.config, settings, new=True)
            await self.console.changes().add_source(workspace.name, settings)
        except (ConfigError, NoConfigFile) as exc:
            return self._form(request, principal, workspace, submitted, str(exc), 422)
        notice = f"{settings['name']} is added: show its write key to send to it"
        return _back(workspace.name, settings["name"], notice)

    async def save(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, source = self._own_source(request, principal)
        chosen = str((await request.post()).get("type", ""))
        settings = {"name": source.name, "type": chosen, "write_key": source.write_key}
        try:
            check(self.console.config, settings, new=False)
            await self.console.changes().replace_source(workspace.name, settings)
        except (ConfigError, NoConfigFile) as exc:
            raise Refused(422, str(exc)) from None
        return _back(workspace.name, source.name, f"{source.name}'s settings are saved")

    async def set_enabled(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, source = self._own_source(request, principal)
        enabled = (await request.post()).get("enabled") == "true"
        try:
            await self.console.changes().set_enabled(workspace.name, source.name, enabled, "source")
        except (ConfigError, NoConfigFile) as exc:
            raise Refused(409, str(exc)) from None
        done = "enabled" if enabled else "disabled: ingest refuses its write key"
        return _back(workspace.name, source.name, f"{source.name} is {done}")

    async def remove(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, source = self._own_source(request, principal)
        if (await request.post()).get("confirm") != "yes":
            raise Refused(422, f"Tick the box to confirm that {source.name} is to be removed.")
        try:
            await self.console.changes().remove_source(source.name)
        except (ConfigError, NoConfigFile) as exc:
            # e.g. a destination's `sources` still names it: the config would not load
            raise Refused(409, str(exc)) from None
        notice = f"{source.name} is removed: ingest refuses its write key"
        return redirect(f"/console/w/{workspace.name}/?notice={quote(notice)}")

    def _own_source(self, request: web.Request, principal: Principal) -> tuple[Workspace, Source]:
        """The source in the path, for an owner, when the console added it (409 otherwise)."""
        console = self.console
        workspace = console.workspace_for(request, principal, "owner")
        name = request.match_info["source"]
        console.member_of(workspace, "sources", name)
        if console.changes().fragment_of(name, "source") is None:
            raise Refused(
                409, f"{name} is defined in the main config file: change it there and reload."
            )
        return workspace, next(s for s in console.config.sources if s.name == name)

    def _form(
        self,
        request: web.Request,
        principal: Principal,
        workspace: Workspace,
        submitted: dict[str, str],
        error: str | None,
        status: int = 200,
    ) -> web.Response:
        try:
            self.console.changes().conf_dir()
            no_config_file = None
        except NoConfigFile as exc:
            no_config_file = str(exc)
        return self.console.render(
            request,
            "source_form.html",
            {
                "title": "Add a source",
                "workspace": workspace,
                "submitted": submitted,
                "error": error,
                "types": SOURCE_TYPES,
                "no_config_file": no_config_file,
            },
            status=status,
            principal=principal,
        )


def _back(workspace: str, source: str, notice: str) -> web.Response:
    return redirect(f"/console/w/{workspace}/sources/{source}?notice={quote(notice)}")
