"""config.toml → one frozen Config, validated in one place with errors that name the table, key and fix."""

import json
import math
import os
import re
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from worker.errors import ConfigError
from worker.secrets import Secrets

# Every default in one table; the README's config reference mirrors it.
WORKER_DEFAULTS: dict[str, Any] = {
    "database": "sqlite:///data/signfeed.db",
    "feeds_dir": "feeds",
    "jobs_dir": "jobs",
    "templates_dir": "templates",
    "timezone": "UTC",
    "concurrency": 8,
    "script_timeout": 10.0,  # seconds of wall clock for a pre-request script
    "script_memory": 64,  # MB a pre-request script may allocate
    "timeout": 60.0,  # total seconds one run may take, script included
    "retries": 2,  # extra attempts on connection errors and 502/503/504
    "max_bytes": 10_000_000,  # a larger response body fails the run unread
}
SOURCE_DEFAULTS: dict[str, Any] = {
    "method": "GET",
    "every": None,
    "cron": None,
    "jitter": 0,
    "headers": {},
    "params": {},
    "body": None,
    "pre_request": None,
    "select": None,
    "keep": 100,
    "stale_after": None,  # seconds; None → 3 × the schedule's period
    "timeout": None,  # None → [worker] timeout
    "script_timeout": None,
    "script_memory": None,
    "retries": None,
    "max_bytes": None,
    "auth": None,  # name of an [auth.NAME] block whose token goes on the request
}
AUTH_DEFAULTS: dict[str, Any] = {
    "scope": None,
    "client_auth": "body",
    "extra": {},
    "header": "Authorization",
    "prefix": "Bearer",
    "expired_when": None,
    "default_lifetime": 3600.0,
}
AUTH_REQUIRED = ("type", "token_url", "client_id", "client_secret")
AUTH_TYPES = ("oauth2_client_credentials",)
# Form fields the token request sets itself; `extra` may not override them.
AUTH_RESERVED = ("grant_type", "client_id", "client_secret", "scope")
SOURCE_REQUIRED = ("name", "url")
FEED_KEYS = ("output", "template", "sources")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
NAME_RE = re.compile(r"^[a-z0-9_-]+$")
DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
OUTPUT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
MAX_DURATION = 366 * 86400
MAX_NUMBER = 10**12  # beyond any sane timeout, size or count; keeps timedelta and sleep arithmetic finite


@dataclass(frozen=True)
class WorkerSettings:
    """The [worker] table, with paths made absolute against the config file's folder."""

    database: str
    feeds_dir: Path
    jobs_dir: Path
    templates_dir: Path
    timezone: str
    concurrency: int
    script_timeout: float
    script_memory: int
    timeout: float
    retries: int
    max_bytes: int

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Source:
    """One [[sources]] entry; placeholders are kept as written and substituted per run."""

    name: str
    url: str
    method: str = "GET"
    every: float | None = None  # seconds
    cron: str | None = None
    jitter: float = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None
    pre_request: str | None = None  # file name inside jobs_dir
    select: str | None = None
    keep: int = 100
    stale_after: float = 900.0
    timeout: float = 60.0
    script_timeout: float = 10.0
    script_memory: int = 64
    retries: int = 2
    max_bytes: int = 10_000_000
    auth: str | None = None


@dataclass(frozen=True)
class AuthBlock:
    """One [auth.NAME] table, placeholders already substituted."""

    name: str
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    client_auth: str = "body"  # "body" | "basic"
    extra: Mapping[str, str] = field(default_factory=dict)
    header: str = "Authorization"
    prefix: str = "Bearer"
    expired_when: str | None = None
    default_lifetime: float = 3600.0


