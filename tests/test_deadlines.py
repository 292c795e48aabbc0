"""Deadlines, retries and rate limits: hung and dripping servers, 502/503/504, Retry-After pauses."""

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from email.utils import format_datetime

import pytest
from conftest import NOW, Api, Project, seed_config

from worker import fetch
from worker.pipeline import run_source

MENU = {"items": [1]}


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def no_script(api: Api, extra: str = "") -> str:
    """A config whose menu source has no pre-request script, so only the data request reaches the API."""
    return seed_config(api, extra).replace('pre_request = "oauth_token.js"\n', "")


def test_hung_server_fails_within_the_deadline_naming_the_read_phase(api: Api, project: Project, make_deps,
                                                                    release: threading.Event) -> None:
    api.routes["/menu"] = lambda seen: (release.wait(30), (200, {}, b"{}"))[1]
    config = project.config(no_script(api, "timeout = 1\nretries = 0"))
    started = time.monotonic()
    result = run_source(config.source("menu"), config, make_deps(config))
    assert result.error == f"menu: read from {api.url} timed out after 1s (no data)"
    assert time.monotonic() - started < 3


def test_dripping_server_is_cut_off_by_the_total_deadline(api: Api, project: Project, make_deps,
                                                          release: threading.Event) -> None:
    def drip() -> Iterator[bytes]:
        yield b'{"items": ['
        while not release.wait(0.2):  # a byte every 0.2 s: never idle long enough for a read timeout
            yield b" "

    api.routes["/menu"] = lambda seen: (200, {"Content-Type": "application/json"}, drip())
    config = project.config(no_script(api, "timeout = 1\nretries = 0"))
    started = time.monotonic()
    result = run_source(config.source("menu"), config, make_deps(config))
    assert result.error.startswith(f"menu: total deadline passed while reading from {api.url} (")
    assert result.error.endswith(" bytes in; timeout)")
    assert time.monotonic() - started < 3


def test_transient_statuses_are_retried_with_backoff_then_succeed(api: Api, project: Project, make_deps) -> None:
    replies = iter([(502, {}, b"bad gateway"), (504, {}, b"timeout"),
                    (200, {"Content-Type": "application/json"}, b'{"items": [1]}')])
    api.routes["/menu"] = lambda seen: next(replies)
    config = project.config(no_script(api))
    deps = make_deps(config)
    waits: list[float] = []
    deps.sleep = waits.append
    result = run_source(config.source("menu"), config, deps)
    assert (result.status, api.paths()) == ("ok", ["/menu?store=12"] * 3)
    assert len(waits) == 2 and 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 1.0


def test_retries_exhausted_reports_the_last_status(api: Api, project: Project, make_deps) -> None:
    api.raw("/menu", b"Service Unavailable", status=503)
    config = project.config(no_script(api, "retries = 1"))
    deps = make_deps(config)
    deps.sleep = lambda s: None
    result = run_source(config.source("menu"), config, deps)
    assert result.error == f"menu: HTTP 503 from {api.url}/menu?store=12: Service Unavailable"
    assert len(api.seen) == 2


def test_connection_refused_is_retried(project: Project, make_deps) -> None:
    config = project.config(no_script(Api(url="http://127.0.0.1:9"), "retries = 2"))
    deps = make_deps(config)
    waits: list[float] = []
    deps.sleep = waits.append
    result = run_source(config.source("menu"), config, deps)
    assert result.error.startswith("menu: cannot connect to http://127.0.0.1:9")
    assert len(waits) == 2


HTTP_DATE_5_MIN = format_datetime(NOW + timedelta(minutes=5), usegmt=True)


@pytest.mark.parametrize(("status", "retry_after", "pause"), [
    (429, "120", 120.0),
    (503, "120", 120.0),
    (429, HTTP_DATE_5_MIN, 300.0),
    (429, "soon-ish", 60.0),
    (429, None, 60.0),
    (429, "99999999", 3600.0),
    (429, "Fri, 31 Dec 1999 23:59:59 GMT", 0.0),
])
def test_retry_after_pauses_the_source_exactly_and_clamped(api: Api, project: Project, make_deps, clock,
                                                          status: int, retry_after: str | None, pause: float) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    api.routes["/menu"] = (status, headers, b"slow down")
    config = project.config(no_script(api))
    deps = make_deps(config)
    result = run_source(config.source("menu"), config, deps)
    until = NOW + timedelta(seconds=pause)
    assert deps.paused_until["menu"] == until
    assert result.error.startswith(f"menu: rate-limited until {until:%H:%M:%S} (HTTP {status} from")
    assert len(api.seen) == 1


def test_no_request_reaches_the_server_until_the_pause_ends(api: Api, project: Project, make_deps, clock) -> None:
    api.routes["/menu"] = (429, {"Retry-After": "120"}, b"")
    config = project.config(seed_config(api))
    deps = make_deps(config)
    run_source(config.source("menu"), config, deps)
    seen = len(api.seen)
    clock.advance(119)
    skipped = run_source(config.source("menu"), config, deps)
    assert (skipped.status, skipped.error) == ("skipped", "menu: rate-limited until 12:02:00")
    assert len(api.seen) == seen
    api.json("/menu", MENU)
    clock.advance(1)
    assert run_source(config.source("menu"), config, deps).status == "ok"


def test_token_endpoint_retry_after_pauses_the_source(api: Api, project: Project, make_deps, clock) -> None:
    api.routes["/token"] = (429, {"Retry-After": "30", "Content-Type": "application/json"}, b'{"error": "slow"}')
    api.json("/menu", MENU)
    config = project.config(seed_config(api))
    deps = make_deps(config)
    result = run_source(config.source("menu"), config, deps)
    assert result.error.startswith("menu: rate-limited until 12:00:30 (")
    assert deps.paused_until["menu"] == NOW + timedelta(seconds=30)
    assert api.paths() == ["/token"]


def test_503_with_retry_after_in_the_past_is_retried_not_paused(api: Api, project: Project, make_deps) -> None:
    replies = iter([(503, {"Retry-After": "0"}, b""), (200, {"Content-Type": "application/json"}, b"{}")])
    api.routes["/menu"] = lambda seen: next(replies)
    config = project.config(no_script(api))
    deps = make_deps(config)
    deps.sleep = lambda s: None
    assert run_source(config.source("menu"), config, deps).status == "ok"
    assert "menu" not in deps.paused_until


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("7", 7.0), ("", None), ("-5", None), ("1.5", None)])
def test_parse_retry_after_values(value: str, seconds: float | None) -> None:
    assert fetch.parse_retry_after(value, NOW) == seconds
