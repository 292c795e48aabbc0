"""Feeds: the per-source JSON feed and Jinja templates, rendered from values and written atomically."""

import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import jinja2.meta
from jinja2.utils import missing

from worker.config import Feed
from worker.errors import RenderError

# What Renderer.render gives every template besides one variable per source of its feed.
COMMON_NAMES = frozenset({"sources", "generated_at", "timezone"})
# Outputs that are not markup: HTML-escaping them would corrupt the data (use |tojson inside them).
PLAIN_SUFFIXES = (".json", ".txt", ".csv")


@dataclass(frozen=True)
class SourceView:
    """One source as a template sees it: `menu.data`, `menu.fetched_at`, `menu.stale`, ..."""

    name: str
    data: Any
    fetched_at: datetime | None
    stale: bool
    last_error: str | None
    updated_ago: str


class _Sources(dict[str, SourceView]):
    """`sources` in templates: a missing key is a missing source (strict), not missing API data."""


def _strict_unless_chained(method: Callable[..., Any]) -> Callable[..., Any]:
    def use(self: "FeedUndefined", *args: Any) -> Any:
        return self._fail_with_undefined_error() if self._strict else method(self, *args)

    return use


class FeedUndefined(jinja2.ChainableUndefined):
    """A missing name or source attribute fails the render; a missing key inside API data renders empty."""

    # A typo'd source name (`goood.data`, `sources['goood']`) or source attribute (`menu.dta`) is a template
    # bug: printed as "" it would blank the screen, while a failed render keeps the last good file. API data
    # legitimately lacks optional fields, so undefined values from inside it (and name-less ones: `[] | first`,
    # `loop.previtem`) stay chainable. `is defined` and `| default` work for both.
    __slots__ = ()

    @property
    def _strict(self) -> bool:
        obj = self._undefined_obj
        return (obj is missing and self._undefined_name is not None) or isinstance(obj, SourceView | _Sources)

    @property
    def _undefined_message(self) -> str:
        obj = self._undefined_obj
        if isinstance(obj, SourceView) and not self._undefined_hint:
            known = ", ".join(SOURCE_FIELDS)
            return f"source {obj.name!r} has no attribute {self._undefined_name!r} (a source has {known})"
        if isinstance(obj, _Sources) and not self._undefined_hint:
            return f"sources has no {self._undefined_name!r} (this feed's sources: {', '.join(obj)})"
        return super()._undefined_message

    def __getattr__(self, name: str) -> Any:
        if self._strict and not (name[:2] == "__" and name[-2:] == "__"):
            return self._fail_with_undefined_error()
        return super().__getattr__(name)

    def __contains__(self, item: Any) -> bool:
        return bool(self._fail_with_undefined_error()) if self._strict else False

    __getitem__ = _strict_unless_chained(jinja2.ChainableUndefined.__getitem__)
    __str__ = _strict_unless_chained(jinja2.ChainableUndefined.__str__)
    __html__ = _strict_unless_chained(jinja2.ChainableUndefined.__html__)
    __iter__ = _strict_unless_chained(jinja2.ChainableUndefined.__iter__)
    __len__ = _strict_unless_chained(jinja2.ChainableUndefined.__len__)
    __bool__ = _strict_unless_chained(jinja2.ChainableUndefined.__bool__)
    __eq__ = _strict_unless_chained(jinja2.ChainableUndefined.__eq__)
    __ne__ = _strict_unless_chained(jinja2.ChainableUndefined.__ne__)
    __hash__ = _strict_unless_chained(jinja2.ChainableUndefined.__hash__)


SOURCE_FIELDS = tuple(f.name for f in fields(SourceView))


class _DataFirstEnvironment(jinja2.Environment):
    """`menu.data.items` is the API's "items" key, not the dict method of that name (nor `keys`, `values`, ...)."""

    # Jinja tries the attribute first, so a JSON object's "items" key, which many APIs have, would render as
    # "<built-in method items ...>" or fail a loop. API data is JSON: its keys are what a template means.
    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def ago(moment: datetime | None, now: datetime) -> str:
    """'just now', '5 minutes ago', '3 hours ago', '2 days ago'; 'never' for None."""
    if moment is None:
        return "never"
    seconds = int((now - moment).total_seconds())
    if seconds < 45:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size) if unit == "minute" else seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "1 minute ago"


