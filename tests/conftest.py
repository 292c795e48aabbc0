"""Shared fixtures: a programmable API on 127.0.0.1, a project folder on disk, real production parts."""

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from worker import config as config_mod
from worker import fetch
from worker.auth import TokenManager
from worker.config import Config
from worker.pipeline import Deps
from worker.render import Renderer
from worker.script import ScriptRunner
from worker.store import Store

FIXTURES = Path(__file__).parent / "fixtures"
SEED_SCRIPT = (Path(__file__).parent.parent / "jobs" / "oauth_token.js").read_text()
# The seed script concatenates the form body unencoded, so its secret must have no reserved characters.
CLIENT_ID, CLIENT_SECRET = "client-1", "s3cret-Value_9"
NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


@dataclass
class Seen:
    """One request as the local API received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Reply = tuple[int, dict[str, str], Any]  # body: bytes, or an iterator of byte chunks


@dataclass
class Api:
    """A tiny HTTP API: tests set a reply (or a function) per path and read what arrived."""

    url: str = ""
    routes: dict[str, Reply | Callable[[Seen], Reply]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    tokens_issued: int = 0

    def json(self, path: str, doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc).encode()
        self.routes[path] = (status, {"Content-Type": "application/json", **(headers or {})}, body)

    def raw(self, path: str, body: bytes, status: int = 200, content_type: str = "text/html") -> None:
        self.routes[path] = (status, {"Content-Type": content_type}, body)

    def echo_header(self, path: str, header: str) -> None:
        """Answer {"got": <the request's value of header>}, as APIs that echo what they were sent do."""
        self.routes[path] = lambda seen: (200, {"Content-Type": "application/json"},
                                          json.dumps({"got": seen.headers.get(header)}).encode())

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def token_endpoint(self, seen: Seen) -> Reply:
        """Client-credentials token endpoint: the seed script's form body with the right id and secret."""
        from urllib.parse import parse_qs

        form = {k: v[0] for k, v in parse_qs(seen.body.decode()).items()}
        if form != {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}:
            error = (FIXTURES / "azure-ad-error-invalid-client.json").read_bytes()
            return 401, {"Content-Type": "application/json"}, error
        self.tokens_issued += 1
        doc = {"token_type": "Bearer", "expires_in": 3599, "access_token": f"tok-{self.tokens_issued}-abcdef"}
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()


def _handler(api: Api) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes; Nagle would hold the second 40 ms

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                        self.rfile.read(length))
            api.seen.append(seen)
            route = api.routes.get(self.path.split("?")[0], (404, {"Content-Type": "text/plain"}, b"no route"))
            status, headers, body = route(seen) if callable(route) else route
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if isinstance(body, bytes):
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            # An iterator of chunks: a slow server, written piece by piece.
            self.send_header("Connection", "close")
            self.end_headers()
            for chunk in body:
                self.wfile.write(chunk)
                self.wfile.flush()

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a killed daemon, a deadline) is expected here, not worth a traceback."""


@pytest.fixture
def api() -> Iterator[Api]:
    state = Api()
    server = _QuietServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    # A short poll interval: shutdown() waits up to one interval, paid by every test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    state.routes["/token"] = state.token_endpoint
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Project:
    """A signfeed project folder in tmp_path: config.toml, jobs/, templates/."""

    root: Path

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def config(self, toml: str, environ: dict[str, str] | None = None) -> Config:
        self.write("config.toml", toml)
        return config_mod.load(self.root / "config.toml", environ=environ or {})

    def feed(self, name: str) -> Path:
        return self.root / "feeds" / name


@pytest.fixture
def project(tmp_path: Path) -> Project:
    proj = Project(tmp_path)
    proj.write("jobs/oauth_token.js", SEED_SCRIPT)
    proj.write("templates/board.html.j2",
               "<h1>{{ menu.data.title }}</h1>{% for i in menu.data['items'] %}<p>{{ i.name }}</p>{% endfor %}"
               "<small>{{ menu.fetched_at | local_time('%H:%M') }} {{ 'stale' if menu.stale }}</small>\n")
    return proj


def seed_config(api: Api, extra: str = "") -> str:
    """A config with one source `menu` behind the seed script and one HTML feed."""
    return f"""
[secrets]
CLIENT_ID = {{ value = "{CLIENT_ID}" }}
CLIENT_SECRET = {{ value = "{CLIENT_SECRET}" }}
OAUTH_AUTHENTICATION_URL = "{api.url}/token"

[[sources]]
name = "menu"
url = "{api.url}/menu"
every = "5m"
headers = {{ Accept = "application/json" }}
params = {{ store = "12" }}
pre_request = "oauth_token.js"
{extra}

[[feeds]]
output = "board.html"
template = "board.html.j2"
sources = ["menu"]
"""


@pytest.fixture(scope="session")
def scripts() -> Iterator[ScriptRunner]:
    with ScriptRunner(size=2) as runner:
        yield runner


class FixedClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime = NOW) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def make_deps(scripts: ScriptRunner, clock: FixedClock) -> Iterator[Callable[[Config], Deps]]:
    opened: list[Deps] = []

    def make(config: Config) -> Deps:
        store, client = Store(config.worker.database), fetch.new_client()
        deps = Deps(store=store, client=client, scripts=scripts, tokens=TokenManager(store, client, clock),
                    renderer=Renderer(config.worker.templates_dir, config.worker.timezone), clock=clock)
        opened.append(deps)
        return deps

    yield make
    for deps in opened:
        deps.client.close()
        deps.store.close()
