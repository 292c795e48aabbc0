"""OAuth2 client credentials: a counting token endpoint on 127.0.0.1, the cache in a SQLite file, a hand-moved clock."""

import base64
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, NOW, Api, FixedClock, Reply, Seen

from worker import fetch
from worker.auth import (
    AuthBlock,
    Token,
    TokenManager,
    basic_credentials,
    parse_token_response,
    token_rejected,
)
from worker.errors import FetchError

TOKEN_PATH = "/tenant/oauth2/v2.0/token"
SECRET = "s3cret-Value_9"
# In a subfolder: the top level of fixtures/ must mirror worker/demo_data (test_demo_api checks it).
AZURE_TOKEN = (FIXTURES / "auth" / "azure-ad-v2-client-credentials-token.json").read_bytes()
LOWERCASE_BEARER = (FIXTURES / "auth" / "oauth-token-lowercase-bearer.json").read_bytes()
AZURE_INVALID_CLIENT = (FIXTURES / "azure-ad-error-invalid-client.json").read_bytes()
JSON = {"Content-Type": "application/json"}


@dataclass
class TokenEndpoint:
    """Issues tok-1, tok-2, ... (or a set reply) and records the simulated time of every request."""

    clock: FixedClock
    reply: Reply | None = None
    hold: Callable[[], Any] | None = None  # runs before answering: lets a test keep a request in flight
    requested_at: list[datetime] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def __call__(self, seen: Seen) -> Reply:
        self.requested_at.append(self.clock.now)
        self.seen.append(seen)
        if self.hold is not None:
            self.hold()
        if self.reply is not None:
            return self.reply
        doc = {"access_token": f"tok-{len(self.requested_at)}", "token_type": "Bearer", "expires_in": 3600}
        return 200, JSON, json.dumps(doc).encode()

    @property
    def count(self) -> int:
        return len(self.requested_at)


@pytest.fixture
def endpoint(api: Api, clock: FixedClock) -> TokenEndpoint:
    token_endpoint = TokenEndpoint(clock)
    api.routes[TOKEN_PATH] = token_endpoint
    return token_endpoint


@pytest.fixture
def block(api: Api) -> AuthBlock:
    return AuthBlock(name="graph", token_url=f"{api.url}{TOKEN_PATH}", client_id="client-1", client_secret=SECRET,
                     scope="https://graph.example.test/.default")


@pytest.fixture
def start(tmp_path: Path, clock: FixedClock) -> Iterator[Callable[..., TokenManager]]:
    """Start a worker's TokenManager on the same database file; each call is a (re)start."""
    from worker.store import Store

    opened: list[Any] = []

    def make(use_clock: Callable[[], datetime] = clock) -> TokenManager:
        store, client = Store(f"sqlite:///{tmp_path / 'signfeed.db'}"), fetch.new_client()
        opened.extend([client, store])
        return TokenManager(store, client, use_clock)

    yield make
    for thing in opened:
        thing.close()


@pytest.fixture
def manager(start: Callable[..., TokenManager]) -> TokenManager:
    return start()


def soon() -> float:
    return time.monotonic() + 5


def minutes(moments: list[datetime]) -> list[float]:
    return [(m - NOW).total_seconds() / 60 for m in moments]


# --- one token per block ---------------------------------------------------------------------------------------


def test_ten_sources_over_two_hours_request_tokens_only_at_0_48_and_96_minutes(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock, clock: FixedClock) -> None:
    values = []
    for tick in range(24):  # every 5 minutes for 2 hours; source i pulls i*30 s into each tick
        for source in range(10):
            clock.now = NOW + timedelta(minutes=5 * tick, seconds=30 * source)
            values.append(manager.token(block, deadline=soon()).value)
    assert minutes(endpoint.requested_at) == [0.0, 48.0, 96.0]
    assert (values.count("tok-1"), values.count("tok-2"), values.count("tok-3")) == (96, 96, 48)


def test_expiry_and_refresh_time_follow_expires_in(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock) -> None:
    token = manager.token(block, deadline=soon())
    assert token == Token("tok-1", NOW + timedelta(seconds=3600), NOW + timedelta(seconds=2880), from_cache=False)
    assert manager.token(block, deadline=soon()) == replace(token, from_cache=True)


