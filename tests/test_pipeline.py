"""run_source end to end: real local API, real SQLite file, real script helpers, real files on disk."""

import json
import logging
import os
import sqlite3
from pathlib import Path

import httpx
import pytest
from conftest import CLIENT_SECRET, Api, Project, seed_config

from worker.pipeline import run_source

MENU = {"title": "Lunch", "items": [{"name": "Soup"}, {"name": "Bread"}]}


@pytest.fixture
def setup(api: Api, project: Project, make_deps):
    api.json("/menu", MENU)
    config = project.config(seed_config(api))
    return config, make_deps(config)


def feed_json(project: Project) -> dict:
    return feed_json_of(project, "menu")


def feed_json_of(project: Project, source: str) -> dict:
    return json.loads(project.feed(f"{source}.json").read_text())


def db_rows(config, sql: str) -> list[tuple]:
    return sqlite3.connect(config.worker.database.removeprefix("sqlite:///")).execute(sql).fetchall()


def test_seed_script_token_reaches_request_and_feeds_are_written(api: Api, project: Project, setup) -> None:
    config, deps = setup
    result = run_source(config.source("menu"), config, deps)
    assert (result.status, result.error) == ("ok", None)
    token_call, data_call = api.seen
    assert (token_call.method, token_call.path) == ("POST", "/token")
    assert token_call.headers["content-type"] == "application/x-www-form-urlencoded"
    assert token_call.body.decode() == f"grant_type=client_credentials&client_id=client-1&client_secret={CLIENT_SECRET}"
    assert (data_call.path, data_call.headers["authorization"]) == ("/menu?store=12", "Bearer tok-1-abcdef")
    assert data_call.headers["accept"] == "application/json"
    assert feed_json(project)["data"] == MENU
    assert feed_json(project)["fetched_at"] == "2026-12-03T12:00:00+00:00"
    html = project.feed("board.html").read_text()
    assert "<h1>Lunch</h1><p>Soup</p><p>Bread</p>" in html
    assert db_rows(config, "select source, http_status, data from snapshots") == [
        ("menu", 200, json.dumps(MENU, sort_keys=True, separators=(",", ":")))]


def test_unchanged_response_records_run_but_leaves_feeds_untouched(project: Project, setup, clock) -> None:
    config, deps = setup
    run_source(config.source("menu"), config, deps)
    before = {p: os.stat(project.feed(p)).st_mtime_ns for p in ("menu.json", "board.html")}
    clock.advance(300)
    result = run_source(config.source("menu"), config, deps)
    assert result.status == "unchanged"
    assert {p: os.stat(project.feed(p)).st_mtime_ns for p in before} == before
    assert db_rows(config, "select count(*) from snapshots") == [(1,)]
    assert db_rows(config, "select status from runs order by id") == [("ok",), ("unchanged",)]


@pytest.mark.parametrize(("break_api", "error"), [
    (lambda api: api.raw("/menu", b"oops", status=500, content_type="text/plain"),
     "menu: HTTP 500 from http://127.0.0.1:{port}/menu?store=12: oops"),
    (lambda api: api.raw("/menu", b"<html>Maintenance</html>"),
     "menu: response is not JSON (text/html; Expecting value at line 1): <html>Maintenance</html>"),
    (lambda api: api.routes.update({"/menu": (200, {"Content-Type": "application/json"}, b'{"cut": ')}),
     "menu: response is not JSON (application/json; Expecting value at line 1): {\"cut\":"),
])
def test_failed_pull_keeps_last_good_feed_and_reports_error(api: Api, project: Project, setup, clock,
                                                            break_api, error: str) -> None:
    config, deps = setup
    run_source(config.source("menu"), config, deps)
    html_before = project.feed("board.html").read_bytes()
    break_api(api)
    clock.advance(300)
    result = run_source(config.source("menu"), config, deps)
    expected = error.replace("{port}", api.url.rsplit(":", 1)[1])
    assert (result.status, result.error) == ("failed", expected)
    assert project.feed("board.html").read_bytes() == html_before
    doc = feed_json(project)
    assert (doc["data"], doc["last_error"], doc["fetched_at"]) == (MENU, expected, "2026-12-03T12:00:00+00:00")
    assert db_rows(config, "select count(*) from snapshots") == [(1,)]


