"""An outage as operators meet it: every kind of failure in a row, then recovery."""

import json

from conftest import Api, Project, seed_config

from worker.pipeline import run_source

MENU = {"title": "Lunch", "items": [{"name": "Soup"}]}


def test_outage_sequence_keeps_the_feed_until_good_data_returns(api: Api, project: Project, make_deps,
                                                                clock) -> None:
    base = seed_config(api, "retries = 0").replace('pre_request = "oauth_token.js"\n', "")
    port = api.url.rsplit(":", 1)[1]
    good = project.config(base)
    deps = make_deps(good)
    api.json("/menu", MENU)
    run_source(good.source("menu"), good, deps)
    html = project.feed("board.html").read_bytes()
    steps = [
        ("500", lambda: api.raw("/menu", b"Internal Server Error", status=500, content_type="text/plain"),
         base, f"menu: HTTP 500 from {api.url}/menu?store=12: Internal Server Error"),
        ("HTML 200", lambda: api.raw("/menu", b"<html><h1>Maintenance</h1></html>"),
         base, "menu: response is not JSON (text/html; Expecting value at line 1): <html><h1>Maintenance</h1></html>"),
        ("refused", lambda: None, base.replace(api.url, "http://127.0.0.1:9"),
         "menu: cannot connect to http://127.0.0.1:9: "),
        ("TLS failure", lambda: api.json("/menu", MENU), base.replace("http://", "https://"),
         f"menu: cannot connect to https://127.0.0.1:{port}: "),
        ("204", lambda: api.routes.update({"/menu": (204, {}, b"")}), base,
         f"menu: HTTP 204 with an empty body from {api.url}/menu?store=12; expected JSON"),
    ]
    for failures, (label, break_api, toml, error) in enumerate(steps, start=1):
        break_api()
        config = project.config(toml)
        clock.advance(60)
        result = run_source(config.source("menu"), config, deps)
        assert result.error.startswith(error), label
        assert project.feed("board.html").read_bytes() == html, label
        doc = json.loads(project.feed("menu.json").read_text())
        assert (doc["data"], doc["last_error"], doc["fetched_at"]) == (MENU, result.error,
                                                                       "2026-12-03T12:00:00+00:00"), label
        state = deps.store.state("menu")
        assert (state.consecutive_failures, state.last_error) == (failures, result.error), label
    api.json("/menu", {**MENU, "title": "Dinner"})
    clock.advance(60)
    result = run_source(good.source("menu"), good, deps)
    assert result.status == "ok"
    assert b"<h1>Dinner</h1>" in project.feed("board.html").read_bytes()
    doc = json.loads(project.feed("menu.json").read_text())
    assert (doc["last_error"], doc["fetched_at"], doc["stale"]) == (None, "2026-12-03T12:06:00+00:00", False)
    assert deps.store.state("menu").consecutive_failures == 0
