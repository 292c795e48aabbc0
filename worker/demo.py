"""A local stand-in for the APIs signage screens pull from: OAuth2 client credentials plus real recorded responses.

`signfeed demo` starts it on 127.0.0.1:8787 and points the bundled config.toml at it; tests start it on port 0.
Everything it serves was recorded from real APIs (see worker/demo_data); nothing here contacts another host.
"""

import argparse
import base64
import binascii
import hmac
import json
import logging
import re
import secrets
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

log = logging.getLogger(__name__)

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
DEFAULT_PORT = 8787  # the port the bundled config.toml's [secrets] URLs name
CLIENT_ID = "signfeed-demo"
CLIENT_SECRET = "demo-secret-change-me"
DEFAULT_EXPIRES_IN = 3600
MAX_FORM_BYTES = 64 * 1024  # a client-credentials form is a few hundred bytes; refuse anything huge unread
TOKEN_PATH = "/oauth2/token"
REALM = "signfeed-demo"

# path → fixture file in worker/demo_data, served byte for byte.
FIXTURE_ROUTES: dict[str, str] = {
    "/weather/forecast": "open-meteo-forecast.json",
    "/calendar/events": "msgraph-events-list.json",
    "/calendar/google": "google-calendar-events-list.json",
    "/sheets/menu": "google-sheets-values-get.json",
    "/transit/departures": "entur-ruter-departures.json",
}
NEWS_PATH = "/news/feed"
NEWS_FIXTURE = "rss2-wordpress-blog-feed.xml"
JSON_TYPE = "application/json; charset=utf-8"

# RFC 6750 2.1: credentials = "Bearer" 1*SP b64token; we accept exactly one space, scheme in any case.
BEARER_RE = re.compile(r"(?i:bearer) ([A-Za-z0-9\-._~+/]+=*)")
BASIC_RE = re.compile(r"(?i:basic) ([A-Za-z0-9+/]+=*)")

# Azure AD's AADSTS codes for the same failures, so the demo's errors look like the real thing (see
# azure-ad-error-invalid-client.json): clients and the worker's logs must cope with that shape.
AAD_NO_SECRET = 7000216
AAD_UNKNOWN_CLIENT = 700016
AAD_BAD_SECRET = 7000215

DC_NS = "{http://purl.org/dc/elements/1.1/}"
# Tags that separate words visually; "<p>a</p><p>b</p>" must become "a b", not "ab".
BLOCK_TAGS = frozenset({"p", "br", "div", "li", "ul", "ol", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6",
                        "blockquote", "pre", "hr", "img", "figure", "figcaption", "table", "section", "article"})


def fixture_bytes(name: str) -> bytes:
    """The bundled fixture `name` from worker/demo_data, as stored."""
    # Next to this file rather than importlib.resources: under setuptools' editable install, Python 3.11's
    # resources.files("worker") raises NotADirectoryError (the finder's path hook joins the search path).
    return (DEMO_DATA / name).read_bytes()


class _TextExtractor(HTMLParser):
    """Collects the text of an HTML fragment, skipping script and style."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Enter a script/style element (not prose) or a block that separates words."""
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        """Leave a script/style element or a block."""
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        """Keep visible text."""
        if not self._skip:
            self.parts.append(data)


def strip_html(fragment: str) -> str:
    """Plain text of an HTML fragment, whitespace collapsed (signage cannot render feed HTML safely)."""
    parser = _TextExtractor()
    parser.feed(fragment)
    parser.close()
    return " ".join("".join(parser.parts).split())


def _text(element: ET.Element | None, tag: str) -> str:
    """Stripped text of element's first `tag` child, "" when missing."""
    found = element.find(tag) if element is not None else None
    return (found.text or "").strip() if found is not None else ""


def _iso_date(rfc822: str) -> str:
    """An RFC 822 date as ISO 8601 with its offset; unparseable input is passed through."""
    # rss2json gives "YYYY-MM-DD HH:MM:SS" in UTC; ISO 8601 with the offset says the same and lets the
    # renderer's local_time filter convert it without guessing.
    try:
        return parsedate_to_datetime(rfc822).isoformat()
    except (TypeError, ValueError, IndexError):
        return rfc822


