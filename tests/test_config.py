"""config.toml parsing: defaults, secrets, schedules, and one clear line for each mistake."""

from pathlib import Path

import pytest

from worker import config as config_mod
from worker.errors import ConfigError

MINIMAL = """
[[sources]]
name = "menu"
url = "http://127.0.0.1:1/menu"
every = "5m"
"""


def load(project, toml: str, environ: dict[str, str] | None = None):
    return project.config(toml, environ)


def test_defaults_fill_worker_and_source(project) -> None:
    config = load(project, MINIMAL)
    source = config.source("menu")
    assert (source.method, source.every, source.keep, source.stale_after) == ("GET", 300.0, 100, 900.0)
    assert config.worker.feeds_dir == project.root / "feeds"
    assert config.worker.database == f"sqlite:///{project.root / 'data' / 'signfeed.db'}"
    assert (config.worker.script_timeout, config.worker.script_memory, config.worker.concurrency) == (10.0, 64, 8)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2d", 172800)])
def test_every_accepts_durations(text: str, seconds: float) -> None:
    assert config_mod.parse_duration(text, "x") == seconds


def test_secrets_from_env_file_value_and_inline(project) -> None:
    project.write("secrets/s", "from-file\n")
    config = load(project, """
[secrets]
A = { env = "SF_A" }
B = { file = "secrets/s" }
C = { value = "inline-secret" }
URL = "http://127.0.0.1:1"
""" + MINIMAL.replace("http://127.0.0.1:1", "<URL>"), environ={"SF_A": "from-env"})
    assert dict(config.secrets.values) == {"A": "from-env", "B": "from-file", "C": "inline-secret",
                                           "URL": "http://127.0.0.1:1"}
    assert config.secrets.secret == {"A", "B", "C"}
    assert config.secrets.substitute("<URL>/x?<A>&<div>") == "http://127.0.0.1:1/x?from-env&<div>"


def test_cron_schedule_sets_stale_default_from_its_period(project) -> None:
    config = load(project, MINIMAL.replace('every = "5m"', 'cron = "*/10 * * * *"'))
    assert (config.source("menu").cron, config.source("menu").stale_after) == ("*/10 * * * *", 1800.0)


ERRORS = [
    (MINIMAL + 'colour = "red"\n', """[[sources]] "menu": unknown key 'colour'"""),
    ("[worker]\nthreads = 2\n" + MINIMAL, "[worker]: unknown key 'threads'"),
    (MINIMAL + MINIMAL, '[[sources]] "menu": duplicate name'),
    (MINIMAL + 'pre_request = "missing.js"\n', '[[sources]] "menu".pre_request:'),
    (MINIMAL.replace("/menu", "/menu?key=<API_KEY>"),
     "uses undeclared placeholder <API_KEY>; declare it in [secrets]"),
    (MINIMAL.replace('every = "5m"', 'every = "5 minutes"'), "is not a duration"),
    (MINIMAL.replace('every = "5m"', 'cron = "61 * * * *"'), "is not a valid crontab line"),
    (MINIMAL.replace('every = "5m"', ""), "give exactly one of every"),
    (MINIMAL.replace('"menu"', '"Menu Board"'), "use only a-z, 0-9, _ and -"),
    ("[worker]\ntimezone = \"Mars/Base\"\n" + MINIMAL, "unknown time zone 'Mars/Base'"),
    ("[worker]\nconcurrency = 0\n" + MINIMAL, "[worker] concurrency: must be greater than 0"),
    ("[secrets]\nK = { env = \"SF_NOPE\" }\n" + MINIMAL, "environment variable SF_NOPE is not set"),
    ("[secrets]\nK = { file = \"nope\" }\n" + MINIMAL, "[secrets] K: cannot read"),
    (MINIMAL + '[[feeds]]\noutput = "a.html"\ntemplate = "a.j2"\nsources = ["nope"]\n', "unknown source 'nope'"),
    (MINIMAL + '[[feeds]]\noutput = "a.html"\ntemplate = "none.j2"\nsources = ["menu"]\n',
     "template 'none.j2' not found"),
    (MINIMAL + '[[feeds]]\noutput = "../x.html"\ntemplate = "a.j2"\nsources = ["menu"]\n', "must be a plain file name"),
    (MINIMAL + '[[feeds]]\noutput = "menu.json"\ntemplate = "board.html.j2"\nsources = ["menu"]\n', "clashes"),
    ("[worker\n", "not valid TOML"),
    (MINIMAL.replace('every = "5m"', 'cron = "0 0 31 2 *"'), "never fires (e.g. 31 February)"),
    ("worker = 5\n" + MINIMAL, "[worker]: expected a table, got 5"),
    ("secrets = 5\n" + MINIMAL, "[secrets]: expected a table, got 5"),
    ("[worker]\ntimeout = inf\n" + MINIMAL, "[worker] timeout: inf is out of range"),
    ("[worker]\ntimeout = nan\n" + MINIMAL, "[worker] timeout: nan is out of range"),
    (MINIMAL.replace('every = "5m"', 'every = "99999999999999999999d"'), "is longer than a year"),
    ("", "no [[sources]]: add at least one"),
    (MINIMAL + 'headers = { X-Name = "café" }\n',
     '[[sources]] "menu".headers.X-Name: HTTP headers carry ASCII only; percent-encode the value'),
    ("[worker]\ntimezone = \"UTC\"\n", "no [[sources]]: add at least one"),
    (MINIMAL.replace("http://127.0.0.1:1/menu", "ftp://127.0.0.1/x"),
     """[[sources]] "menu".url: 'ftp://127.0.0.1/x' is not an http:// or https:// URL with a host"""),
    (MINIMAL.replace("http://127.0.0.1:1/menu", "127.0.0.1/menu"), "is not an http:// or https:// URL with a host"),
    ("[secrets]\nK = { value = \"\" }\n" + MINIMAL, "[secrets] K: the value is empty; a secret needs a value"),
]