class ThreadCountingClock(FixedClock):
    """A fixed clock that notes which threads have entered token() (its first act is reading the clock)."""

    def __init__(self, threads: int) -> None:
        super().__init__()
        self.all_in = threading.Event()
        self._threads, self._callers, self._lock = threads, set[int](), threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._callers.add(threading.get_ident())
            if len(self._callers) >= self._threads:
                self.all_in.set()
        return self.now


def test_concurrent_first_calls_make_one_token_request_and_all_get_its_token(
        start: Callable[..., TokenManager], endpoint: TokenEndpoint, block: AuthBlock) -> None:
    counting = ThreadCountingClock(threads=10)
    manager = start(counting)
    # The endpoint answers only once all ten threads are inside token(): every one of them found no token.
    endpoint.hold = lambda: counting.all_in.wait(5)
    barrier = threading.Barrier(10)
    results: list[Token] = []

    def source() -> None:
        barrier.wait(5)
        results.append(manager.token(block, deadline=soon()))

    threads = [threading.Thread(target=source) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert counting.all_in.is_set()
    assert endpoint.count == 1
    assert sorted((t.value, t.from_cache) for t in results) == [("tok-1", False)] + [("tok-1", True)] * 9


def test_blocks_with_different_names_get_their_own_tokens(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock) -> None:
    other = replace(block, name="sheets")
    assert [manager.token(b, deadline=soon()).value for b in (block, other, block, other)] == \
           ["tok-1", "tok-2", "tok-1", "tok-2"]


# --- invalidation ----------------------------------------------------------------------------------------------


def test_invalidating_the_current_token_makes_the_next_call_fetch_a_new_one(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock) -> None:
    manager.token(block, deadline=soon())
    manager.invalidate(block, "tok-1")
    token = manager.token(block, deadline=soon())
    assert (token.value, token.from_cache, endpoint.count) == ("tok-2", False, 2)


def test_invalidating_an_old_token_keeps_the_current_one(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock) -> None:
    manager.token(block, deadline=soon())
    manager.invalidate(block, "tok-1")
    manager.token(block, deadline=soon())
    manager.invalidate(block, "tok-1")  # a source that sent tok-1 before the refresh reports its 401 late
    token = manager.token(block, deadline=soon())
    assert (token.value, token.from_cache, endpoint.count) == ("tok-2", True, 2)


def test_ten_sources_rejected_at_once_cause_one_refresh(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock, caplog: pytest.LogCaptureFixture) -> None:
    failed = manager.token(block, deadline=soon()).value
    with caplog.at_level(logging.INFO, logger="worker.auth"):
        for _ in range(10):
            manager.invalidate(block, failed)
            manager.token(block, deadline=soon())
    assert endpoint.count == 2
    assert caplog.messages == ["auth graph: token rejected; the next request gets a new one",
                               "auth graph: new token, expires 13:00:00 UTC"]


def test_invalidated_token_is_gone_from_the_database_too(
        start: Callable[..., TokenManager], endpoint: TokenEndpoint, block: AuthBlock) -> None:
    first = start()
    first.token(block, deadline=soon())
    first.invalidate(block, "tok-1")
    assert start().token(block, deadline=soon()).value == "tok-2"


def test_late_invalidation_of_an_old_token_leaves_the_newer_one_in_the_database(
        start: Callable[..., TokenManager], endpoint: TokenEndpoint, block: AuthBlock) -> None:
    first = start()
    first.token(block, deadline=soon())
    first.invalidate(block, "tok-1")
    first.token(block, deadline=soon())
    first.invalidate(block, "tok-1")
    assert (start().token(block, deadline=soon()).value, endpoint.count) == ("tok-2", 2)


@pytest.mark.parametrize(("status", "body", "rejected"), [
    (401, b"", True),
    (200, b'{"status": "error", "message": "token expired"}', True),
    (200, b'{"items": []}', False),
    (500, b"token expired", False),  # a server error is not a verdict on the token
])
def test_token_rejected_by_401_or_by_expired_when_in_a_2xx_body(
        block: AuthBlock, status: int, body: bytes, rejected: bool) -> None:
    assert token_rejected(replace(block, expired_when="token expired"), status, body) is rejected


def test_token_rejected_ignores_2xx_bodies_when_expired_when_is_not_set(block: AuthBlock) -> None:
    assert token_rejected(block, 200, b"token expired") is False


# --- the token request -----------------------------------------------------------------------------------------


def test_basic_credentials_form_urlencode_id_and_secret_before_base64() -> None:
    value = basic_credentials("id:with+chars", "s:e+c/r=e t")
    assert value == "Basic aWQlM0F3aXRoJTJCY2hhcnM6cyUzQWUlMkJjJTJGciUzRGUrdA=="
    assert base64.b64decode(value.removeprefix("Basic ")) == b"id%3Awith%2Bchars:s%3Ae%2Bc%2Fr%3De+t"


def test_basic_client_auth_sends_the_header_and_no_credentials_in_the_body(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock) -> None:
    basic = replace(block, client_id="id:with+chars", client_secret="s:e+c/r=e t", client_auth="basic")
    manager.token(basic, deadline=soon())
    seen = endpoint.seen[0]
    assert seen.headers["authorization"] == "Basic aWQlM0F3aXRoJTJCY2hhcnM6cyUzQWUlMkJjJTJGciUzRGUrdA=="
    assert seen.body == b"grant_type=client_credentials&scope=https%3A%2F%2Fgraph.example.test%2F.default"


def test_body_client_auth_sends_the_exact_form_with_scope_and_extra(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock) -> None:
    body_auth = replace(block, client_secret="s:e+c/r=e t", extra={"audience": "api://signage board"})
    manager.token(body_auth, deadline=soon())
    seen = endpoint.seen[0]
    assert (seen.method, seen.path) == ("POST", TOKEN_PATH)
    assert seen.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in seen.headers
    assert seen.body == (b"grant_type=client_credentials&client_id=client-1&client_secret=s%3Ae%2Bc%2Fr%3De+t"
                         b"&scope=https%3A%2F%2Fgraph.example.test%2F.default&audience=api%3A%2F%2Fsignage+board")


def test_header_for_puts_the_prefix_a_space_and_the_token(manager: TokenManager, block: AuthBlock) -> None:
    token = Token("abc", NOW, NOW, from_cache=True)
    assert manager.header_for(block, token) == ("Authorization", "Bearer abc")
    assert manager.header_for(replace(block, header="X-Api-Token", prefix=""), token) == ("X-Api-Token", "abc")


# --- token responses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "body", "value", "lifetime"), [
    ("application/json; charset=utf-8", AZURE_TOKEN, "test-token-1", 3599),
    ("application/json", LOWERCASE_BEARER, "test-access-token-12345", 41621),
    ("application/json", b"\xef\xbb\xbf" + AZURE_TOKEN, "test-token-1", 3599),
    ("text/plain", AZURE_TOKEN, "test-token-1", 3599),
    ("application/x-www-form-urlencoded",
     b"access_token=gho_16C7e42F292c6912E7710c838347Ae178B4a&expires_in=28800&scope=repo%2Cgist&token_type=bearer",
     "gho_16C7e42F292c6912E7710c838347Ae178B4a", 28800),
    ("application/json", b'{"access_token": "t", "token_type": "bearer", "expires_in": "3600"}', "t", 3600),
    ("application/json", b'{"access_token": "t", "token_type": "Bearer"}', "t", 900),
    ("application/json", b'{"access_token": "t", "expires_in": "soon"}', "t", 900),
    ("application/json", b'{"access_token": "t", "expires_in": -5}', "t", 900),
], ids=["azure-v2", "lowercase-bearer", "bom", "text-plain", "form", "string-expires-in", "no-expires-in",
        "garbage-expires-in", "negative-expires-in"])