def test_connection_refused_fails_the_run_and_keeps_data(api: Api, project: Project, make_deps) -> None:
    api.json("/menu", MENU)
    config = project.config(seed_config(api))
    deps = make_deps(config)
    run_source(config.source("menu"), config, deps)
    moved = project.config(seed_config(api).replace(f'url = "{api.url}/menu"', 'url = "http://127.0.0.1:9/menu"'))
    result = run_source(moved.source("menu"), moved, deps)
    assert result.error.startswith("menu: cannot connect to http://127.0.0.1:9: ")
    assert feed_json(project)["data"] == MENU


def test_recovery_after_failure_clears_last_error_even_when_data_unchanged(api: Api, project: Project, setup,
                                                                          clock) -> None:
    config, deps = setup
    run_source(config.source("menu"), config, deps)
    api.raw("/menu", b"down", status=503)
    run_source(config.source("menu"), config, deps)
    assert feed_json(project)["last_error"] is not None
    api.json("/menu", MENU)
    assert run_source(config.source("menu"), config, deps).status == "unchanged"
    assert feed_json(project)["last_error"] is None


def test_api_data_is_escaped_in_html_and_exact_in_json(api: Api, project: Project, setup) -> None:
    config, deps = setup
    evil = {"title": "<script>alert(1)</script>", "items": [{"name": "\"&'<b>"}]}
    api.json("/menu", evil)
    run_source(config.source("menu"), config, deps)
    html = project.feed("board.html").read_text()
    assert "<h1>&lt;script&gt;alert(1)&lt;/script&gt;</h1><p>&#34;&amp;&#39;&lt;b&gt;</p>" in html
    assert "<script>" not in html
    assert feed_json(project)["data"] == evil


def test_select_keeps_only_the_named_part(api: Api, project: Project, make_deps) -> None:
    api.json("/menu", {"meta": {"page": 1}, "value": [1, 2]})
    config = project.config(seed_config(api, 'select = "value"'))
    run_source(config.source("menu"), config, make_deps(config))
    assert feed_json(project)["data"] == [1, 2]


def test_script_error_names_source_file_and_line(api: Api, project: Project, make_deps) -> None:
    project.write("jobs/broken.js", "const a = 1;\n\nnotAFunction();\n")
    config = project.config(seed_config(api).replace("oauth_token.js", "broken.js"))
    result = run_source(config.source("menu"), config, make_deps(config))
    assert result.error == "menu: ReferenceError: notAFunction is not defined (jobs/broken.js:3)"
    assert api.seen == []


def test_wrong_client_secret_fails_before_the_data_request(api: Api, project: Project, make_deps) -> None:
    api.json("/menu", MENU)
    config = project.config(seed_config(api).replace(CLIENT_SECRET, "wrong-secret"))
    result = run_source(config.source("menu"), config, make_deps(config))
    assert result.status == "failed"
    assert "401" in result.error and "invalid_client" in result.error
    assert api.paths() == ["/token"]


def test_secrets_and_tokens_never_reach_feeds_database_logs_or_test_output(api: Api, project: Project, setup,
                                                                          caplog, capsys) -> None:
    from worker.cli import print_test

    config, deps = setup
    project.write("jobs/oauth_token.js", (project.root / "jobs/oauth_token.js").read_text()
                  + "\nconsole.log('token is', data.access_token, 'secret is <CLIENT_SECRET>');\n")
    config = project.config(seed_config(api))  # scripts are read when the config is loaded
    api.json("/menu", {"echo": "fine"})
    caplog.set_level(logging.DEBUG)
    run_source(config.source("menu"), config, deps)
    print_test(run_source(config.source("menu"), config, deps, store=False))
    api.raw("/menu", f"error for {CLIENT_SECRET}".encode(), status=500)
    run_source(config.source("menu"), config, deps)
    shown = capsys.readouterr().out + caplog.text
    on_disk = "".join(p.read_text() for p in project.feed("").iterdir())
    database = str(db_rows(config, "select * from runs")) + str(db_rows(config, "select * from snapshots"))
    for text in (shown, on_disk, database):
        assert CLIENT_SECRET not in text
        assert not [t for t in ("tok-1-abcdef", "tok-2-abcdef", "tok-3-abcdef") if t in text]
    assert "[log] token is [redacted] secret is [redacted]" in shown