@dataclass(frozen=True)
class Feed:
    """One [[feeds]] entry: a template rendered from one or more sources into feeds_dir/output."""

    output: str
    template: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    """Everything config.toml says, resolved and checked."""

    path: Path
    worker: WorkerSettings
    secrets: Secrets
    sources: tuple[Source, ...]
    feeds: tuple[Feed, ...]
    auth: Mapping[str, AuthBlock] = field(default_factory=dict)
    # Each pre_request file's text as read at load time: an edit takes effect on reload, after `check`
    # has seen it, never half-way through a running config.
    scripts: Mapping[str, str] = field(default_factory=dict, repr=False)

    @cached_property
    def _by_name(self) -> dict[str, Source]:
        return {source.name: source for source in self.sources}

    def source(self, name: str) -> Source:
        """The source called name, or a ConfigError listing the known ones."""
        if name in self._by_name:
            return self._by_name[name]
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"no source named {name!r} in {self.path} (sources: {known})")

    def script_path(self, source: Source) -> Path | None:
        return self.worker.jobs_dir / source.pre_request if source.pre_request else None

    def script_code(self, source: Source) -> str:
        """The source's pre-request script as loaded, placeholders filled in."""
        return self._script_code[source.pre_request or ""]

    @cached_property
    def _script_code(self) -> dict[str, str]:
        return {name: self.secrets.substitute_js(text) for name, text in self.scripts.items()}

    def feeds_for(self, name: str) -> tuple[Feed, ...]:
        return tuple(f for f in self.feeds if name in f.sources)


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, resolve and validate config.toml; the only place signfeed reads the environment."""
    path = Path(path).resolve()
    if not path.exists():
        raise ConfigError(f"{path}: no such file; pass --config PATH or create it")
    try:
        # Windows editors save a byte-order mark, which TOML does not allow.
        raw = tomllib.loads(read_text(path, "config file").removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse(raw, path, os.environ if environ is None else environ)
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file, or a ConfigError saying which file and what to do."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def parse(raw: Mapping[str, Any], path: Path, environ: Mapping[str, str]) -> Config:
    """Build a Config from parsed TOML (path anchors relative paths and names the file in errors)."""
    _reject_unknown(raw, ("worker", "secrets", "sources", "feeds", "auth"), "top level")
    base = path.parent
    worker = _worker(raw.get("worker", {}), base)
    secrets = _secrets(raw.get("secrets", {}), base, environ)
    sources = tuple(_source(i, s, worker) for i, s in enumerate(_table_list(raw, "sources")))
    if not sources:
        raise ConfigError("no [[sources]]: add at least one (a worker with none would pull nothing, silently)")
    feeds = tuple(_feed(i, f) for i, f in enumerate(_table_list(raw, "feeds")))
    auth = _auth_blocks(raw.get("auth", {}), secrets)
    scripts = _read_scripts(sources, worker)
    config = Config(path, worker, secrets, sources, feeds, auth, scripts)
    _check_cross_references(config)
    return config


def _reject_unknown(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")


def _table_list(raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = raw.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigError(f"[[{key}]] must be an array of tables: write each entry under its own [[{key}]]")
    return items


def _expect(value: Any, kind: type | tuple[type, ...], where: str, hint: str) -> Any:
    # bool is an int in Python; `concurrency = true` must not pass as 1.
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: expected {hint}, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {hint}, got {value!r}")
    return value


def _worker(table: Mapping[str, Any], base: Path) -> WorkerSettings:
    _expect(table, dict, "[worker]", "a table")
    _reject_unknown(table, tuple(WORKER_DEFAULTS), "[worker]")
    merged = {**WORKER_DEFAULTS, **table}
    tz = _expect(merged["timezone"], str, "[worker] timezone", 'an IANA name such as "Europe/Berlin"')
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f'[worker] timezone: unknown time zone {tz!r}; use an IANA name like "UTC"') from None
    return WorkerSettings(
        database=_database_url(_expect(merged["database"], str, "[worker] database", "a string"), base),
        feeds_dir=base / _expect(merged["feeds_dir"], str, "[worker] feeds_dir", "a folder path"),
        jobs_dir=base / _expect(merged["jobs_dir"], str, "[worker] jobs_dir", "a folder path"),
        templates_dir=base / _expect(merged["templates_dir"], str, "[worker] templates_dir", "a folder path"),
        timezone=tz,
        concurrency=_positive(merged["concurrency"], "[worker] concurrency", int),
        script_timeout=_positive(merged["script_timeout"], "[worker] script_timeout", float),
        script_memory=_positive(merged["script_memory"], "[worker] script_memory", int),
        timeout=_positive(merged["timeout"], "[worker] timeout", float),
        retries=_non_negative_int(merged["retries"], "[worker] retries"),
        max_bytes=_positive(merged["max_bytes"], "[worker] max_bytes", int),
    )


def _positive(value: Any, where: str, kind: type) -> Any:
    allowed = (int, float) if kind is float else (int,)
    _expect(value, allowed, where, f"a positive {'number' if kind is float else 'whole number'}")
    if not math.isfinite(value) or value > MAX_NUMBER:
        raise ConfigError(f"{where}: {value!r} is out of range")
    if value <= 0:
        raise ConfigError(f"{where}: must be greater than 0, got {value!r}")
    return kind(value)


def _non_negative_int(value: Any, where: str) -> int:
    _expect(value, int, where, "a whole number ≥ 0")
    if value < 0:
        raise ConfigError(f"{where}: must be 0 or more, got {value!r}")
    return int(value)


def _database_url(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigError(f'[worker] database: only SQLite is supported, e.g. "{WORKER_DEFAULTS["database"]}"')
    file = url[len(prefix) :]
    if file in ("", ":memory:"):
        raise ConfigError("[worker] database: needs a file path; an in-memory database loses every snapshot")
    return prefix + str((base / file).resolve())


def _secrets(table: Mapping[str, Any], base: Path, environ: Mapping[str, str]) -> Secrets:
    _expect(table, dict, "[secrets]", "a table")
    values: dict[str, str] = {}
    secret: set[str] = set()
    for name, spec in table.items():
        where = f"[secrets] {name}"
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ConfigError(f"{where}: names are letters, digits and _ so they can be written <{name}>")
        if isinstance(spec, str):
            values[name] = spec  # inline values are for placeholders that are not secret (URLs, ids)
            continue
        _expect(spec, dict, where, '"value", { env = "VAR" }, { file = "path" } or { value = "..." }')
        values[name] = _secret_value(spec, where, base, environ)
        secret.add(name)
    return Secrets(values, frozenset(secret))


def _secret_value(spec: Mapping[str, Any], where: str, base: Path, environ: Mapping[str, str]) -> str:
    value = _read_secret(spec, where, base, environ)
    if not value:
        # An empty secret is a forgotten export or an empty file, and the API would answer with a puzzling 401.
        kind, arg = next(iter(spec.items()))
        source = {"env": f"environment variable {arg}", "file": f"file {base / arg}"}.get(kind, "value")
        raise ConfigError(f"{where}: the {source} is empty; a secret needs a value")
    return value


def _read_secret(spec: Mapping[str, Any], where: str, base: Path, environ: Mapping[str, str]) -> str:
    if len(spec) != 1 or next(iter(spec)) not in ("env", "file", "value"):
        raise ConfigError(f'{where}: write exactly one of {{ env = "VAR" }}, {{ file = "path" }}, {{ value = "..." }}')
    kind, arg = next(iter(spec.items()))
    _expect(arg, str, f"{where}.{kind}", "a string")
    if kind == "value":
        return str(arg)
    if kind == "env":
        if arg not in environ:
            raise ConfigError(f"{where}: environment variable {arg} is not set; set it (systemd: EnvironmentFile=)")
        return environ[arg]
    file = base / arg
    try:
        # One trailing newline is what editors and `echo` add; it is never part of a secret.
        return file.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {file} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {file}: {exc.strerror}; create it (chmod 600)") from None


def parse_duration(text: str, where: str) -> float:
    """'30s', '5m', '1h', '1h30m' → seconds."""
    match = DURATION_RE.match(text.strip()) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        raise ConfigError(f'{where}: {text!r} is not a duration; write e.g. "30s", "5m", "1h" or "1h30m"')
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total < 1:
        raise ConfigError(f"{where}: must be at least 1s")
    if total > MAX_DURATION:
        raise ConfigError(f"{where}: {text!r} is longer than a year; use cron for rare schedules")
    return float(total)


def _schedule(table: Mapping[str, Any], where: str, tz: ZoneInfo) -> tuple[float | None, str | None, float]:
    """(every seconds, cron expression, period seconds used for the stale default)."""
    every, cron = table.get("every"), table.get("cron")
    if (every is None) == (cron is None):
        raise ConfigError(f'{where}: give exactly one of every = "5m" or cron = "*/5 * * * *"')
    if every is not None:
        seconds = parse_duration(every, f"{where}.every")
        return seconds, None, seconds
    _expect(cron, str, f"{where}.cron", 'a crontab line like "*/5 7-22 * * 1-5"')
    try:
        trigger = CronTrigger.from_crontab(cron, timezone=tz)
    except ValueError as exc:
        raise ConfigError(f"{where}.cron: {cron!r} is not a valid crontab line ({exc})") from None
    try:
        return None, cron, _cron_period(trigger, tz)
    except ConfigError:
        raise ConfigError(f"{where}.cron: {cron!r} never fires (e.g. 31 February); fix the day or month") from None


def _cron_period(trigger: CronTrigger, tz: ZoneInfo) -> float:
    first = trigger.get_next_fire_time(None, datetime.now(tz))
    if first is None:
        raise ConfigError(f"cron {trigger} never fires (e.g. 31 February); fix the day or month field")
    second = trigger.get_next_fire_time(first, first)
    return max((second - first).total_seconds(), 1.0) if second else 86400.0


def _string_map(value: Any, where: str) -> dict[str, str]:
    _expect(value, dict, where, '{ Name = "value" }')
    out = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ConfigError(f"{where}.{key}: expected a string or number, got {item!r}")
        out[str(key)] = str(item)
    return out


def _source(index: int, table: Mapping[str, Any], worker: WorkerSettings) -> Source:
    name = table.get("name")
    where = f"[[sources]] #{index + 1}" if not isinstance(name, str) else f'[[sources]] "{name}"'
    _reject_unknown(table, (*SOURCE_REQUIRED, *SOURCE_DEFAULTS), where)
    for key in SOURCE_REQUIRED:
        if key not in table:
            raise ConfigError(f"{where}: missing required key {key!r}")
    name = _expect(name, str, f"{where}.name", "a string")
    if not NAME_RE.match(name):
        raise ConfigError(f"{where}.name: use only a-z, 0-9, _ and - (it names files and template variables)")
    merged = {**SOURCE_DEFAULTS, **table}
    every, cron, period = _schedule(table, where, worker.tz)
    method = _expect(merged["method"], str, f"{where}.method", "an HTTP method").upper()
    if method not in METHODS:
        raise ConfigError(f"{where}.method: {method!r} is not one of {', '.join(METHODS)}")
    return Source(
        name=name,
        url=_expect(merged["url"], str, f"{where}.url", "a URL string"),
        method=method,
        every=every,
        cron=cron,
        jitter=_non_negative_number(merged["jitter"], f"{where}.jitter"),
        headers=_string_map(merged["headers"], f"{where}.headers"),
        params=_string_map(merged["params"], f"{where}.params"),
        body=_body(merged["body"], f"{where}.body"),
        pre_request=_optional_str(merged["pre_request"], f"{where}.pre_request"),
        select=_optional_str(merged["select"], f"{where}.select") or None,
        keep=_positive(merged["keep"], f"{where}.keep", int),
        stale_after=_stale_after(merged["stale_after"], where, period),
        timeout=_inherit(merged, "timeout", where, worker, float),
        script_timeout=_inherit(merged, "script_timeout", where, worker, float),
        script_memory=_inherit(merged, "script_memory", where, worker, int),
        retries=_non_negative_int(merged["retries"] if merged["retries"] is not None else worker.retries,
                                  f"{where}.retries"),
        max_bytes=_inherit(merged, "max_bytes", where, worker, int),
        auth=_optional_str(merged["auth"], f"{where}.auth"),
    )


def _inherit(merged: Mapping[str, Any], key: str, where: str, worker: WorkerSettings, kind: type) -> Any:
    value = merged[key]
    return getattr(worker, key) if value is None else _positive(value, f"{where}.{key}", kind)


def _non_negative_number(value: Any, where: str) -> float:
    _expect(value, (int, float), where, "a number of seconds ≥ 0")
    if value < 0:
        raise ConfigError(f"{where}: must be 0 or more")
    return float(value)


def _stale_after(value: Any, where: str, period: float) -> float:
    return 3 * period if value is None else _seconds(value, f"{where}.stale_after")


def _seconds(value: Any, where: str) -> float:
    """A duration written "20m" or as a number of seconds."""
    return parse_duration(value, where) if isinstance(value, str) else _positive(value, where, float)


def _optional_str(value: Any, where: str) -> str | None:
    return None if value is None else _expect(value, str, where, "a string")


def _body(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value)  # a TOML table is sent as JSON
    raise ConfigError(f"{where}: expected a string or a table, got {value!r}")


def _auth_blocks(tables: Any, secrets: Secrets) -> dict[str, AuthBlock]:
    _expect(tables, dict, "[auth]", "tables written [auth.NAME]")
    return {name: _auth_block(name, table, secrets) for name, table in tables.items()}


def _auth_block(name: str, table: Any, secrets: Secrets) -> AuthBlock:
    where = f"[auth.{name}]"
    _expect(table, dict, where, "a table")
    _reject_unknown(table, (*AUTH_REQUIRED, *AUTH_DEFAULTS), where)
    for key in AUTH_REQUIRED:
        if key not in table:
            raise ConfigError(f"{where}: missing required key {key!r}")
    merged = {**AUTH_DEFAULTS, **table}
    if merged["type"] not in AUTH_TYPES:
        raise ConfigError(f"{where}.type: {merged['type']!r} is not supported (supported: {', '.join(AUTH_TYPES)})")
    if merged["client_auth"] not in ("body", "basic"):
        raise ConfigError(f'{where}.client_auth: write "body" (id and secret in the form) or "basic" (HTTP Basic)')
    extra = _string_map(merged["extra"], f"{where}.extra")
    clash = sorted(set(extra) & set(AUTH_RESERVED))
    if clash:
        raise ConfigError(f"{where}.extra: {clash[0]!r} is set by signfeed itself; remove it from extra")
    keys = ("token_url", "client_id", "client_secret")
    texts = {k: _expect(merged[k], str, f"{where}.{k}", "a string") for k in keys}
    for key, text in [*texts.items(), *extra.items()]:
        missing = secrets.undeclared(text)
        if missing:
            raise ConfigError(f"{where}.{key}: uses undeclared placeholder <{missing[0]}>; declare it in [secrets]")
    sub = secrets.substitute
    return AuthBlock(
        name=name,
        token_url=sub(texts["token_url"]),
        client_id=sub(texts["client_id"]),
        client_secret=sub(texts["client_secret"]),
        scope=sub(_optional_str(merged["scope"], f"{where}.scope") or "") or None,
        client_auth=merged["client_auth"],
        extra={k: sub(v) for k, v in extra.items()},
        header=_expect(merged["header"], str, f"{where}.header", "a header name"),
        prefix=_expect(merged["prefix"], str, f"{where}.prefix", 'a string such as "Bearer" (or "")'),
        expired_when=_optional_str(merged["expired_when"], f"{where}.expired_when") or None,
        default_lifetime=_seconds(merged["default_lifetime"], f"{where}.default_lifetime"),
    )


def _feed(index: int, table: Mapping[str, Any]) -> Feed:
    output_name = table.get("output")
    where = f'[[feeds]] "{output_name}"' if isinstance(output_name, str) else f"[[feeds]] #{index + 1}"
    _reject_unknown(table, FEED_KEYS, where)
    for key in FEED_KEYS:
        if key not in table:
            raise ConfigError(f"{where}: missing required key {key!r}")
    output = _expect(table["output"], str, f"{where}.output", 'a file name like "lobby.html"')
    if not OUTPUT_RE.match(output) or output.startswith("."):
        raise ConfigError(f"{where}.output: {output!r} must be a plain file name inside feeds_dir")
    sources = table["sources"]
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise ConfigError(f'{where}.sources: expected a list of source names, e.g. ["menu", "weather"]')
    template = _expect(table["template"], str, f"{where}.template", "a template file name")
    return Feed(output=output, template=template, sources=tuple(sources))


def _check_cross_references(config: Config) -> None:
    names = [s.name for s in config.sources]
    for name, count in Counter(names).items():
        if count > 1:
            raise ConfigError(f'[[sources]] "{name}": duplicate name; every source needs its own')
    _check_outputs(config)
    for source in config.sources:
        _check_source_files(config, source)
    for source in config.sources:
        if source.auth is not None and source.auth not in config.auth:
            blocks = ", ".join(config.auth) or "none defined"
            raise ConfigError(f'[[sources]] "{source.name}".auth: no [auth.{source.auth}] block (blocks: {blocks})')
    for feed in config.feeds:
        for name in feed.sources:
            if name not in names:
                raise ConfigError(f'[[feeds]] "{feed.output}": unknown source {name!r} (sources: {", ".join(names)})')
        if not (config.worker.templates_dir / feed.template).is_file():
            raise ConfigError(
                f'[[feeds]] "{feed.output}": template {feed.template!r} not found in {config.worker.templates_dir}'
            )


def _check_outputs(config: Config) -> None:
    taken = {f"{s.name}.json": f"source {s.name}'s JSON feed" for s in config.sources}
    for feed in config.feeds:
        if feed.output in taken:
            raise ConfigError(f'[[feeds]] "{feed.output}": output clashes with {taken[feed.output]}; rename it')
        taken[feed.output] = "another [[feeds]] entry"


def _read_scripts(sources: tuple[Source, ...], worker: WorkerSettings) -> dict[str, str]:
    """The text of every pre_request file the sources name, read once."""
    scripts: dict[str, str] = {}
    for source in sources:
        name = source.pre_request
        if name is None or name in scripts:
            continue
        path = worker.jobs_dir / name
        if not path.is_file():
            raise ConfigError(f'[[sources]] "{source.name}".pre_request: {path} not found; '
                              f"put the script in {worker.jobs_dir}")
        scripts[name] = read_text(path, "pre-request script")
    return scripts


def _check_source_files(config: Config, source: Source) -> None:
    where = f'[[sources]] "{source.name}"'
    url = urlsplit(config.secrets.substitute(source.url))
    if url.scheme.lower() not in ("http", "https") or not url.hostname:
        # The URL as written, not substituted: it may carry a secret.
        raise ConfigError(f"{where}.url: {source.url[:100]!r} is not an http:// or https:// URL with a host")
    for name, value in source.headers.items():
        if not (name.isascii() and config.secrets.substitute(value).isascii()):
            raise ConfigError(f"{where}.headers.{name}: HTTP headers carry ASCII only; percent-encode the value")
    texts = [source.url, *source.headers.values(), *source.params.values(), source.body or ""]
    if source.pre_request is not None:
        texts.append(config.scripts[source.pre_request])
    missing = sorted({n for t in texts for n in config.secrets.undeclared(t)})
    if missing:
        raise ConfigError(
            f"{where}: uses undeclared placeholder <{missing[0]}>; declare it in [secrets], "
            f'e.g. {missing[0]} = {{ env = "{missing[0]}" }}'
        )