def test_token_responses_give_the_token_and_its_lifetime(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock,
        content_type: str, body: bytes, value: str, lifetime: int) -> None:
    endpoint.reply = (200, {"Content-Type": content_type}, body)
    token = manager.token(replace(block, default_lifetime=900), deadline=soon())
    assert (token.value, token.expires_at) == (value, NOW + timedelta(seconds=lifetime))


def test_azure_invalid_client_error_names_the_code_and_the_first_line_of_its_description(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock) -> None:
    endpoint.reply = (401, JSON, AZURE_INVALID_CLIENT)
    with pytest.raises(FetchError) as info:
        manager.token(block, deadline=soon())
    assert str(info.value) == ("auth graph: token request failed: HTTP 401 invalid_client: "
                               "AADSTS7000215: Invalid client secret is provided.")


def test_error_in_a_200_form_body_is_an_error(block: AuthBlock) -> None:
    body = b"error=incorrect_client_credentials&error_description=The+client_id+and%2For+client_secret+are+wrong."
    with pytest.raises(FetchError) as info:
        parse_token_response(200, {}, body, block, NOW)
    assert str(info.value) == ("auth graph: token request failed: HTTP 200 incorrect_client_credentials: "
                               "The client_id and/or client_secret are wrong.")


def test_error_page_is_shown_as_a_one_line_preview_without_the_secret(block: AuthBlock) -> None:
    body = f"<html>\n<p>bad request: client_secret={SECRET}</p>\n</html>".encode()
    with pytest.raises(FetchError) as info:
        parse_token_response(500, {"Content-Type": "text/html"}, body, block, NOW)
    assert str(info.value) == "auth graph: token request failed: HTTP 500: <html> <p>bad request: " \
                              "client_secret=[redacted]</p> </html>"


