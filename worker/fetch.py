"""HTTP: building the request (pure), sending it with httpx under a size cap, and decoding the JSON."""

import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from worker import jsontext
from worker.config import Source
from worker.errors import FetchError
from worker.secrets import Secrets

USER_AGENT = "signfeed/0.1 (+https://github.com/signfeed)"
MAX_REDIRECTS = 5
# Header names whose values are credentials whatever the config calls them: masked when shown, and never
# carried to another origin by a redirect.
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token")
PREVIEW_CHARS = 200
BACKOFF_BASE = 0.5  # seconds before the first retry, doubling each time
BACKOFF_CAP = 8.0
# C0 and C1 control characters except tab and newline: an API's body must not drive an operator's terminal.
_CONTROL = {c: "\ufffd" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0))}


@dataclass(frozen=True)
class Response:
    """What came back, read in full (up to the cap)."""

    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    url: str
    elapsed_ms: float

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def initial_request(source: Source, secrets: Secrets) -> dict[str, Any]:
    """The request a source describes, placeholders substituted: what a pre-request script starts from."""
    sub = secrets.substitute
    return {
        "method": source.method,
        "url": sub(source.url),
        "headers": {k: sub(v) for k, v in source.headers.items()},
        "params": {k: sub(v) for k, v in source.params.items()},
        "body": sub(source.body) if source.body is not None else None,
    }


def merge_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """One header per name, case-insensitively; the later value wins (scripts come after the config)."""
    merged: dict[str, tuple[str, str]] = {}
    for name, value in headers.items():
        merged[name.lower()] = (name, value)
    return list(merged.values())


def build(request: Mapping[str, Any]) -> httpx.Request:
    """The httpx request for a request dict ({method, url, headers, params, body})."""
    headers = merge_headers({"User-Agent": USER_AGENT, **request["headers"]})
    body = request.get("body")
    url = request.get("url")
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")) or url[-2:] == "//":
        raise FetchError(f"invalid URL {str(url)[:100]!r}: write http:// or https:// followed by a host")
    for name, value in headers:
        if not (str(name).isascii() and str(value).isascii()):
            # httpx's own error is a bare codec message; the value is not shown, it may be a secret.
            raise FetchError(f"header {name!r} is not ASCII, which HTTP headers must be: percent-encode the value "
                             "(encodeURIComponent in a script)")
    try:
        return httpx.Request(
            request["method"],
            request["url"],
            headers=headers,
            params=request.get("params") or None,
            content=body.encode("utf-8") if isinstance(body, str) else body,
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError, TypeError) as exc:
        raise FetchError(f"invalid request to {request.get('url')!r}: {exc}") from None


class Transient(FetchError):
    """A failure worth retrying within the run: the connection failed or a gateway answered 502/503/504."""