def test_a_script_cannot_find_another_sources_secret(api: Api, project: Project, make_deps) -> None:
    """Source a's script gets its secret; source b's script, run after it in the same helpers, finds no trace."""
    project.write("jobs/a.js", 'globalThis.stash = "<A_KEY>";\nos.context.set("request.headers.x-key", "<A_KEY>");\n')
    project.write("jobs/b.js", "const seen = [typeof stash, typeof process, typeof require,\n"
                               "  Object.getOwnPropertyNames(globalThis).join(',')].join('|');\n"
                               'os.context.set("request.headers.x-probe", seen);\n')
    api.json("/a", {})
    api.json("/b", {})
    config = project.config(f"""
[secrets]
A_KEY = {{ value = "a-only-secret-123" }}

[[sources]]
name = "a"
url = "{api.url}/a"
every = "1m"
pre_request = "a.js"

[[sources]]
name = "b"
url = "{api.url}/b"
every = "1m"
pre_request = "b.js"
""")
    deps = make_deps(config)
    for name in ("a", "b", "a", "b"):
        assert run_source(config.source(name), config, deps).ok
    probe = api.seen[-1].headers["x-probe"]
    assert probe.startswith("undefined|undefined|undefined|")
    assert "a-only-secret-123" not in probe and "stash" not in probe
    assert api.seen[-2].headers["x-key"] == "a-only-secret-123"


def test_api_echoing_a_secret_or_token_is_masked_in_feeds_database_and_test_output(api: Api, project: Project,
                                                                                  setup, capsys) -> None:
    from worker.cli import print_test

    config, deps = setup
    api.routes["/menu"] = lambda seen: (200, {"Content-Type": "application/json"}, json.dumps(
        {"title": "x", "items": [], "self": f"/menu?key={CLIENT_SECRET}",
         "echo": {"Authorization": seen.headers["authorization"]}}).encode())
    run_source(config.source("menu"), config, deps)
    print_test(run_source(config.source("menu"), config, deps, store=False))
    doc = feed_json(project)
    assert doc["data"]["self"] == "/menu?key=[redacted]"
    assert doc["data"]["echo"] == {"Authorization": "[redacted]"}
    shown = capsys.readouterr().out + str(db_rows(config, "select data from snapshots"))
    assert CLIENT_SECRET not in shown and "tok-" not in shown


def test_script_printing_its_computed_header_is_masked(api: Api, project: Project, make_deps) -> None:
    project.write("jobs/basic.js", 'const v = "Basic " + btoa("<CLIENT_ID>:<CLIENT_SECRET>");\n'
                                   'console.log("computed", v);\nos.context.set("request.headers.authorization", v);\n')
    api.json("/menu", MENU)
    config = project.config(seed_config(api).replace("oauth_token.js", "basic.js"))
    result = run_source(config.source("menu"), config, make_deps(config))
    assert result.console == [("log", "computed [redacted]")]


@pytest.mark.parametrize(("body", "error"), [
    (b'{"t": NaN}', "menu: response is not usable JSON (application/json; NaN is not valid JSON"),
    (b'{"t": 1e400}', "menu: response is not usable JSON (application/json; number 1e400 is out of range)"),
    (b"[" * 100_000, "menu: response is not usable JSON (application/json; maximum recursion depth"),
    (b"null", "menu: response is JSON null from"),
    (b'{"t": "caf\xe9"}', "menu: response is not UTF-8 JSON (application/json; bad byte at 10)"),
])
def test_unusable_json_fails_the_run_and_keeps_the_last_good_data(api: Api, project: Project, setup, body: bytes,
                                                                  error: str) -> None:
    config, deps = setup
    run_source(config.source("menu"), config, deps)
    api.routes["/menu"] = (200, {"Content-Type": "application/json"}, body)
    result = run_source(config.source("menu"), config, deps)
    assert result.error.startswith(error)
    assert feed_json(project)["data"] == MENU