def test_empty_error_response_says_so(block: AuthBlock) -> None:
    with pytest.raises(FetchError) as info:
        parse_token_response(502, {}, b"", block, NOW)
    assert str(info.value) == "auth graph: token request failed: HTTP 502: (empty body)"


@pytest.mark.parametrize(("body", "found"), [
    (b'{"token_type": "Bearer", "expires_in": 3599}', "expires_in, token_type"),
    (b'{"access_token": "", "token_type": "Bearer"}', "access_token, token_type"),
    (b"<html>maintenance</html>", "a body that is neither JSON nor form data"),
])
def test_success_without_an_access_token_is_an_error(block: AuthBlock, body: bytes, found: str) -> None:
    with pytest.raises(FetchError) as info:
        parse_token_response(200, {}, body, block, NOW)
    assert str(info.value) == f"auth graph: token response has no access_token (found: {found})"


def test_unreachable_token_endpoint_is_a_transient_error_naming_the_block(
        manager: TokenManager, block: AuthBlock) -> None:
    with pytest.raises(fetch.Transient) as info:
        manager.token(replace(block, token_url="http://127.0.0.1:9/token"), deadline=soon())
    assert str(info.value).startswith("auth graph: token request failed: cannot connect to http://127.0.0.1:9: ")


# --- rate limits -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limited_token_endpoint_pauses_every_source_of_the_block(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock, clock: FixedClock, status: int) -> None:
    endpoint.reply = (status, {"Retry-After": "120", **JSON}, b'{"error": "temporarily_unavailable"}')
    with pytest.raises(fetch.RateLimited) as first:
        manager.token(block, deadline=soon())
    assert (str(first.value), first.value.seconds) == (
        f"auth graph: token endpoint rate-limited (HTTP {status}); retry in 120 s", 120.0)
    clock.advance(30)
    with pytest.raises(fetch.RateLimited) as second:  # another source of the same block: no request
        manager.token(block, deadline=soon())
    assert (str(second.value), second.value.seconds) == (
        "auth graph: token endpoint rate-limited until 12:02:00 UTC", 90.0)
    clock.advance(90)
    endpoint.reply = None
    assert (manager.token(block, deadline=soon()).value, endpoint.count) == ("tok-2", 2)


# --- refresh failures ------------------------------------------------------------------------------------------


def test_failed_refresh_keeps_the_current_token_until_it_expires(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock, clock: FixedClock,
        caplog: pytest.LogCaptureFixture) -> None:
    manager.token(block, deadline=soon())
    endpoint.reply = (500, {"Content-Type": "text/plain"}, b"upstream down")
    clock.advance(50 * 60)
    with caplog.at_level(logging.WARNING, logger="worker.auth"):
        token = manager.token(block, deadline=soon())
    assert (token.value, token.from_cache) == ("tok-1", True)
    assert caplog.messages == ["auth graph: token request failed: HTTP 500: upstream down; "
                               "using the current token until it expires at 13:00:00 UTC"]
    clock.advance(10 * 60)
    with pytest.raises(FetchError, match=r"^auth graph: token request failed: HTTP 500: upstream down$"):
        manager.token(block, deadline=soon())


# --- the SQLite cache ------------------------------------------------------------------------------------------