class RateLimited(FetchError):
    """The API asked us to wait (429, or 503 with Retry-After); `seconds` is how long, already clamped."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


RETRY_STATUSES = (502, 503, 504)
MAX_PAUSE = 3600.0  # an API asking for a day's pause is more likely wrong than right; re-check hourly
DEFAULT_429_PAUSE = 60.0  # a 429 without a usable Retry-After still means "slow down"
CONNECT_TIMEOUT = 10.0


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from Retry-After (delay-seconds or an HTTP date), clamped to [0, 1 h]; None if unusable."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; an offset-less one is read as such
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), MAX_PAUSE)


def check_rate_limit(status: int, headers: Mapping[str, str], now: datetime) -> float | None:
    """The pause a response demands: 429 always, 503 only with a usable Retry-After."""
    wait = parse_retry_after(headers.get("retry-after"), now)
    if status == 429:
        return DEFAULT_429_PAUSE if wait is None else wait
    if status == 503 and wait:  # "retry after 0 s" is an ordinary transient failure
        return wait
    return None


def _check_url(url: Any) -> None:
    """A URL httpx can send to, or a FetchError that says what a URL must look like."""
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else None
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise FetchError(f"invalid URL {str(url)[:100]!r}: write http:// or https:// followed by a host")


def send(client: httpx.Client, request: httpx.Request, *, deadline: float, max_bytes: int) -> Response:
    """Send and read the body by a monotonic deadline, refusing more than max_bytes.

    httpx's timeouts are per socket operation, so a server dripping a byte a second would never trip them;
    the deadline is checked between chunks as well, which bounds the whole exchange.
    """
    remaining = _remaining(deadline, request, "connect")
    request.extensions["timeout"] = httpx.Timeout(remaining, connect=min(remaining, CONNECT_TIMEOUT)).as_dict()
    started = time.perf_counter()
    try:
        response = _follow(client, request)
        try:
            body = _read_capped(response, max_bytes, deadline, request)
        finally:
            response.close()
    except httpx.ConnectTimeout:
        raise Transient(f"connect to {_origin(request)} timed out") from None
    except httpx.TimeoutException:
        raise FetchError(f"read from {_origin(request)} timed out after {remaining:.0f}s (no data)") from None
    except httpx.ConnectError as exc:
        raise Transient(f"cannot connect to {_origin(request)}: {_reason(exc)}") from None
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise Transient(f"connection to {_origin(request)} broke: {_reason(exc)}") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"request to {_origin(request)} failed: {exc.__class__.__name__}: {_reason(exc)}") from None
    headers = {k.lower(): v for k, v in response.headers.items()}
    return Response(response.status_code, headers, body, str(response.url), (time.perf_counter() - started) * 1000)


def _follow(client: httpx.Client, request: httpx.Request) -> httpx.Response:
    """Send, following redirects ourselves: httpx drops only Authorization on a cross-origin hop, and
    API keys travel in other headers too."""
    origin = request.url.copy_with(path="/", query=None, fragment=None)
    for _hop in range(MAX_REDIRECTS + 1):
        response = client.send(request, stream=True, follow_redirects=False)
        if response.next_request is None:
            return response
        response.close()
        request = response.next_request
        if request.url.copy_with(path="/", query=None, fragment=None) != origin:
            for name in CREDENTIAL_HEADERS:
                request.headers.pop(name, None)
    raise FetchError(f"more than {MAX_REDIRECTS} redirects from {origin}")


def _remaining(deadline: float, request: httpx.Request, phase: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(f"run deadline passed before {phase} to {_origin(request)} (timeout)")
    return left


def _read_capped(response: httpx.Response, max_bytes: int, deadline: float, request: httpx.Request) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"response is {int(declared):,} bytes, over the {max_bytes:,}-byte limit (max_bytes)")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"response is over the {max_bytes:,}-byte limit (max_bytes); stopped reading")
        if time.monotonic() > deadline:
            raise FetchError(f"total deadline passed while reading from {_origin(request)} "
                             f"({size:,} bytes in; timeout)")
        chunks.append(chunk)
    return b"".join(chunks)


def send_with_retries(client: httpx.Client, request: httpx.Request, *, deadline: float, max_bytes: int,
                      retries: int, now: datetime, sleep: Callable[[float], None] = time.sleep) -> Response:
    """send, retrying connection failures and 502/503/504 with capped exponential backoff and jitter."""
    attempt = 0
    while True:
        try:
            response = send(client, request, deadline=deadline, max_bytes=max_bytes)
        except Transient:
            if attempt >= retries:
                raise
        else:
            pause = check_rate_limit(response.status, response.headers, now)
            if pause is not None:
                raise RateLimited(f"HTTP {response.status} from {response.url}: rate-limited", pause)
            if response.status not in RETRY_STATUSES or attempt >= retries:
                return response
        # Full jitter: sources failing together (one upstream outage) do not retry in lockstep.
        wait = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
        if time.monotonic() + wait >= deadline:
            raise FetchError(f"gave up on {_origin(request)} after {attempt + 1} attempts: the run deadline is near")
        sleep(wait)
        attempt += 1


def _origin(request: httpx.Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"


def _reason(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0]


def decode_json(response: Response) -> Any:
    """The body as JSON, or a FetchError saying what came instead (status, content type, a preview)."""
    if not 200 <= response.status < 300:
        raise FetchError(f"HTTP {response.status} from {response.url}: {preview(response.text)}")
    kind = response.headers.get("content-type", "no content-type")
    try:
        text = response.body.decode("utf-8-sig")  # RFC 8259: JSON between systems is UTF-8
    except UnicodeDecodeError as exc:
        raise FetchError(f"response is not UTF-8 JSON ({kind}; bad byte at {exc.start}): "
                         f"{preview(response.text)}") from None
    if not text.strip():
        raise FetchError(f"HTTP {response.status} with an empty body from {response.url}; expected JSON")
    try:
        data = jsontext.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise FetchError(f"response is not JSON ({kind}; {exc.msg} at line {exc.lineno}): {preview(text)}") from None
    except (ValueError, RecursionError) as exc:  # NaN/Infinity, 1e400, huge integers, absurd nesting
        raise FetchError(f"response is not usable JSON ({kind}; {str(exc).splitlines()[0][:120]})") from None
    if data is None:
        raise FetchError(f"response is JSON null from {response.url}; keeping the last good data")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (screens could not parse the feed)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """One line of at most limit characters, for error messages; control bytes shown as �, never sent to a terminal."""
    flat = " ".join(text.translate(_CONTROL).split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def select(data: Any, path: str | None) -> Any:
    """The part of data at a dotted path ('value', 'data.items', 'rows.0'); FetchError if absent."""
    if not path:
        return data
    current = data
    for i, part in enumerate(path.split(".")):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.lstrip("-").isdigit() and -len(current) <= int(part) < len(current):
            current = current[int(part)]
        else:
            walked = ".".join(path.split(".")[:i]) or "the top level"
            keys = ", ".join(list(current)[:10]) if isinstance(current, dict) else type(current).__name__
            raise FetchError(f"select {path!r}: no {part!r} under {walked} (found: {keys})")
    return current


def host_http(client: httpx.Client, args: Mapping[str, Any], *, deadline: float, max_bytes: int) -> dict[str, Any]:
    """A pre-request script's os.* request, carried out by the worker: {status, headers, text}."""
    request = build({
        "method": str(args.get("method", "GET")).upper(),
        "url": args["url"],
        "headers": dict(args.get("headers") or {}),
        "params": dict(args.get("params") or {}),
        "body": args.get("body"),
    })
    wanted = args.get("timeout")  # seconds, already converted from the script's milliseconds
    if wanted:
        deadline = min(deadline, time.monotonic() + float(wanted))
    response = send(client, request, deadline=deadline, max_bytes=max_bytes)
    return {"status": response.status, "headers": dict(response.headers), "text": response.text}


def new_client(concurrency: int = 8) -> httpx.Client:
    """The shared client: a keep-alive pool as wide as the pulls in flight, bounded redirects, and no
    environment proxies (an unattended daemon must behave the same whatever shell started it)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=max(concurrency, 10))
    return httpx.Client(max_redirects=MAX_REDIRECTS, trust_env=False, timeout=60.0, limits=limits)
