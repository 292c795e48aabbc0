"""run_source: the one function that orders the stages of a pull (script → request → store → render)."""

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx

from worker import fetch
from worker.auth import AuthBlock, Token, TokenManager, token_rejected
from worker.check import shown_path
from worker.clock import Clock, utcnow
from worker.config import Config, Source
from worker.errors import FetchError, ScriptError, WorkerError
from worker.render import Renderer, SourceView, ago, json_feed, write_atomic
from worker.script import HostCall, ScriptJob, ScriptOutcome, lint
from worker.secrets import MIN_REDACT_LEN, encoded_forms, redact
from worker.store import FAILED, OK, SKIPPED, RunRow, Store, encode_data, iso

log = logging.getLogger(__name__)

SENSITIVE_HEADERS = fetch.CREDENTIAL_HEADERS
# JSON keys in responses to a script's own requests (token endpoints) whose values must be masked from then on.
TOKEN_KEYS = ("access_token", "id_token", "refresh_token", "token")
SHOWN_BODY = 2000


class Scripts(Protocol):
    """What the pipeline needs of a script runner (worker.script.ScriptRunner in production)."""

    def run(self, job: ScriptJob, host_call: HostCall) -> ScriptOutcome: ...
    def check(self, code: str, path: str) -> None: ...
    def close(self) -> None: ...


@dataclass
class Deps:
    """Everything with an effect, passed in so tests can swap each part."""

    store: Store
    client: httpx.Client
    scripts: Scripts
    renderer: Renderer
    tokens: TokenManager
    clock: Clock = utcnow
    sleep: Callable[[float], None] = time.sleep
    # Sources an API told to back off (Retry-After), until when. In memory: a restart re-asks the API once.
    paused_until: dict[str, datetime] = field(default_factory=dict)
    unpublished: set[str] = field(default_factory=set)  # sources whose feeds the last attempt failed to write

    def close(self) -> None:
        self.client.close()
        self.scripts.close()
        self.store.close()


def open_deps(config: Config) -> Deps:
    """Production parts for a config: the database, one shared httpx client, the script helpers, Jinja."""
    from worker.script import ScriptRunner

    store = Store(config.worker.database)
    client = fetch.new_client(config.worker.concurrency)
    return Deps(
        store=store,
        client=client,
        scripts=ScriptRunner(size=config.worker.concurrency),
        renderer=Renderer(config.worker.templates_dir, config.worker.timezone),
        tokens=TokenManager(store, client, utcnow),
    )


@dataclass
class RunResult:
    """What one pull did, for the CLI (`test`, `pull`) and the tests; every text in it is redacted."""

    source: str
    status: str  # ok | unchanged | failed
    started_at: datetime
    duration_ms: float = 0.0
    error: str | None = None
    request: dict[str, Any] | None = None  # as sent, credentials masked
    response: fetch.Response | None = None
    data: Any = None
    console: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    auth_note: str | None = None  # where the auth block's token came from, never the token
    shown_headers: dict[str, str] = field(default_factory=dict)  # response headers, masked
    shown_body: str = ""  # the start of the response (data when ok), masked
    written: list[Path] = field(default_factory=list)
    render_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != FAILED


@dataclass
class _Masks:
    """Values to mask in this run: the config's secrets plus tokens the run itself obtained."""

    values: set[str]

    def add_tokens(self, text: str) -> None:
        try:
            doc = json.loads(text.lstrip("\ufeff"))
        except ValueError:
            return
        if isinstance(doc, dict):
            self.values.update(str(doc[k]) for k in TOKEN_KEYS if isinstance(doc.get(k), str))

    def add_headers(self, headers: dict[str, str]) -> None:
        for name, value in headers.items():
            if name.lower() in SENSITIVE_HEADERS:
                self.values.add(value)
                # "Bearer abc" → also mask "abc" alone, which is how a token shows up in other messages.
                self.values.add(value.partition(" ")[2] or value)

    def add_url_credentials(self, url: str) -> None:
        """user:password in a URL travel as an `Authorization: Basic` header an API may echo: mask both forms."""
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        self.values.update(v for v in (unquote(parts.password or ""), base64.b64encode(pair.encode()).decode()) if v)

    def __call__(self, text: str) -> str:
        return redact(text, sorted(self.values, key=len, reverse=True))

    def scrub(self, data: Any) -> Any:
        """API data with every secret or token it echoes masked (a `self` link carrying ?api_key=...)."""
        text = json.dumps(data, ensure_ascii=False)
        if not any(form in text for v in self.values if len(v) >= MIN_REDACT_LEN for form in encoded_forms(v)):
            return data
        return self._walk(data)

    def _walk(self, data: Any) -> Any:
        if isinstance(data, str):
            return self(data)
        if isinstance(data, list):
            return [self._walk(item) for item in data]
        if isinstance(data, dict):
            return {self(key): self._walk(value) for key, value in data.items()}
        return data


