"""The signfeed command: each subcommand's output and exit status, errors as one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLIENT_SECRET, Api, Project, seed_config

from worker import cli
from worker.demo import DemoAPI

ROOT = Path(__file__).parent.parent


@pytest.fixture
def menu_project(api: Api, project: Project) -> Path:
    api.json("/menu", {"title": "Lunch", "items": [{"name": "Soup"}]})
    return project.config(seed_config(api)).path


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_command_has_help_with_an_example(capsys) -> None:
    for name, example in cli.EXAMPLES.items():
        with pytest.raises(SystemExit) as info:
            cli.main([name, "--help"])
        assert info.value.code == 0
        assert f"example: {example}" in capsys.readouterr().out


def test_test_prints_masked_request_and_response_and_stores_nothing(capsys, menu_project: Path, api: Api) -> None:
    code, out, _ = run(capsys, "--config", str(menu_project), "test", "menu")
    assert code == 0
    assert f"GET {api.url}/menu?store=12" in out
    assert "  authorization: [redacted]" in out
    assert "HTTP 200 in " in out and '"title": "Lunch"' in out
    assert CLIENT_SECRET not in out and "tok-1-abcdef" not in out
    assert not (menu_project.parent / "feeds").exists()


def test_test_exits_1_on_a_non_json_answer(capsys, menu_project: Path, api: Api) -> None:
    api.raw("/menu", b"<html>login</html>")
    code, out, _ = run(capsys, "test", "menu", "--config", str(menu_project))
    assert code == 1
    assert out.splitlines()[-1] == "FAILED: menu: response is not JSON (text/html; Expecting value at line 1): " \
                                   "<html>login</html>"


def test_pull_then_history_and_status(capsys, menu_project: Path) -> None:
    code, out, _ = run(capsys, "--config", str(menu_project), "pull")
    assert (code, out.split(" (")[0]) == (0, "menu: ok")
    code, out, _ = run(capsys, "--config", str(menu_project), "pull", "menu")
    assert (code, out.split(" (")[0]) == (0, "menu: unchanged")
    code, out, _ = run(capsys, "--config", str(menu_project), "history", "menu")
    assert code == 0 and " unchanged " in out and " ok " in out and "HTTP 200" in out
    code, out, _ = run(capsys, "--config", str(menu_project), "status")
    assert code == 0 and out.startswith("menu: last success ")
    assert "next due " in out
    doc = json.loads((menu_project.parent / "feeds" / "menu.json").read_text())
    assert doc["data"]["title"] == "Lunch"


def test_pull_force_rerenders_unchanged_data(capsys, menu_project: Path) -> None:
    run(capsys, "--config", str(menu_project), "pull")
    board = menu_project.parent / "feeds" / "board.html"
    board.write_text("tampered")
    run(capsys, "--config", str(menu_project), "pull", "--force")
    assert "<h1>Lunch</h1>" in board.read_text()


def test_render_rewrites_feeds_from_stored_snapshots(capsys, menu_project: Path, project: Project) -> None:
    run(capsys, "--config", str(menu_project), "pull")
    project.write("templates/board.html.j2", "<b>{{ menu.data.title | upper }}</b>")
    code, out, _ = run(capsys, "--config", str(menu_project), "render")
    assert code == 0 and "board.html" in out
    assert project.feed("board.html").read_text() == "<b>LUNCH</b>"


def test_check_reports_script_syntax_and_template_errors_with_file_and_line(capsys, menu_project: Path,
                                                                           project: Project) -> None:
    project.write("jobs/oauth_token.js", "const a = 1;\nconst b = ;\n")
    project.write("templates/board.html.j2", "{% if %}")
    code, out, _ = run(capsys, "--config", str(menu_project), "check")
    assert code == 1
    assert "error: menu: jobs/oauth_token.js:2: SyntaxError" in out
    assert "error: feed board.html: templates/board.html.j2:1: Expected an expression" in out


def test_check_warns_about_bearer_without_a_space(capsys, menu_project: Path, project: Project) -> None:
    script = (ROOT / "jobs" / "oauth_token.js").read_text().replace("'Bearer '", "'Bearer'")
    project.write("jobs/oauth_token.js", script)
    code, out, _ = run(capsys, "--config", str(menu_project), "check")
    assert code == 0
    assert 'warning: menu: Authorization header "Bearer…" has no space after "Bearer"' in out


def test_config_error_is_one_line_on_stderr_and_exit_1(capsys, project: Project) -> None:
    project.write("config.toml", "[[sources]]\nname = 'x'\n")
    code, out, err = run(capsys, "--config", str(project.root / "config.toml"), "check")
    assert (code, out) == (1, "")
    assert err == "signfeed: config.toml: [[sources]] \"x\": missing required key 'url'\n"


def test_unknown_source_lists_the_known_ones(capsys, menu_project: Path) -> None:
    code, _, err = run(capsys, "--config", str(menu_project), "test", "nope")
    assert code == 1 and err.strip().endswith("(sources: menu)")


def test_python_dash_m_worker_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "worker", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "usage: signfeed" in done.stdout


def test_bundled_demo_config_pulls_every_source_against_the_demo_api(tmp_path: Path, capsys) -> None:
    """What `signfeed demo` runs: the bundled config.toml, scripts and templates against the demo API."""
    import shutil

    for part in ("config.toml", "jobs", "templates"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / part)
    demo = DemoAPI()
    try:
        demo.start(port=8787)
    except OSError:
        pytest.skip("port 8787 is taken on this machine (a demo is running)")
    try:
        code, out, _ = run(capsys, "--config", str(tmp_path / "config.toml"), "pull")
        token_requests = demo.count("/oauth2/token")
    finally:
        demo.stop()
    config_sources = [line.split(":")[0] for line in out.splitlines()]
    assert code == 0, out
    assert all(": ok (" in line for line in out.splitlines()), out
    assert set(config_sources) == {"weather", "calendar", "menu", "news", "transit"}
    assert token_requests == 5
    feeds = {p.name for p in (tmp_path / "feeds").iterdir()}
    assert {"weather.html", "rooms.html", "menu.html", "ticker.html", "lobby.html", "weather.json"} <= feeds
    assert "demo-secret-change-me" not in "".join(p.read_text() for p in (tmp_path / "feeds").iterdir())


def test_check_reports_a_feeds_folder_that_cannot_be_created(capsys, menu_project: Path, project: Project) -> None:
    project.write("blocker", "a file")
    text = (menu_project).read_text()
    menu_project.write_text('[worker]\nfeeds_dir = "blocker/feeds"\n' + text)
    code, out, _ = run(capsys, "--config", str(menu_project), "check")
    assert code == 1
    assert f"error: [worker] feeds_dir: cannot create {project.root}/blocker/feeds: Not a directory" in out


def test_check_reports_a_feeds_dir_that_is_a_file(capsys, menu_project: Path, project: Project) -> None:
    project.write("out", "a file")
    menu_project.write_text('[worker]\nfeeds_dir = "out"\n' + menu_project.read_text())
    code, out, _ = run(capsys, "--config", str(menu_project), "check")
    assert (code, out) == (1, f"error: [worker] feeds_dir: {project.root}/out is a file, not a folder\n")


def test_history_limit_below_one_is_refused(capsys, menu_project: Path) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["history", "menu", "--limit", "-1", "--config", str(menu_project)])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "signfeed history: error: argument --limit: '-1' is not a whole number of at least 1")


def test_render_on_a_fresh_database_says_no_file_was_written_when_the_template_fails(capsys, menu_project: Path,
                                                                                   project: Project) -> None:
    project.write("templates/board.html.j2", "{% for i in menu.data %}<p>{{ i.name }}</p>{% endfor %}")
    code, _, err = run(capsys, "--config", str(menu_project), "render")
    assert (code, err) == (1, "feed board.html: templates/board.html.j2:1: TypeError: 'NoneType' object is not "
                              "iterable; no file written yet\n")
    assert not project.feed("board.html").exists()


def test_check_reports_a_template_name_that_is_not_one_of_the_feeds_sources(capsys, menu_project: Path,
                                                                           project: Project) -> None:
    project.write("templates/board.html.j2", "<h1>{{ menu.data.title }}</h1>\n<p>{{ goood.data.title }}</p>\n")
    code, out, _ = run(capsys, "--config", str(menu_project), "check")
    assert (code, out) == (1, "error: feed board.html: templates/board.html.j2 uses 'goood', "
                              "which is not one of its sources (menu)\n")


def test_check_follows_base_includes_and_imports_with_the_names_that_reach_them(capsys, api: Api,
                                                                              project: Project) -> None:
    config = seed_config(api).replace('sources = ["menu"]', 'sources = ["menu", "weather"]') + f"""
