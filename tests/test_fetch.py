"""Building requests, reading responses under a cap, decoding JSON, selecting data (httpx.MockTransport)."""

import json
import time

import httpx
import pytest

from worker import fetch
from worker.config import Source
from worker.errors import FetchError
from worker.secrets import Secrets


def client_for(handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def response(status: int = 200, body: bytes = b"{}", content_type: str = "application/json") -> fetch.Response:
    return fetch.Response(status, {"content-type": content_type}, body, "http://api.test/x", 1.0)


def test_initial_request_substitutes_placeholders_everywhere() -> None:
    source = Source(name="menu", url="<BASE>/menu", headers={"X-Key": "<KEY>"}, params={"k": "<KEY>"}, body="id=<KEY>")
    request = fetch.initial_request(source, Secrets({"BASE": "http://api.test", "KEY": "k1"}, frozenset({"KEY"})))
    assert request == {"method": "GET", "url": "http://api.test/menu", "headers": {"X-Key": "k1"},
                       "params": {"k": "k1"}, "body": "id=k1"}


def test_script_header_replaces_config_header_whatever_the_case() -> None:
    built = fetch.build({"method": "GET", "url": "http://api.test/", "params": {},
                         "headers": {"Authorization": "Basic old", "authorization": "Bearer new"}, "body": None})
    assert built.headers.get_list("authorization") == ["Bearer new"]


def test_body_over_max_bytes_fails_without_reading_it_all() -> None:
    chunks_sent = []

    def stream():
        for i in range(100):
            chunks_sent.append(i)
            yield b"x" * 1000

    client = client_for(lambda request: httpx.Response(200, content=stream()))
    with pytest.raises(FetchError, match="over the 5,000-byte limit"):
        fetch.send(client, httpx.Request("GET", "http://api.test/"), deadline=time.monotonic() + 5, max_bytes=5000)
    assert len(chunks_sent) < 10


def test_declared_length_over_cap_fails_before_reading() -> None:
    client = client_for(lambda request: httpx.Response(200, content=b"x" * 20, headers={"content-length": "20"}))
    with pytest.raises(FetchError, match="response is 20 bytes, over the 10-byte limit"):
        fetch.send(client, httpx.Request("GET", "http://api.test/"), deadline=time.monotonic() + 5, max_bytes=10)


def test_connection_refused_is_one_line_naming_the_origin() -> None:
    with httpx.Client() as client, pytest.raises(FetchError) as info:
        fetch.send(client, httpx.Request("GET", "http://127.0.0.1:9/x"), deadline=time.monotonic() + 5, max_bytes=100)
    assert str(info.value).startswith("cannot connect to http://127.0.0.1:9: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("status", "body", "ctype", "message"), [
    (500, b"Internal error", "text/plain", "HTTP 500 from http://api.test/x: Internal error"),
    (200, b"<html><body>Login</body></html>", "text/html",
     "response is not JSON (text/html; Expecting value at line 1)"),
    (200, b"", "application/json", "HTTP 200 with an empty body"),
    (302, b"", "text/html", "HTTP 302 from"),
])
def test_non_json_or_non_2xx_fails_with_what_came(status: int, body: bytes, ctype: str, message: str) -> None:
    with pytest.raises(FetchError) as info:
        fetch.decode_json(response(status, body, ctype))
    assert message in str(info.value)


def test_json_with_byte_order_mark_decodes() -> None:
    assert fetch.decode_json(response(body="\ufeff{\"a\": 1}".encode())) == {"a": 1}


def test_select_walks_dicts_and_list_indexes() -> None:
    doc = {"data": {"rows": [{"n": 1}, {"n": 2}]}}
    assert fetch.select(doc, "data.rows.1.n") == 2
    assert fetch.select(doc, None) is doc


def test_select_missing_key_names_what_is_there() -> None:
    with pytest.raises(FetchError, match=r"select 'data.items': no 'items' under data \(found: rows\)"):
        fetch.select({"data": {"rows": []}}, "data.items")


def test_host_http_returns_status_lowercase_headers_and_text() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"ok": True}, headers={"X-Thing": "1"})

    args = {"method": "post", "url": "http://api.test/t", "body": "a=1", "headers": {"Content-Type": "text/plain"}}
    answer = fetch.host_http(client_for(handler), args, deadline=time.monotonic() + 5, max_bytes=100)
    assert (answer["status"], answer["headers"]["x-thing"], json.loads(answer["text"])) == (201, "1", {"ok": True})
    assert (seen[0].method, seen[0].content) == ("POST", b"a=1")


def follow_redirect(url: str, headers: dict[str, str], location: str) -> list[httpx.Request]:
    """Send to url, which redirects once to location; return every request as the servers saw it."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(302, headers={"Location": location})
        return httpx.Response(200, json={})

    built = fetch.build({"method": "GET", "url": url, "headers": headers, "params": {}, "body": None})
    fetch.send(client_for(handler), built, deadline=time.monotonic() + 5, max_bytes=100)
    return seen


def test_credentials_are_not_sent_to_another_origin_on_redirect() -> None:
    seen = follow_redirect("http://api.test/", {"Authorization": "Bearer t", "X-API-Key": "k", "Cookie": "c=1",
                                                "Accept": "application/json"}, "http://elsewhere.test/data")
    assert [sorted(k for k in r.headers if k in ("authorization", "x-api-key", "cookie", "accept")) for r in seen] == [
        ["accept", "authorization", "cookie", "x-api-key"], ["accept"]]


def test_same_origin_redirect_keeps_credentials() -> None:
    seen = follow_redirect("http://api.test/old", {"X-API-Key": "k"}, "/new")
    assert [(r.url.path, r.headers.get("x-api-key")) for r in seen] == [("/old", "k"), ("/new", "k")]


def test_redirect_loop_fails_with_one_line() -> None:
    client = client_for(lambda request: httpx.Response(302, headers={"Location": "/again"}))
    with pytest.raises(FetchError, match=r"^more than 5 redirects from http://api.test/$"):
        fetch.send(client, httpx.Request("GET", "http://api.test/x"), deadline=time.monotonic() + 5, max_bytes=100)


@pytest.mark.parametrize("url", ["not a url", "ftp://api.test/x", "http://", 123])
def test_unsendable_url_says_what_a_url_must_look_like(url) -> None:
    with pytest.raises(FetchError, match=r"^invalid URL .*: write http:// or https:// followed by a host$"):
        fetch.build({"method": "GET", "url": url, "headers": {}, "params": {}, "body": None})


def test_non_ascii_header_value_is_one_line_that_does_not_show_the_value() -> None:
    with pytest.raises(FetchError) as info:
        fetch.build({"method": "GET", "url": "http://127.0.0.1:1/x", "headers": {"X-Name": "café"}, "params": {}})
    assert str(info.value) == ("header 'X-Name' is not ASCII, which HTTP headers must be: percent-encode the value "
                               "(encodeURIComponent in a script)")