def run_source(source: Source, config: Config, deps: Deps, *, store: bool = True, force: bool = False) -> RunResult:
    """Pull one source: run its script, send the request, store a new snapshot, re-render its feeds.

    store=False is `signfeed test`: the same steps, nothing written. force re-renders unchanged data.
    """
    started = deps.clock()
    clock_start = time.perf_counter()
    masks = _Masks(set(config.secrets.secret_values()))
    result = RunResult(source.name, FAILED, started)
    paused = deps.paused_until.get(source.name)
    if paused is not None and started < paused:
        result.status, result.error = SKIPPED, f"{source.name}: rate-limited until {_local(paused, config)}"
        log.info("%s; run skipped", result.error)
        return result
    deadline = time.monotonic() + source.timeout
    try:
        request, token = _prepare(source, config, deps, masks, result, deadline)
        result.response = _send(source, config, deps, request, token, deadline, masks)
        result.data = masks.scrub(fetch.select(fetch.decode_json(result.response), source.select))
        result.status = OK
    except WorkerError as exc:
        if isinstance(exc, fetch.RateLimited):
            deps.paused_until[source.name] = deps.clock() + timedelta(seconds=exc.seconds)
        result.error = masks(_prefixed(source.name, _rate_limit_note(source, config, deps, started, str(exc))))
        result.console = [(level, masks(line)) for level, line in getattr(exc, "console", result.console)]
    except Exception as exc:
        # A bug of ours: the run is still recorded, so `status` and the JSON feed show it, not only the log.
        # The traceback is logged at debug level (-v): it may hold values the mask never saw.
        result.error = masks(f"{source.name}: internal error: {exc.__class__.__name__}: {exc} (please report it)")
        log.debug("%s: internal error", source.name, exc_info=True)
    result.duration_ms = (time.perf_counter() - clock_start) * 1000
    if result.response is not None and not store:  # only `signfeed test` shows the response
        result.shown_headers = {k: masks(v) for k, v in result.response.headers.items()}
        body = json.dumps(result.data, ensure_ascii=False, indent=1) if result.ok else result.response.text
        result.shown_body = masks(body[:SHOWN_BODY])
    if store and result.status != SKIPPED:
        _store_and_publish(source, config, deps, result, force)
    _log(result)
    return result


def _rate_limit_note(source: Source, config: Config, deps: Deps, started: datetime, error: str) -> str:
    """The error, led by "rate-limited until ..." when this run's data or token request set a pause."""
    until = deps.paused_until.get(source.name)
    if until is None or until < started:
        return error
    return f"rate-limited until {_local(until, config)} ({error})"


def _local(moment: datetime, config: Config) -> str:
    return moment.astimezone(config.worker.tz).strftime("%H:%M:%S")


def _send(source: Source, config: Config, deps: Deps, request: dict[str, Any], token: Token | None,
          deadline: float, masks: _Masks) -> fetch.Response:
    """Send with retries; a response rejecting the auth block's token gets one retry with a new token."""

    def attempt(request: dict[str, Any]) -> fetch.Response:
        return fetch.send_with_retries(deps.client, fetch.build(request), deadline=deadline,
                                       max_bytes=source.max_bytes, retries=source.retries, now=deps.clock(),
                                       sleep=deps.sleep)

    response = attempt(request)
    block = config.auth[source.auth] if source.auth else None
    if block is None or token is None or not token_rejected(block, response.status, response.body):
        return response
    deps.tokens.invalidate(block, token.value)
    retry = _with_token(request, block, deps.tokens.token(block, deadline=deadline), deps.tokens, masks)
    response = attempt(retry)
    if token_rejected(block, response.status, response.body):
        raise FetchError(f"HTTP {response.status} from {response.url} even with a new token from [auth.{block.name}]: "
                         f"{fetch.preview(response.text)}")
    return response