def local_time(value: Any, fmt: str, tz: ZoneInfo) -> str:
    """Format an aware datetime or ISO-8601 string in tz; naive strings are shown as written (already local)."""
    if value is None or value == "":
        return ""
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if not isinstance(moment, datetime):
        return str(value)
    return (moment.astimezone(tz) if moment.tzinfo else moment).strftime(fmt)


def json_feed(view: SourceView, generated_at: datetime) -> str:
    """A source's JSON feed document; a serializer, never string building, so data round-trips exactly."""
    doc = {
        "source": view.name,
        "fetched_at": view.fetched_at.isoformat() if view.fetched_at else None,
        "generated_at": generated_at.isoformat(),
        "stale": view.stale,
        "last_error": view.last_error,
        "data": view.data,
    }
    # Compact: screens parse it, people rarely read it, and the C encoder is many times faster than indent=.
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"


class Renderer:
    """Jinja environments over templates_dir; autoescape on for everything but plain-data outputs."""

    def __init__(self, templates_dir: Path, timezone: str) -> None:
        self.tz = ZoneInfo(timezone)
        self.shown_dir = templates_dir.name  # errors say "templates/x.html.j2:3", as the operator knows it
        self.timezone = timezone
        self._loader = jinja2.FileSystemLoader(str(templates_dir))
        # Escaping is decided by what we write, not the template's file name: `.html.j2` must escape too.
        self._html = self._env(self._loader, autoescape=True)
        self._plain = self._env(self._loader, autoescape=False)
        self.global_names = frozenset(self._html.globals)  # range, dict, namespace, ...: every template has them

    def _env(self, loader: jinja2.BaseLoader, autoescape: bool) -> jinja2.Environment:
        env = _DataFirstEnvironment(loader=loader, autoescape=autoescape, auto_reload=True,
                                    undefined=FeedUndefined)
        env.filters["local_time"] = lambda value, fmt="%H:%M": local_time(value, fmt, self.tz)
        env.filters["ago"] = jinja2.pass_context(lambda ctx, value: ago(value, ctx["generated_at"]))
        return env

    def render(self, feed: Feed, views: Mapping[str, SourceView], generated_at: datetime) -> str:
        """The feed's text; RenderError names the template file and line."""
        env = self._plain if feed.output.endswith(PLAIN_SUFFIXES) else self._html
        # Besides the views, exactly COMMON_NAMES: `signfeed check` reports any other name a template uses.
        context = {**views, "sources": _Sources(views), "generated_at": generated_at, "timezone": self.timezone}
        try:
            return env.get_template(feed.template).render(context)
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(f"{self.shown_dir}/{exc.name or feed.template}:{exc.lineno}: {exc.message}") from None
        except jinja2.TemplateNotFound as exc:
            raise RenderError(f"template {exc.name!r} not found") from None
        except Exception as exc:  # a template can raise anything (bad filter input, division by zero, ...)
            raise RenderError(f"{self.shown_dir}/{feed.template}:{_template_line(exc, feed.template)}: "
                              f"{exc.__class__.__name__}: "
                              f"{exc}") from None

    def check(self, template: str) -> None:
        """Compile a template without rendering; RenderError with file and line on a syntax error."""
        try:
            self._html.get_template(template)
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(f"{self.shown_dir}/{exc.name or template}:{exc.lineno}: {exc.message}") from None
        except jinja2.TemplateNotFound:
            raise RenderError(f"template {template!r} not found") from None

    def undeclared(self, template: str) -> tuple[jinja2.nodes.Template, set[str]] | None:
        """A template's syntax tree and the names Jinja finds it reading from the context (for static checks);
        None when there is no such file; RenderError with file and line as check() raises them.
        """
        try:
            source, _, _ = self._loader.get_source(self._html, template)
        except jinja2.TemplateNotFound:
            return None
        try:
            tree = self._html.parse(source, template)
            return tree, jinja2.meta.find_undeclared_variables(tree)  # compiles: unknown filters fail here
        except jinja2.TemplateSyntaxError as exc:  # always this template's: nothing else is loaded here
            raise RenderError(f"{self.shown_dir}/{template}:{exc.lineno}: {exc.message}") from None


def _template_line(exc: BaseException, template: str) -> str:
    """The template line a runtime error happened on, read from the traceback Jinja rewrites."""
    tb = exc.__traceback__
    line = "?"
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(template):
            line = str(tb.tb_lineno)
        tb = tb.tb_next
    return line


def write_atomic(path: Path, text: str) -> None:
    """Replace path with text so a reader sees the old file or the new one, never a part of either."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread; 0644 because the web server runs as another user.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())  # the rename must not reach the disk before the data does
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