def rss_to_json(xml: bytes) -> dict[str, Any]:
    """An RSS 2.0 document as rss2json-style JSON: feed title/link/description and plain-text items."""
    channel = ET.fromstring(xml).find("channel")
    items = [
        {
            "title": _text(item, "title"),
            "link": _text(item, "link"),
            "guid": _text(item, "guid"),
            "pubDate": _iso_date(_text(item, "pubDate")),
            "author": _text(item, f"{DC_NS}creator") or _text(item, "author"),
            "description": strip_html(_text(item, "description")),
            "categories": [c.text.strip() for c in item.findall("category") if c.text and c.text.strip()],
        }
        for item in (channel.findall("item") if channel is not None else [])
    ]
    feed = {
        "title": _text(channel, "title"),
        "link": _text(channel, "link"),
        "description": strip_html(_text(channel, "description")),
    }
    return {"status": "ok", "feed": feed, "items": items}


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its DemoAPI, so handlers reach tokens and counters."""

    daemon_threads = True  # a stuck client must not keep the worker process alive
    api: "DemoAPI"


class DemoAPI:
    """The demo API: an OAuth2 token endpoint and bearer-protected data endpoints over fixtures."""

    def __init__(
        self,
        expires_in: int = DEFAULT_EXPIRES_IN,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load the fixtures once; `clock` (seconds, monotonic) lets tests expire tokens without sleeping."""
        self.expires_in = expires_in
        self.client_id = client_id
        self.client_secret = client_secret
        self.clock = clock
        self.fixtures = {path: fixture_bytes(name) for path, name in FIXTURE_ROUTES.items()}
        self.news_xml = fixture_bytes(NEWS_FIXTURE)
        self._tokens: dict[str, float] = {}  # token → expiry on self.clock
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
        """Bind and serve in a daemon thread; returns (server, base URL). Port 0 picks a free port."""
        if self._server is not None:
            raise RuntimeError("DemoAPI already started")
        server = _Server((host, port), _Handler)  # listening once this returns: no readiness wait needed
        server.api = self
        self._server = server
        self.base_url = f"http://{host}:{server.server_address[1]}"
        # A short poll interval so stop() returns at once (shutdown waits for the next poll).
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="signfeed-demo-api", daemon=True)
        self._thread.start()
        return server, self.base_url

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "DemoAPI":
        """Start on a free port when used as a context manager."""
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop on leaving the with block."""
        self.stop()

    # -- counters -------------------------------------------------------------------------------------

    def count(self, path: str) -> int:
        """How many requests reached `path` (any method, any outcome)."""
        with self._lock:
            return self._counts[path]

    def counts(self) -> dict[str, int]:
        """A snapshot of requests per path."""
        with self._lock:
            return dict(self._counts)

    def _record(self, path: str) -> None:
        """Count one request to path."""
        with self._lock:
            self._counts[path] += 1

    # -- tokens ---------------------------------------------------------------------------------------

    def issue_token(self) -> str:
        """A fresh random opaque token valid for expires_in seconds."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            # Drop expired tokens here so a long demo run does not grow the table forever.
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + self.expires_in
        return token

    def token_valid(self, token: str) -> bool:
        """True while token was issued here and has not expired."""
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and self.clock() < expiry

    def check_client(self, client_id: str | None, client_secret: str | None) -> tuple[int, str] | None:
        """None if the credentials are right, else (AADSTS-style code, description)."""
        if not client_id or client_secret is None:
            return AAD_NO_SECRET, "The request body must contain client_id and client_secret (or use HTTP Basic)."
        if not hmac.compare_digest(client_id.encode(), self.client_id.encode()):
            return AAD_UNKNOWN_CLIENT, f"Application with identifier '{client_id}' was not found."
        if not hmac.compare_digest(client_secret.encode(), self.client_secret.encode()):
            return AAD_BAD_SECRET, "Invalid client secret is provided."
        return None


