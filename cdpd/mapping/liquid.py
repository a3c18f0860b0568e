"""The `@liquid` directive: Liquid templates with the limits and the tags and filters that
Segment's mapping-kit allows (`mapping-kit/liquid-directive.ts`): at most 1,000 characters, a
500 ms render budget (CPU time), no `case`, `for`, `include`, `layout`, `render` or `tablerow`
tags and none of the filters in DISABLED_FILTERS.
"""

from __future__ import annotations

import datetime
import functools
import time
from typing import Any, ClassVar

import liquid
from liquid.builtin.output import Output, OutputNode
from liquid.exceptions import LiquidError, LiquidSyntaxError
from liquid.tag import Tag

from cdpd.mapping import liquid_filters, liquid_strings
from cdpd.mapping.errors import MappingError

MAX_TEMPLATE_CHARS = 1000
RENDER_LIMIT_S = 0.5
MAX_OUTPUT_CHARS = 100_000_000  # liquidjs memoryLimit is 1e8
DISABLED_TAGS = ("case", "for", "include", "layout", "render", "tablerow")
DISABLED_FILTERS = (
    "array_to_sentence_string",
    "concat",
    "find",
    "find_exp",
    "find_index",
    "find_index_exp",
    "group_by",
    "group_by_exp",
    "has",
    "has_exp",
    "map",
    "newline_to_br",
    "reject",
    "reject_exp",
    "reverse",
    "sort",
    "sort_natural",
    "uniq",
    "where_exp",
    "type",
)


class _DisabledTag(Tag):
    block = False
    disabled: ClassVar[str] = ""

    def parse(self, stream: Any) -> Any:
        raise LiquidSyntaxError(f'tag "{self.name}" is disabled', token=stream.current)


def _disabled_filter(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise MappingError(f'filter "{name}" is disabled')

    return refuse


class _OutputNode(OutputNode):
    def render_to_output(self, context: Any, buffer: Any) -> int:
        return int(buffer.write(liquid_filters.text(self.expression.evaluate(context))))

    async def render_to_output_async(self, context: Any, buffer: Any) -> int:
        return int(buffer.write(liquid_filters.text(await self.expression.evaluate_async(context))))


class _Output(Output):
    node_class = _OutputNode


class _Environment(liquid.Environment):
    output_stream_limit = MAX_OUTPUT_CHARS
    context_depth_limit = 30
    local_namespace_limit = MAX_OUTPUT_CHARS


def _environment() -> _Environment:
    env = _Environment(strict_filters=False)  # liquidjs passes a value through unknown filters
    env.add_tag(_Output)
    env.filters.update(liquid_filters.FILTERS)
    env.filters.update(liquid_strings.FILTERS)
    env.filters["date"] = _dates_from_numbers(env.filters["date"])
    for name in DISABLED_TAGS:
        env.tags.pop(name, None)
        env.add_tag(type(f"Disabled_{name}", (_DisabledTag,), {"name": name}))
    for name in DISABLED_FILTERS:
        env.filters[name] = _disabled_filter(name)
    return env


def _dates_from_numbers(date: Any) -> Any:
    """liquidjs reads a number given to `date` as seconds since 1970 (in UTC, as Segment runs)."""

    @functools.wraps(date)
    def dated(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, float):
            value = datetime.datetime.fromtimestamp(value, datetime.UTC)
        return date(value, *args, **kwargs)

    return dated


_ENV = _environment()


def check(template: str) -> str | None:
    """Why `template` can never be rendered (too long, a disabled tag, bad syntax), or None."""
    try:
        _parse(template)
    except MappingError as exc:
        return str(exc)
    return None


def render(template: str, message: dict[str, Any]) -> str:
    """The template rendered with the message's fields as variables; MappingError if it fails
    or takes longer than Segment allows."""
    if template == "":
        return ""
    parsed = _parse(template)
    # CPU time of this thread, not the wall clock: the budget bounds what a template costs,
    # and a loaded machine pausing the thread must not fail a cheap template.
    started = time.thread_time()
    try:
        text = parsed.render(**liquid_filters.dress(message))
    except MappingError:
        raise
    except LiquidError as exc:
        raise MappingError(_message(exc)) from None
    except (ArithmeticError, TypeError, ValueError, RecursionError) as exc:  # from a filter
        raise MappingError(f"liquid template failed: {exc}") from None
    if time.thread_time() - started > RENDER_LIMIT_S:
        raise MappingError(f"liquid template took longer than {RENDER_LIMIT_S * 1000:.0f} ms")
    return str(text)


@functools.lru_cache(maxsize=512)
def _parse(template: str) -> Any:
    if len(template) > MAX_TEMPLATE_CHARS:
        raise MappingError(f"liquid template values are limited to {MAX_TEMPLATE_CHARS} characters")
    try:
        return _ENV.from_string(template)
    except LiquidError as exc:
        raise MappingError(_message(exc)) from None


def _message(exc: LiquidError) -> str:
    """The error's own words (as liquidjs puts them), without python-liquid's source excerpt."""
    return str(exc.args[0]) if exc.args else type(exc).__name__
