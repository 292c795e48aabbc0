"""HTTP: building the request (pure), sending it with httpx under a size cap, and decoding the JSON."""

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from worker.config import Source
from worker.errors import FetchError
from worker.secrets import Secrets

USER_AGENT = "signfeed/0.1 (+https://github.com/signfeed)"
MAX_REDIRECTS = 5
PREVIEW_CHARS = 200


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


def send(client: httpx.Client, request: httpx.Request, *, timeout: float, max_bytes: int) -> Response:
    """Send and read the body, refusing more than max_bytes; network failures become one-line FetchErrors."""
    request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
    started = time.perf_counter()
    try:
        response = client.send(request, stream=True, follow_redirects=True)
        try:
            body = _read_capped(response, max_bytes)
        finally:
            response.close()
    except httpx.TooManyRedirects:
        raise FetchError(f"more than {MAX_REDIRECTS} redirects from {request.url}") from None
    except httpx.ConnectTimeout:
        raise FetchError(f"connect timed out after {timeout:g}s ({_origin(request)})") from None
    except httpx.TimeoutException:
        raise FetchError(f"read timed out after {timeout:g}s ({_origin(request)})") from None
    except httpx.ConnectError as exc:
        raise FetchError(f"cannot connect to {_origin(request)}: {_reason(exc)}") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"request to {_origin(request)} failed: {exc.__class__.__name__}: {_reason(exc)}") from None
    headers = {k.lower(): v for k, v in response.headers.items()}
    return Response(response.status_code, headers, body, str(response.url), (time.perf_counter() - started) * 1000)


def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"response is {int(declared):,} bytes, over the {max_bytes:,}-byte limit (max_bytes)")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"response is over the {max_bytes:,}-byte limit (max_bytes); stopped reading")
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(request: httpx.Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"


def _reason(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0]


def decode_json(response: Response) -> Any:
    """The body as JSON, or a FetchError saying what came instead (status, content type, a preview)."""
    if not 200 <= response.status < 300:
        raise FetchError(f"HTTP {response.status} from {response.url}: {preview(response.text)}")
    text = response.body.decode("utf-8-sig", errors="replace")
    if not text.strip():
        raise FetchError(f"HTTP {response.status} with an empty body from {response.url}; expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        kind = response.headers.get("content-type", "no content-type")
        raise FetchError(
            f"response is not JSON ({kind}; {exc.msg} at line {exc.lineno}): {preview(text)}"
        ) from None


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """One line of at most limit characters, for error messages."""
    flat = " ".join(text.split())
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


def host_http(client: httpx.Client, args: Mapping[str, Any], *, timeout: float, max_bytes: int) -> dict[str, Any]:
    """A pre-request script's os.* request, carried out by the worker: {status, headers, text}."""
    request = build({
        "method": str(args.get("method", "GET")).upper(),
        "url": args["url"],
        "headers": dict(args.get("headers") or {}),
        "params": dict(args.get("params") or {}),
        "body": args.get("body"),
    })
    wanted = args.get("timeout")
    response = send(client, request, timeout=min(timeout, float(wanted)) if wanted else timeout, max_bytes=max_bytes)
    return {"status": response.status, "headers": dict(response.headers), "text": response.text}


def new_client() -> httpx.Client:
    """The shared client: keep-alive pool, bounded redirects, no environment proxies (unattended daemon)."""
    return httpx.Client(max_redirects=MAX_REDIRECTS, trust_env=False, timeout=60.0)