def test_restart_with_a_valid_cached_token_makes_no_token_request(
        start: Callable[..., TokenManager], endpoint: TokenEndpoint, block: AuthBlock, clock: FixedClock) -> None:
    issued = start().token(block, deadline=soon())
    clock.advance(40 * 60)
    restarted = start().token(block, deadline=soon())
    assert restarted == replace(issued, from_cache=True)
    assert endpoint.count == 1


def test_restart_after_the_refresh_time_requests_one_new_token(
        start: Callable[..., TokenManager], endpoint: TokenEndpoint, block: AuthBlock, clock: FixedClock) -> None:
    start().token(block, deadline=soon())
    clock.advance(48 * 60)
    manager = start()
    assert [manager.token(block, deadline=soon()).value for _ in range(3)] == ["tok-2"] * 3
    assert endpoint.count == 2


def test_restart_with_an_edited_block_requests_one_new_token(
        start: Callable[..., TokenManager], endpoint: TokenEndpoint, block: AuthBlock) -> None:
    start().token(block, deadline=soon())
    edited = replace(block, scope="https://sheets.example.test/.default")
    manager = start()
    assert [manager.token(edited, deadline=soon()).value for _ in range(3)] == ["tok-2"] * 3
    assert (start().token(edited, deadline=soon()).value, endpoint.count) == ("tok-2", 2)


def test_cache_row_is_keyed_by_block_name_and_a_fingerprint_not_the_secret(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock, tmp_path: Path) -> None:
    manager.token(block, deadline=soon())
    with sqlite3.connect(tmp_path / "signfeed.db") as conn:
        rows = conn.execute("SELECT name, length(fingerprint), value, expires_at, refresh_at "
                            "FROM auth_tokens").fetchall()
    assert rows == [("graph", 64, "tok-1", "2026-12-03T13:00:00.000000+00:00", "2026-12-03T12:48:00.000000+00:00")]


def drop_cache_table(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "signfeed.db") as conn:
        conn.execute("DROP TABLE auth_tokens")


def test_valid_token_in_memory_is_served_without_touching_the_database(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    manager.token(block, deadline=soon())
    drop_cache_table(tmp_path)  # any read or write from here on would log a warning
    with caplog.at_level(logging.DEBUG, logger="worker.auth"):
        assert [manager.token(block, deadline=soon()).value for _ in range(3)] == ["tok-1"] * 3
    assert caplog.messages == []


def test_cache_write_failure_keeps_the_token_in_memory_and_out_of_the_log(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    drop_cache_table(tmp_path)
    with caplog.at_level(logging.DEBUG):
        values = [manager.token(block, deadline=soon()).value for _ in range(2)]
    assert (values, endpoint.count) == (["tok-1", "tok-1"], 1)
    assert "auth token cache: cannot store the new token: no such table: auth_tokens" in caplog.messages
    assert "tok-1" not in caplog.text


# --- secrecy ---------------------------------------------------------------------------------------------------


def test_secret_and_tokens_never_reach_the_log_or_errors(
        manager: TokenManager, endpoint: TokenEndpoint, block: AuthBlock, clock: FixedClock,
        caplog: pytest.LogCaptureFixture) -> None:
    basic = replace(block, client_auth="basic")
    errors = []
    with caplog.at_level(logging.DEBUG):  # every logger, httpx's included
        manager.token(basic, deadline=soon())
        manager.invalidate(basic, "tok-1")
        manager.token(basic, deadline=soon())
        clock.advance(3600)
        endpoint.reply = (401, JSON, json.dumps({"error": "invalid_client", "error_description": SECRET}).encode())
        with pytest.raises(FetchError) as info:
            manager.token(basic, deadline=soon())
        errors.append(str(info.value))
    assert "auth graph: new token, expires 13:00:00 UTC" in caplog.messages
    shown = caplog.text + "\n".join(errors)
    for secret in (SECRET, "tok-1", "tok-2", basic_credentials("client-1", SECRET).removeprefix("Basic ")):
        assert secret not in shown
    assert errors == ["auth graph: token request failed: HTTP 401 invalid_client: [redacted]"]


def test_repr_of_a_token_or_block_shows_neither_token_nor_secret(block: AuthBlock) -> None:
    token = Token("tok-secret-value", NOW, NOW, from_cache=False)
    assert "tok-secret-value" not in repr(token)
    assert SECRET not in repr(block)
