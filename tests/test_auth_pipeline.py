"""[auth.*] blocks through run_source: shared cached tokens, refresh on 401/403/expired_when, no leaks."""

import json
import logging
import sqlite3

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, Api, Project

from worker.cli import print_test
from worker.pipeline import run_source


def auth_config(api: Api, sources: int = 1, extra_auth: str = "", script: str | None = None) -> str:
    text = f"""
[secrets]
CLIENT_ID = "{CLIENT_ID}"
CLIENT_SECRET = {{ value = "{CLIENT_SECRET}" }}

[auth.graph]
type = "oauth2_client_credentials"
token_url = "{api.url}/token"
client_id = "<CLIENT_ID>"
client_secret = "<CLIENT_SECRET>"
{extra_auth}
"""
    for i in range(sources):
        text += f'\n[[sources]]\nname = "room{i}"\nurl = "{api.url}/rooms/{i}"\nevery = "5m"\nauth = "graph"\n'
        if script:
            text += f'pre_request = "{script}"\n'
    return text


def token_of(seen) -> str:
    return seen.headers["authorization"]


def test_ten_sources_over_two_hours_share_three_tokens(api: Api, project: Project, make_deps, clock) -> None:
    for i in range(10):
        api.json(f"/rooms/{i}", {"room": i})
    config = project.config(auth_config(api, sources=10))
    deps = make_deps(config)
    token_times = []
    for minute in range(0, 120, 5):
        for source in config.sources:
            before = api.tokens_issued
            assert run_source(source, config, deps).ok
            if api.tokens_issued != before:
                token_times.append(minute)
        clock.advance(300)
    # expires_in=3599 → refresh after 80% (47.99 min): the pulls at 0, 50 and 100 minutes fetch.
    assert token_times == [0, 50, 100]
    assert api.paths().count("/token") == 3


def test_401_refreshes_the_token_and_retries_once(api: Api, project: Project, make_deps) -> None:
    replies = iter([(401, {}, b'{"error": "expired"}'), (200, {"Content-Type": "application/json"}, b"[1]")])
    api.routes["/rooms/0"] = lambda seen: next(replies)
    config = project.config(auth_config(api))
    result = run_source(config.source("room0"), config, make_deps(config))
    assert (result.status, api.paths()) == ("ok", ["/token", "/rooms/0", "/token", "/rooms/0"])
    first, second = (s for s in api.seen if s.path == "/rooms/0")
    assert (token_of(first), token_of(second)) == ("Bearer tok-1-abcdef", "Bearer tok-2-abcdef")


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_twice_fails_with_a_clear_message(api: Api, project: Project, make_deps, status: int) -> None:
    api.raw("/rooms/0", b"nope", status=status, content_type="text/plain")
    config = project.config(auth_config(api))
    result = run_source(config.source("room0"), config, make_deps(config))
    assert result.error == (f"room0: HTTP {status} from {api.url}/rooms/0 even with a new token from "
                            f"[auth.graph]: nope")
    assert api.paths() == ["/token", "/rooms/0", "/token", "/rooms/0"]


def test_expired_when_body_triggers_a_refresh(api: Api, project: Project, make_deps) -> None:
    replies = iter([(200, {"Content-Type": "application/json"}, b'{"error": "Token expired"}'),
                    (200, {"Content-Type": "application/json"}, b'{"rooms": []}')])
    api.routes["/rooms/0"] = lambda seen: next(replies)
    config = project.config(auth_config(api, extra_auth='expired_when = "Token expired"'))
    result = run_source(config.source("room0"), config, make_deps(config))
    assert (result.status, result.data, api.tokens_issued) == ("ok", {"rooms": []}, 2)


def test_custom_header_and_prefix(api: Api, project: Project, make_deps) -> None:
    api.json("/rooms/0", [])
    config = project.config(auth_config(api, extra_auth='header = "X-Api-Token"\nprefix = ""'))
    run_source(config.source("room0"), config, make_deps(config))
    assert api.seen[-1].headers["x-api-token"] == "tok-1-abcdef"
    assert "authorization" not in api.seen[-1].headers