def _with_token(request: dict[str, Any], block: AuthBlock, token: Token, tokens: TokenManager,
                masks: _Masks) -> dict[str, Any]:
    masks.values.add(token.value)
    name, value = tokens.header_for(block, token)
    return {**request, "headers": {**request["headers"], name: value}}


def _prepare(source: Source, config: Config, deps: Deps, masks: _Masks, result: RunResult,
             deadline: float) -> tuple[dict[str, Any], Token | None]:
    """The request to send: the config's, its auth block's token, then whatever the pre-request script changed."""
    request = fetch.initial_request(source, config.secrets)
    token = None
    if source.auth:
        block = config.auth[source.auth]
        token = deps.tokens.token(block, deadline=deadline)
        request = _with_token(request, block, token, deps.tokens, masks)
        result.auth_note = (f"token for [auth.{block.name}] {'from cache' if token.from_cache else 'newly fetched'}, "
                            f"expires {_local(token.expires_at, config)}")
    script_path = config.script_path(source)
    if script_path is not None:
        shown = shown_path(script_path, config)
        code = config.script_code(source)
        # The configured limits as written, so the error names the figure the operator set; the script's
        # own requests still stop at the run deadline.
        budget = min(source.script_timeout, source.timeout)
        job = ScriptJob(source.name, shown, code, request, timeout=budget, memory_mb=source.script_memory)
        outcome = deps.scripts.run(job, _host_call(source, config, deps, masks, deadline))
        masks.add_headers(outcome.request["headers"])  # before the console: a script may print its header
        result.console = [(level, masks(line)) for level, line in outcome.console]
        result.warnings = lint(job, outcome, config.secrets.secret_values())
        request = outcome.request
    masks.add_headers(request["headers"])
    masks.add_url_credentials(request["url"])
    result.request = _masked_request(request, masks)
    return request, token


