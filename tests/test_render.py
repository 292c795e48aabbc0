"""Rendering: autoescaping, JSON feeds that round-trip, helpers, atomic writes."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Api, Project, seed_config

from worker.config import Feed
from worker.errors import RenderError
from worker.pipeline import render_all, run_source
from worker.render import Renderer, SourceView, ago, json_feed, local_time, write_atomic

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
XSS = "<script>alert(1)</script>"


def view(data, **kw) -> SourceView:
    base = {"name": "menu", "data": data, "fetched_at": NOW, "stale": False, "last_error": None, "updated_ago": "x"}
    return SourceView(**{**base, **kw})


def renderer(tmp_path: Path, name: str, text: str, tz: str = "UTC") -> Renderer:
    (tmp_path / name).write_text(text)
    return Renderer(tmp_path, tz)


def test_html_j2_template_escapes_api_data(tmp_path: Path) -> None:
    r = renderer(tmp_path, "t.html.j2", "<p>{{ menu.data.title }}</p>")
    out = r.render(Feed("board.html", "t.html.j2", ("menu",)), {"menu": view({"title": XSS})}, NOW)
    assert out == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"


def test_json_output_template_is_not_html_escaped(tmp_path: Path) -> None:
    r = renderer(tmp_path, "t.json.j2", '{"t": {{ menu.data.title | tojson }}}')
    out = r.render(Feed("x.json", "t.json.j2", ("menu",)), {"menu": view({"title": "a & b"})}, NOW)
    assert json.loads(out) == {"t": "a & b"}


def test_sources_mapping_reaches_names_with_dashes(tmp_path: Path) -> None:
    r = renderer(tmp_path, "t.html.j2", "{{ sources['lobby-news'].data.n }}")
    assert r.render(Feed("a.html", "t.html.j2", ("lobby-news",)), {"lobby-news": view({"n": 3})}, NOW) == "3"


def test_a_missing_key_of_the_sources_mapping_fails_the_render(tmp_path: Path) -> None:
    r = renderer(tmp_path, "t.html.j2", "{{ sources['lobby-nws'].data.n }}")
    with pytest.raises(RenderError) as info:
        r.render(Feed("a.html", "t.html.j2", ("lobby-news",)), {"lobby-news": view({"n": 3})}, NOW)
    assert str(info.value) == (f"{tmp_path.name}/t.html.j2:1: UndefinedError: sources has no 'lobby-nws' "
                               "(this feed's sources: lobby-news)")


def test_absent_sources_can_be_tested_for_in_the_sources_mapping(tmp_path: Path) -> None:
    r = renderer(tmp_path, "t.html.j2", "{{ sources.get('weather') is none }} {{ 'weather' in sources }} "
                                        "{{ sources.weather is defined }} {{ sources['weather'] | default('-') }}")
    assert r.render(Feed("a.html", "t.html.j2", ("menu",)), {"menu": view({})}, NOW) == "True False False -"


def test_json_feed_round_trips_data_exactly() -> None:
    data = {"title": XSS, "emoji": "🌵", "n": [1, 2.5, None, True]}
    doc = json.loads(json_feed(view(data, last_error="menu: HTTP 500"), NOW))
    assert doc == {"source": "menu", "fetched_at": "2026-12-03T12:00:00+00:00",
                   "generated_at": "2026-12-03T12:00:00+00:00", "stale": False,
                   "last_error": "menu: HTTP 500", "data": data}


@pytest.mark.parametrize(("delta", "text"), [(10, "just now"), (60, "1 minute ago"), (300, "5 minutes ago"),
                                             (7200, "2 hours ago"), (86400 * 3, "3 days ago")])
def test_ago_reads_like_a_person(delta: int, text: str) -> None:
    assert ago(NOW - timedelta(seconds=delta), NOW) == text


def test_local_time_converts_aware_values_and_leaves_naive_strings_as_written() -> None:
    from zoneinfo import ZoneInfo

    ny = ZoneInfo("America/New_York")
    assert local_time(NOW, "%H:%M", ny) == "07:00"
    assert local_time("2026-12-03T12:00:00Z", "%H:%M", ny) == "07:00"
    assert local_time("2026-12-03T12:00:00", "%H:%M", ny) == "12:00"
    assert local_time("not a time", "%H:%M", ny) == "not a time"


def test_template_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    r = renderer(tmp_path, "bad.html.j2", "ok\n{% for x in %}\n")
    with pytest.raises(RenderError, match=r"bad.html.j2:2: "):
        r.check("bad.html.j2")


def test_template_runtime_error_names_template_and_line(tmp_path: Path) -> None:
    r = renderer(tmp_path, "t.html.j2", "a\nb\n{{ 1 // 0 }}\n")
    with pytest.raises(RenderError, match=r"t.html.j2:3: ZeroDivisionError"):
        r.render(Feed("a.html", "t.html.j2", ("menu",)), {"menu": view(None)}, NOW)


@pytest.mark.parametrize(("body", "error"), [
    ("<p>[{{ goood.data.title }}]</p>", "'goood' is undefined"),
    ("{% for i in goood.data %}<p>{{ i.name }}</p>{% endfor %}", "'goood' is undefined"),
    ("<p>[{{ menu.dta }}]</p>", "source 'menu' has no attribute 'dta' "
                                "(a source has name, data, fetched_at, stale, last_error, updated_ago)"),
])
def test_typo_in_a_source_name_or_attribute_keeps_the_previous_html_file(api: Api, project: Project, make_deps,
                                                                         body: str, error: str) -> None:
    api.json("/menu", {"title": "Lunch", "items": [{"name": "Soup"}]})
    config = project.config(seed_config(api))
    assert run_source(config.source("menu"), config, make_deps(config)).written
    before = project.feed("board.html").read_bytes()
    project.write("templates/board.html.j2", "<h1>Menu</h1>\n<main>\n" + body + "\n</main>\n")
    result = render_all(config, make_deps(config))  # new deps: a new Renderer, no cached template
    assert result.render_errors == [f"feed board.html: templates/board.html.j2:3: UndefinedError: {error}; "
                                    "the previous file stays"]
    assert project.feed("board.html").read_bytes() == before


def test_a_source_the_feed_does_not_name_is_undefined(tmp_path: Path) -> None:
    r = renderer(tmp_path, "t.html.j2", "{{ menu.data.title }}\n{{ weather.data.temp }}\n")
    with pytest.raises(RenderError) as info:
        r.render(Feed("a.html", "t.html.j2", ("menu",)), {"menu": view({"title": "Lunch"})}, NOW)
    assert str(info.value) == f"{tmp_path.name}/t.html.j2:2: UndefinedError: 'weather' is undefined"


def test_missing_keys_inside_api_data_render_empty(tmp_path: Path) -> None:
    r = renderer(tmp_path, "t.html.j2",
                 "[{{ menu.data.dishes[0].missing }}][{{ menu.data.nothere.deeper }}][{{ menu.data.title.x }}]"
                 "[{{ (menu.data.dishes | first).name }}]{% for d in menu.data.nothere %}x{% endfor %}"
                 "{% for n in [1, 2] %}({{ loop.previtem }}){% endfor %}")
    out = r.render(Feed("a.html", "t.html.j2", ("menu",)), {"menu": view({"title": "Lunch", "dishes": []})}, NOW)
    assert out == "[][][][]()(1)"


def test_missing_data_of_a_source_never_fetched_renders_empty(tmp_path: Path) -> None:
    r = renderer(tmp_path, "t.html.j2", "[{{ menu.data.title }}][{{ menu.data['items'][0] }}]")
    assert r.render(Feed("a.html", "t.html.j2", ("menu",)), {"menu": view(None, fetched_at=None)}, NOW) == "[][]"


def test_is_defined_and_default_work_for_missing_names_attributes_and_keys(tmp_path: Path) -> None:
    r = renderer(tmp_path, "t.html.j2",
                 "{{ goood is defined }} {{ menu.dta is defined }} {{ menu.data.nothere is defined }} "
                 "{{ menu is defined }} {{ menu.data.title is defined }}|"
                 "{{ goood | default('no source') }}|{{ menu.dta | default('no attr') }}|"
                 "{{ menu.data.nothere | default('no key') }}|{{ goood.data | default('x') if goood is defined }}|"
                 "{% if goood is undefined %}skipped{% endif %}")
    out = r.render(Feed("a.html", "t.html.j2", ("menu",)), {"menu": view({"title": "Lunch"})}, NOW)
    assert out == "False False False True True|no source|no attr|no key||skipped"


def test_write_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "feeds" / "a.html"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["a.html"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_dotted_access_to_api_data_reads_its_keys_before_dict_methods(tmp_path: Path) -> None:
    r = renderer(tmp_path, "t.html.j2", "{% for i in menu.data.items %}{{ i.name }} {% endfor %}{{ menu.data.keys }} "
                                        "{{ menu.data.values | length }} {{ menu.data.other.keys() | list }}")
    data = {"items": [{"name": "Soup"}, {"name": "Bread"}], "keys": "K", "values": [1, 2, 3], "other": {"a": 1}}
    assert r.render(Feed("a.html", "t.html.j2", ("menu",)), {"menu": view(data)}, NOW) == "Soup Bread K 3 [&#39;a&#39;]"