def test_control_bytes_from_an_api_never_reach_the_log_or_feed(api: Api, project: Project, setup) -> None:
    config, deps = setup
    api.raw("/menu", b"\x1b[2J\x1b]0;pwned\x07 oops", status=500, content_type="application/octet-stream")
    result = run_source(config.source("menu"), config, deps)
    assert "\x1b" not in result.error and "\x07" not in result.error
    assert result.error.endswith("\ufffd[2J\ufffd]0;pwned\ufffd oops")


@pytest.mark.parametrize("secret", ['pa"ss\\word', "pass\tword", "it's-`${x}`"])
def test_secret_with_quotes_or_backslashes_reaches_the_script_exactly(api: Api, project: Project, make_deps,
                                                                      secret: str) -> None:
    project.write("jobs/echo.js", 'os.context.set("request.headers.x-a", "<KEY>");\n'
                                  "os.context.set('request.headers.x-b', '<KEY>');\n"
                                  "os.context.set('request.headers.x-c', `<KEY>`);\n")
    api.json("/menu", MENU)
    config = project.config(seed_config(api).replace("oauth_token.js", "echo.js").replace(
        "[secrets]", f"[secrets]\nKEY = {{ value = {json.dumps(secret)} }}"))
    assert run_source(config.source("menu"), config, make_deps(config)).ok
    headers = api.seen[-1].headers
    assert headers["x-a"] == headers["x-b"] == headers["x-c"] == secret


def test_unwritable_feeds_folder_is_reported_and_retried_on_the_next_success(api: Api, project: Project,
                                                                             make_deps) -> None:
    project.write("feeds", "a file where the folder should be")
    api.json("/menu", MENU)
    config = project.config(seed_config(api))
    deps = make_deps(config)
    result = run_source(config.source("menu"), config, deps)
    assert result.status == "ok"
    assert result.render_errors[0].startswith(f"feed menu.json: cannot write {project.root}/feeds/menu.json: ")
    (project.root / "feeds").unlink()
    assert run_source(config.source("menu"), config, deps).status == "unchanged"
    assert feed_json(project)["data"] == MENU
    assert "<h1>Lunch</h1>" in project.feed("board.html").read_text()


def test_render_with_an_emptied_database_keeps_the_feeds_on_disk(api: Api, project: Project, setup,
                                                                make_deps) -> None:
    from worker.pipeline import render_all

    config, deps = setup
    run_source(config.source("menu"), config, deps)
    before = {p: project.feed(p).read_bytes() for p in ("menu.json", "board.html")}
    deps.store.close()
    db = config.worker.database.removeprefix("sqlite:///")
    for suffix in ("", "-wal", "-shm"):
        Path(db + suffix).unlink(missing_ok=True)
    render_all(config, make_deps(config))
    assert {p: project.feed(p).read_bytes() for p in before} == before


def test_lone_surrogate_escape_in_api_data_is_stored_and_shown_as_replacement_character(api: Api, project: Project,
                                                                                       setup) -> None:
    config, deps = setup
    api.routes["/menu"] = (200, {"Content-Type": "application/json"},
                           b'{"title": "\\ud800 lone", "items": [{"name": "\\ud83d\\ude00 ok"}]}')
    result = run_source(config.source("menu"), config, deps)
    assert (result.status, result.error) == ("ok", None)
    assert feed_json(project)["data"] == {"title": "\ufffd lone", "items": [{"name": "\U0001f600 ok"}]}
    assert "<h1>\ufffd lone</h1><p>\U0001f600 ok</p>" in project.feed("board.html").read_text()