def _host_call(source: Source, config: Config, deps: Deps, masks: _Masks, deadline: float) -> HostCall:
    """The worker side of a script's os.* calls: requests go out through the shared httpx client."""

    def call(op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "http":
            answer = fetch.host_http(deps.client, args, deadline=deadline, max_bytes=source.max_bytes)
            masks.add_tokens(answer["text"])
            # A token endpoint's Retry-After pauses the whole source, like the data endpoint's would.
            pause = fetch.check_rate_limit(answer["status"], answer["headers"], deps.clock())
            if pause is not None:
                deps.paused_until[source.name] = deps.clock() + timedelta(seconds=pause)
            return answer
        if op == "auth_token":
            return {"token": _script_token(str(args.get("name")), config, deps, masks, deadline)}
        raise ScriptError(f"os.{op} is not available")

    return call


def _script_token(name: str, config: Config, deps: Deps, masks: _Masks, deadline: float) -> str:
    """os.auth.token(name): the same cached token a source with `auth = name` would get."""
    block = config.auth.get(name)
    if block is None:
        known = ", ".join(config.auth) or "none"
        raise ScriptError(f"os.auth.token({name!r}): no [auth.{name}] block (blocks: {known})")
    token = deps.tokens.token(block, deadline=deadline)
    masks.values.add(token.value)
    return token.value


def _masked_request(request: dict[str, Any], masks: _Masks) -> dict[str, Any]:
    headers = {k: ("[redacted]" if k.lower() in SENSITIVE_HEADERS and v else masks(v))
               for k, v in request["headers"].items()}
    shown = {**request, "headers": headers, "url": masks(request["url"])}
    shown["params"] = {k: masks(v) for k, v in request.get("params", {}).items()}
    if isinstance(request.get("body"), str):
        shown["body"] = masks(request["body"])
    return shown


def _prefixed(name: str, message: str) -> str:
    return message if message.startswith(f"{name}: ") else f"{name}: {message}"


def _store_and_publish(source: Source, config: Config, deps: Deps, result: RunResult, force: bool) -> None:
    """Record the run (with a snapshot when the data changed) and rewrite the feeds that changed."""
    run = RunRow(source=source.name, started_at=iso(result.started_at), finished_at=iso(deps.clock()),
                 status=result.status, duration_ms=round(result.duration_ms, 3), error=result.error)
    body = digest = None
    if result.ok:
        body, digest = encode_data(result.data)
    record = deps.store.record_pull(run, body, digest, result.response.status if result.response else 0,
                                    keep=source.keep)
    result.status = record.status
    if result.status == FAILED:
        # The last good HTML stays byte-identical; only the JSON feed learns about the error.
        publish(config, deps, [source.name], templates=False, result=result)
        return
    previous_success = record.previous_success_at
    # Feeds that show an error or a stale badge must be redrawn on success even when the data is unchanged.
    shown_bad = record.previous_status == FAILED or (
        previous_success is not None and (result.started_at - previous_success).total_seconds() > source.stale_after)
    if record.changed or force or shown_bad or source.name in deps.unpublished:
        now = deps.clock()
        # This source's view is known from the run itself: no need to read back what was just written.
        own = SourceView(name=source.name, data=result.data, fetched_at=record.fetched_at, stale=False,
                         last_error=None, updated_ago=ago(record.fetched_at, now))
        publish(config, deps, [source.name], templates=True, result=result, known={source.name: own})


def source_view(config: Config, store: Store, name: str, now: datetime) -> SourceView:
    """A source's latest snapshot and state, as templates and the JSON feed show it."""
    snapshot = store.latest_snapshot(name)
    state = store.state(name)
    last_success = state.last_success_at
    stale = last_success is None or (now - last_success).total_seconds() > config.source(name).stale_after
    fetched_at = snapshot.fetched_at if snapshot else None
    return SourceView(name=name, data=snapshot.data if snapshot else None, fetched_at=fetched_at,
                      stale=stale, last_error=state.last_error, updated_ago=ago(fetched_at, now))


def publish(config: Config, deps: Deps, names: Iterable[str], *, templates: bool = True,
            result: RunResult | None = None, known: dict[str, SourceView] | None = None) -> list[Path]:
    """Write the JSON feeds of these sources and, with templates, every [[feeds]] file that uses them."""
    now = deps.clock()
    names = list(names)
    result = result if result is not None else RunResult("*", OK, now)
    known = known or {}
    views = {name: known.get(name) or source_view(config, deps.store, name, now) for name in names}
    done = True
    for name, view in views.items():
        path = config.worker.feeds_dir / f"{name}.json"
        # Without stored data a JSON feed is still rewritten while it holds none either: its last_error moves on.
        done &= _write(path, partial(json_feed, view, now), view.data is not None or not _holds_data(path), result)
    for feed in (f for f in config.feeds if templates and set(f.sources) & set(names)):
        shown = {n: views.get(n) or source_view(config, deps.store, n, now) for n in feed.sources}
        done &= _write(config.worker.feeds_dir / feed.output,
                       partial(deps.renderer.render, feed, shown, now),
                       any(v.data is not None for v in shown.values()), result)
    # A feed that could not be written is retried by the source's next success, even with unchanged data.
    (deps.unpublished.difference_update if done else deps.unpublished.update)(names)
    return result.written


def _holds_data(json_feed_path: Path) -> bool:
    """Whether a JSON feed on disk shows data (a file this worker cannot read shows none worth keeping)."""
    try:
        return json.loads(json_feed_path.read_bytes()).get("data") is not None
    except (OSError, ValueError, AttributeError):
        return False


def _write(path: Path, make: Callable[[], str], has_data: bool, result: RunResult) -> bool:
    """Render and atomically write one feed file; a failure leaves the previous file and is reported."""
    if not has_data and path.exists():
        # No stored data (a new or emptied database): the file on screen is better than "waiting for data".
        return True
    try:
        write_atomic(path, make())
    except WorkerError as exc:
        message = f"feed {path.name}: {exc}"
    except OSError as exc:
        message = f"feed {path.name}: cannot write {path}: {exc.strerror}"
    else:
        result.written.append(path)
        return True
    message += "; the previous file stays" if path.exists() else "; no file written yet"
    log.error("%s", message)
    result.render_errors.append(message)
    return False


def render_all(config: Config, deps: Deps) -> RunResult:
    """Re-render every feed from stored snapshots (after a template edit)."""
    result = RunResult("*", OK, deps.clock())
    publish(config, deps, [s.name for s in config.sources], result=result)
    return result


def _log(result: RunResult) -> None:
    for level, line in result.console:
        log.info("%s: [console.%s] %s", result.source, level, line)
    if result.status == FAILED:
        log.error("%s", result.error)
        return
    status = result.response.status if result.response else 0
    size = len(result.response.body) if result.response else 0
    log.info("%s: %s (HTTP %s, %d bytes, %.0f ms)", result.source, result.status, status, size, result.duration_ms)