@pytest.mark.parametrize(("toml", "message"), ERRORS)
def test_config_mistakes_give_one_clear_line(project, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(project, toml)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_config_errors_name_the_file(project) -> None:
    with pytest.raises(ConfigError, match=r"^config.toml: \[worker\]: unknown key 'timout'"):
        load(project, "[worker]\ntimout = 5\n" + MINIMAL)


def test_top_level_errors_name_the_file_once(project) -> None:
    with pytest.raises(ConfigError, match=r"^config.toml: top level: unknown key 'feed' \(allowed: "):
        load(project, MINIMAL + "[[feed]]\noutput = 'x'\n")


def test_url_placeholder_filled_by_a_secret_is_checked_but_never_shown(project) -> None:
    with pytest.raises(ConfigError) as info:
        load(project, '[secrets]\nBASE = { value = "ftp://secret-host" }\n' + MINIMAL.replace(
            "http://127.0.0.1:1/menu", "<BASE>/menu"))
    assert str(info.value) == ("""config.toml: [[sources]] "menu".url: '<BASE>/menu' is not an http:// or https:// """
                               "URL with a host")


def test_empty_secret_from_environment_or_file_is_a_config_error(project) -> None:
    with pytest.raises(ConfigError, match=r"\[secrets\] K: the environment variable SF_K is empty; a secret"):
        load(project, '[secrets]\nK = { env = "SF_K" }\n' + MINIMAL, environ={"SF_K": ""})
    project.write("secrets/k", "\n")
    with pytest.raises(ConfigError, match=r"\[secrets\] K: the file .*secrets/k is empty; a secret needs a value"):
        load(project, '[secrets]\nK = { file = "secrets/k" }\n' + MINIMAL)


def test_config_saved_with_a_byte_order_mark_loads(project) -> None:
    project.write("config.toml", "")
    (project.root / "config.toml").write_text("\ufeff" + MINIMAL, encoding="utf-8")
    assert config_mod.load(project.root / "config.toml", environ={}).sources[0].name == "menu"


def test_non_utf8_script_is_a_one_line_config_error(project) -> None:
    project.write("jobs/latin1.js", "")
    (project.root / "jobs/latin1.js").write_bytes("// caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"pre-request script .*latin1.js is not UTF-8 \(byte 6\); save it as UTF-8"):
        load(project, MINIMAL + 'pre_request = "latin1.js"\n')


def test_config_path_that_is_a_folder_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        config_mod.load(tmp_path)


def test_missing_config_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file; pass --config PATH"):
        config_mod.load(tmp_path / "nope.toml")


def test_bundled_config_loads() -> None:
    config = config_mod.load(Path(__file__).parent.parent / "config.toml", environ={})
    assert {"weather", "calendar", "menu", "news"} <= {s.name for s in config.sources}