def test_unexpected_exception_in_a_pull_is_recorded_as_the_sources_last_error(project: Project, setup) -> None:
    config, deps = setup
    run_source(config.source("menu"), config, deps)
    html_before = project.feed("board.html").read_bytes()

    def explode(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("boom")

    deps.client.close()
    deps.client = httpx.Client(transport=httpx.MockTransport(explode))
    result = run_source(config.source("menu"), config, deps)
    error = "menu: internal error: RuntimeError: boom (please report it)"
    assert (result.status, result.error) == ("failed", error)
    assert feed_json(project)["last_error"] == error
    assert db_rows(config, "select status, error from runs order by id desc limit 1") == [("failed", error)]
    assert project.feed("board.html").read_bytes() == html_before


def test_a_script_edit_takes_effect_only_when_the_config_is_loaded_again(api: Api, project: Project, setup) -> None:
    config, deps = setup
    project.write("jobs/oauth_token.js", "if (\n")
    assert run_source(config.source("menu"), config, deps).status == "ok"
    reloaded = project.config(seed_config(api))
    result = run_source(reloaded.source("menu"), reloaded, deps)
    assert result.error == ("menu: SyntaxError: unexpected end of script (something is not closed) "
                            "(jobs/oauth_token.js:1)")


def test_url_credentials_echoed_back_by_the_api_are_masked_in_data_and_test_output(api: Api, project: Project,
                                                                                 make_deps) -> None:
    api.echo_header("/echo", "authorization")
    config = project.config(f"""
[secrets]
PASS = {{ value = "pa55-word" }}

[[sources]]
name = "echo"
url = "{api.url.replace("http://", "http://reader:<PASS>@")}/echo"
every = "5m"
""")
    deps = make_deps(config)
    shown = run_source(config.source("echo"), config, deps, store=False)
    assert api.seen[-1].headers["authorization"] == "Basic cmVhZGVyOnBhNTUtd29yZA=="  # reader:pa55-word
    assert shown.data == {"got": "Basic [redacted]"}
    assert shown.request["url"] == f"{api.url.replace('http://', 'http://reader:[redacted]@')}/echo"
    run_source(config.source("echo"), config, deps)
    assert feed_json_of(project, "echo")["data"] == {"got": "Basic [redacted]"}
    assert "cmVhZGVy" not in str(db_rows(config, "select data from snapshots"))


def test_before_the_first_success_the_json_feed_follows_each_new_error(api: Api, project: Project, setup,
                                                                       clock) -> None:
    config, deps = setup
    api.raw("/menu", b"<html>Maintenance</html>")
    run_source(config.source("menu"), config, deps)
    api.raw("/menu", b"oops", status=500, content_type="text/plain")
    clock.advance(300)
    run_source(config.source("menu"), config, deps)
    assert feed_json(project)["data"] is None
    assert feed_json(project)["last_error"] == f"menu: HTTP 500 from {api.url}/menu?store=12: oops"
    assert feed_json(project)["generated_at"] == "2026-12-03T12:05:00+00:00"


def test_a_secret_a_script_sends_base64_encoded_is_masked_where_the_api_echoes_it(api: Api, project: Project,
                                                                                  make_deps) -> None:
    api.echo_header("/echo", "x-custom")
    project.write("jobs/b64.js", 'os.context.set("request.headers.x-custom", btoa("<KEY>"));\n'
                                 'console.log(btoa("<KEY>").replace(/=+$/, ""));\n')
    config = project.config(f"""
[secrets]
KEY = {{ value = "p@ss w0rd/x=1" }}

[[sources]]
name = "echo"
url = "{api.url}/echo"
every = "5m"
pre_request = "b64.js"
""")
    shown = run_source(config.source("echo"), config, make_deps(config), store=False)
    assert api.seen[-1].headers["x-custom"] == "cEBzcyB3MHJkL3g9MQ=="
    assert (shown.data, shown.console) == ({"got": "[redacted]"}, [("log", "[redacted]")])