[[sources]]
name = "weather"
url = "{api.url}/weather"
every = "5m"
"""
    path = project.config(config).path
    project.write("templates/board.html.j2", """{% extends "_layout.html.j2" %}
{% import "_plain.j2" as plain %}
{% set title = "Board" %}
{% block content %}
{%- for row in menu.data %}{% include "_row.j2" %}{% endfor %}
{%- if news is defined %}{{ news.data }}{% endif %}{{ rooms | default("") }}{{ plain.when() }}
{%- include "_optional.j2" ignore missing %}
{% endblock %}
""")
    project.write("templates/_layout.html.j2",
                  "<title>{{ title }}</title>{% block content %}{% endblock %}{{ generated_at }} {{ timezone }}\n")
    project.write("templates/_row.j2", "<p>{{ row.name }} {{ weather.stale }} {{ weahter.stale }}</p>")
    project.write("templates/_plain.j2", "{% macro when() %}{{ generated_at | local_time }}{% endmacro %}")
    code, out, _ = run(capsys, "--config", str(path), "check")
    assert (code, out.splitlines()) == (1, [
        "error: feed board.html: templates/_plain.j2 uses 'generated_at', which does not reach it: "
        'templates/board.html.j2 imports templates/_plain.j2 without context (add "with context" to the import)',
        "error: feed board.html: templates/_row.j2 uses 'weahter', which is not one of its sources (menu, weather)",
    ])


def test_check_finds_a_missing_base_template_and_a_syntax_error_in_an_imported_one(capsys, menu_project: Path,
                                                                                 project: Project) -> None:
    project.write("templates/board.html.j2", '{% extends "_gone.html.j2" %}{% import "_m.j2" as m with context %}')
    project.write("templates/_m.j2", "{% macro a() %}\n{{ x | no_such_filter }}\n{% endmacro %}")
    code, out, _ = run(capsys, "--config", str(menu_project), "check")
    assert (code, out.splitlines()) == (1, [
        "error: feed board.html: template '_gone.html.j2' not found (used by templates/board.html.j2)",
        "error: feed board.html: templates/_m.j2:2: No filter named 'no_such_filter'.",
    ])


def test_bundled_templates_pass_check_on_the_bundled_config(capsys, tmp_path: Path) -> None:
    import shutil

    for part in ("config.toml", "jobs", "templates"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / part)
    code, out, _ = run(capsys, "--config", str(tmp_path / "config.toml"), "check")
    assert (code, out) == (0, f"{tmp_path / 'config.toml'}: ok (5 sources, 6 feeds)\n")


def test_daemon_start_only_warns_about_a_template_name_that_is_not_a_source(menu_project: Path, project: Project,
                                                                            scripts) -> None:
    from worker import config as config_mod
    from worker.check import require_valid

    project.write("templates/board.html.j2", "{{ goood.data.title }}")
    warnings = require_valid(config_mod.load(menu_project), scripts)
    assert warnings == ["feed board.html: templates/board.html.j2 uses 'goood', which is not one of its sources (menu)"]


def test_check_reports_a_database_path_that_is_a_folder_or_not_sqlite(capsys, api: Api, project: Project) -> None:
    (project.root / "data").mkdir()
    (project.root / "notes.txt").write_text("shopping list\n")
    for database, error in (("data", "is a folder; name a file, e.g. sqlite:///data/signfeed.db"),
                            ("notes.txt", "is not an SQLite database; point database at another file")):
        path = project.config(f'[worker]\ndatabase = "sqlite:///{database}"\n' + seed_config(api)).path
        code, out, _ = run(capsys, "--config", str(path), "check")
        assert (code, out) == (1, f"error: [worker] database: {project.root / database} {error}\n")


def test_check_warns_about_a_secret_too_short_to_mask(capsys, api: Api, project: Project) -> None:
    path = project.config(seed_config(api).replace("[secrets]", '[secrets]\nPIN = { value = "7x9" }')).path
    code, out, _ = run(capsys, "--config", str(path), "check")
    assert code == 0
    assert out.splitlines()[0] == ("warning: [secrets] PIN: 3 characters is too short to be masked in logs, feeds "
                                   "and the database (4 or more are)")


def test_check_reports_a_source_attribute_or_sources_key_that_does_not_exist(capsys, menu_project: Path,
                                                                             project: Project) -> None:
    project.write("templates/board.html.j2", "{{ menu.dta }} {{ menu.data.anything }} {{ sources['goood'].data }}\n")
    code, out, _ = run(capsys, "--config", str(menu_project), "check")
    assert (code, out.splitlines()) == (1, [
        "error: feed board.html: templates/board.html.j2 uses 'menu.dta', but a source has only name, data, "
        "fetched_at, stale, last_error, updated_ago",
        "error: feed board.html: templates/board.html.j2 uses sources['goood'], which is not one of its sources "
        "(menu)"])