def test_script_gets_the_shared_token_with_os_auth_token(api: Api, project: Project, make_deps) -> None:
    project.write("jobs/custom.js", 'const t = await os.auth.token("graph");\n'
                                    'os.context.set("request.headers.x-custom", "Token " + t);\n')
    api.json("/rooms/0", [])
    config = project.config(auth_config(api, script="custom.js").replace('auth = "graph"\n', ""))
    result = run_source(config.source("room0"), config, make_deps(config))
    assert result.ok
    assert api.seen[-1].headers["x-custom"] == "Token tok-1-abcdef"


def test_unknown_auth_block_in_script_fails_with_the_known_ones(api: Api, project: Project, make_deps) -> None:
    project.write("jobs/custom.js", 'await os.auth.token("nope");\n')
    config = project.config(auth_config(api, script="custom.js").replace('auth = "graph"\n', ""))
    result = run_source(config.source("room0"), config, make_deps(config))
    assert "os.auth.token('nope'): no [auth.nope] block (blocks: graph)" in result.error


def test_token_error_names_the_endpoint_error_not_the_secret(api: Api, project: Project, make_deps) -> None:
    config = project.config(auth_config(api).replace(f'value = "{CLIENT_SECRET}"', 'value = "wrong-secret-1"'))
    result = run_source(config.source("room0"), config, make_deps(config))
    assert result.error.startswith("room0: auth graph: token request failed: HTTP 401 invalid_client: AADSTS7000215")
    assert "wrong-secret-1" not in result.error


def test_test_command_shows_token_origin_and_expiry_never_the_token(api: Api, project: Project, make_deps,
                                                                     capsys, caplog) -> None:
    api.json("/rooms/0", {"ok": True})
    config = project.config(auth_config(api))
    deps = make_deps(config)
    caplog.set_level(logging.DEBUG)
    run_source(config.source("room0"), config, deps)
    print_test(run_source(config.source("room0"), config, deps, store=False))
    out = capsys.readouterr().out
    assert "token for [auth.graph] from cache, expires 12:59:59" in out
    database = config.worker.database.removeprefix("sqlite:///")
    snapshots = str(sqlite3.connect(database).execute("select * from snapshots").fetchall())
    feeds = "".join(p.read_text() for p in project.feed("").iterdir())
    for text in (out, caplog.text, snapshots, feeds, json.dumps(str(deps.store.runs("room0")))):
        assert "tok-1-abcdef" not in text and CLIENT_SECRET not in text


@pytest.mark.parametrize(("snippet", "message"), [
    ('type = "password"', "[auth.graph].type: 'password' is not supported"),
    ('client_auth = "header"', '[auth.graph].client_auth: write "body"'),
    ('extra = { grant_type = "x" }', "[auth.graph].extra: 'grant_type' is set by signfeed itself"),
    ('colour = "red"', "[auth.graph]: unknown key 'colour'"),
])
def test_auth_block_mistakes_are_config_errors(api: Api, project: Project, snippet: str, message: str) -> None:
    from worker.errors import ConfigError

    text = auth_config(api).replace('type = "oauth2_client_credentials"', "") if snippet.startswith("type") else \
        auth_config(api)
    with pytest.raises(ConfigError) as info:
        project.config(text.replace("[auth.graph]\n", f"[auth.graph]\n{snippet}\n"))
    assert message in str(info.value)


def test_source_naming_a_missing_auth_block_is_a_config_error(api: Api, project: Project) -> None:
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match=r'"room0".auth: no \[auth.nope\] block \(blocks: graph\)'):
        project.config(auth_config(api).replace('auth = "graph"', 'auth = "nope"'))


def test_concurrent_first_pulls_make_one_token_request(api: Api, project: Project, make_deps) -> None:
    import threading

    for i in range(10):
        api.json(f"/rooms/{i}", {"room": i})
    config = project.config(auth_config(api, sources=10))
    deps = make_deps(config)
    all_started = threading.Event()
    issue = api.token_endpoint
    api.routes["/token"] = lambda seen: (all_started.wait(10), issue(seen))[1]
    barrier = threading.Barrier(10, action=all_started.set)
    results = []

    def pull(source) -> None:
        barrier.wait()
        results.append(run_source(source, config, deps))

    threads = [threading.Thread(target=pull, args=(s,)) for s in config.sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [r.status for r in results] == ["ok"] * 10
    assert api.paths().count("/token") == 1
    assert {s.headers["authorization"] for s in api.seen if s.path.startswith("/rooms")} == {"Bearer tok-1-abcdef"}