class _Handler(BaseHTTPRequestHandler):
    """Routes one request; HTTP/1.0 so every connection closes and shutdown never waits on keep-alive."""

    server: _Server
    server_version = "signfeed-demo/1"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Per-request lines go to debug logging, not stderr."""
        log.debug("%s " + format, self.address_string(), *args)

    @property
    def path_only(self) -> str:
        """The request path without query string."""
        return urlsplit(self.path).path

    # -- responses ------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Write a complete JSON response."""
        self.send_response(status)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        """Write doc as UTF-8 JSON (non-ASCII kept as is, like the real APIs)."""
        self._send(status, json.dumps(doc, ensure_ascii=False).encode("utf-8"), headers)

    def _oauth_error(self, status: int, error: str, description: str, headers: dict[str, str] | None = None) -> None:
        """An RFC 6749 5.2 error response."""
        # RFC 6749 5.1/5.2: token responses, errors included, must not be cached.
        self._json(status, {"error": error, "error_description": description},
                   {"Cache-Control": "no-store", "Pragma": "no-cache", **(headers or {})})

    def _invalid_client(self, code: int, description: str, basic: bool) -> None:
        """401 invalid_client shaped like Azure AD's (azure-ad-error-invalid-client.json)."""
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        doc = {
            "error": "invalid_client",
            # Azure AD packs trace ids into the description with literal CRLFs; keep that quirk.
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
            f"Correlation ID: {correlation}\r\nTimestamp: {now}",
            "error_codes": [code],
            "timestamp": now,
            "trace_id": trace,
            "correlation_id": correlation,
        }
        # RFC 6749 5.2: a client that authenticated with Basic gets a matching challenge back.
        challenge = {"WWW-Authenticate": f'Basic realm="{REALM}"'} if basic else {}
        self._json(401, doc, {"Cache-Control": "no-store", "Pragma": "no-cache", **challenge})

    def _not_found(self) -> None:
        """404 listing the routes that exist."""
        self._json(404, {"error": "not_found", "error_description": f"no route {self.path_only}",
                         "routes": [TOKEN_PATH, *FIXTURE_ROUTES, NEWS_PATH]})

    def _method_not_allowed(self, allow: str) -> None:
        """405 with the Allow header."""
        self._json(405, {"error": "method_not_allowed", "error_description": f"use {allow}"}, {"Allow": allow})

    # -- dispatch -------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        """Serve a data endpoint (bearer token required) or the route index."""
        path = self.path_only
        self.server.api._record(path)
        if path == TOKEN_PATH:
            self._method_not_allowed("POST")
        elif path in FIXTURE_ROUTES or path == NEWS_PATH:
            if self._authorized():
                self._serve_data(path)
        elif path == "/":
            self._json(200, {"name": "signfeed demo API", "token": TOKEN_PATH,
                             "data": [*FIXTURE_ROUTES, NEWS_PATH]})
        else:
            self._not_found()

    def do_HEAD(self) -> None:
        """Same as GET without a body."""
        self.do_GET()

    def do_POST(self) -> None:
        """The OAuth2 token endpoint; data endpoints only answer GET."""
        path = self.path_only
        self.server.api._record(path)
        if path == TOKEN_PATH:
            self._token()
        elif path in FIXTURE_ROUTES or path == NEWS_PATH:
            self._method_not_allowed("GET, HEAD")
        else:
            self._not_found()

    def _serve_data(self, path: str) -> None:
        """200 with the fixture (or converted feed) behind path."""
        api = self.server.api
        if path == NEWS_PATH:
            # Converted per request, as an rss2json-style service would: signfeed stores JSON only.
            self._json(200, rss_to_json(api.news_xml))
        else:
            self._send(200, api.fixtures[path])

    def _authorized(self) -> bool:
        """True for a live bearer token; otherwise answers 401 and returns False."""
        values = self.headers.get_all("Authorization") or []
        match = BEARER_RE.fullmatch(values[0]) if len(values) == 1 else None
        if match and self.server.api.token_valid(match.group(1)):
            return True
        reason = "no bearer token" if not values else "the access token is unknown, malformed or expired"
        self._json(401, {"error": "invalid_token", "error_description": reason},
                   {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token", '
                                        f'error_description="{reason}"'})
        return False

    # -- token endpoint -------------------------------------------------------------------------------

    def _read_form(self) -> dict[str, list[str]] | None:
        """The form-urlencoded body, or None after answering the error."""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            self._oauth_error(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
            return None
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._oauth_error(411, "invalid_request", "Content-Length is required")
            return None
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM_BYTES:
            self._oauth_error(413 if length > MAX_FORM_BYTES else 400, "invalid_request", "bad Content-Length")
            return None
        raw = self.rfile.read(length)
        try:
            # parse_qs percent-decodes and turns '+' into space, as application/x-www-form-urlencoded says.
            return parse_qs(raw.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict")
        except (UnicodeDecodeError, ValueError):
            self._oauth_error(400, "invalid_request", "the body is not valid form-urlencoded UTF-8")
            return None

    def _basic_credentials(self) -> tuple[str, str] | bool | None:
        """(id, secret) from HTTP Basic, None if absent, False if present but malformed."""
        header = self.headers.get("Authorization")
        if header is None:
            return None
        match = BASIC_RE.fullmatch(header)
        if not match:
            return False
        try:
            decoded = base64.b64decode(match.group(1), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if ":" not in decoded:
            return False
        client_id, client_secret = decoded.split(":", 1)
        # RFC 6749 2.3.1: both parts are form-urlencoded before being joined and base64-encoded.
        return unquote_plus(client_id), unquote_plus(client_secret)

    def _token(self) -> None:
        """POST /oauth2/token: client credentials grant, body or HTTP Basic client auth."""
        form = self._read_form()
        if form is None:
            return
        duplicated = sorted(k for k, v in form.items() if len(v) > 1)
        if duplicated:  # RFC 6749 3.2: parameters must not be repeated
            self._oauth_error(400, "invalid_request", f"parameter repeated: {duplicated[0]}")
            return
        params = {k: v[0] for k, v in form.items()}
        basic = self._basic_credentials()
        if basic is False:
            self._invalid_client(AAD_NO_SECRET, "Malformed HTTP Basic client credentials.", basic=True)
            return
        if isinstance(basic, tuple) and ("client_secret" in params or params.get("client_id", basic[0]) != basic[0]):
            self._oauth_error(400, "invalid_request", "use one client authentication method, not Basic and the body")
            return
        grant = params.get("grant_type")
        if not grant:
            self._oauth_error(400, "invalid_request", "grant_type is required")
            return
        if grant != "client_credentials":
            self._oauth_error(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported; "
                                                             "use client_credentials")
            return
        client_id, client_secret = basic if isinstance(basic, tuple) else (
            params.get("client_id"), params.get("client_secret"))
        failure = self.server.api.check_client(client_id, client_secret)
        if failure is not None:
            self._invalid_client(*failure, basic=isinstance(basic, tuple))
            return
        api = self.server.api
        self._json(200, {"access_token": api.issue_token(), "token_type": "Bearer", "expires_in": api.expires_in},
                   {"Cache-Control": "no-store", "Pragma": "no-cache"})


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.demo [--port 8787]`: serve the demo API on 127.0.0.1 until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m worker.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    parser.add_argument("--expires-in", type=int, default=DEFAULT_EXPIRES_IN, help="token lifetime in seconds")
    args = parser.parse_args(argv)
    api = DemoAPI(expires_in=args.expires_in)
    try:
        _, base_url = api.start(port=args.port)
    except OSError as exc:
        print(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}; try --port 0")
        return 1
    print(f"signfeed demo API on {base_url}  (token: POST {TOKEN_PATH}, client_id={CLIENT_ID})")
    for path in [*FIXTURE_ROUTES, NEWS_PATH]:
        print(f"  GET {base_url}{path}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        api.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
