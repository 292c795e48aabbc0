"""Scheduling: DST-proof triggers, one run per source at a time, reload, stale re-rendering, a live daemon."""

import itertools
import json
import logging
import os
import threading
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from conftest import Api, Project, seed_config

from worker.config import Source
from worker.errors import WorkerError
from worker.scheduler import REDRAW_JOB, SWEEP_JOB, Daemon, LocalCronTrigger, hold_daemon_lock, trigger_for

NY = ZoneInfo("America/New_York")


def fire_times(trigger, start: datetime, end: datetime) -> list[datetime]:
    """What APScheduler would fire between start and end (its own loop: next time after the previous)."""
    times, previous, now = [], None, start
    while (nxt := trigger.get_next_fire_time(previous, now)) is not None and nxt < end:
        times.append(nxt)
        previous = now = nxt
        assert len(times) < 500, "trigger does not make progress"
    return times


def local_day(year: int, month: int, day: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, day, tzinfo=NY)
    return start, datetime(year, month, day + 1, tzinfo=NY)


@pytest.mark.parametrize(("day", "runs"), [((2026, 3, 8), 23), ((2026, 11, 1), 25), ((2026, 7, 1), 24)])
def test_hourly_interval_counts_real_hours_across_dst(day, runs: int) -> None:
    start, end = local_day(*day)
    trigger = trigger_for(Source(name="s", url="u", every=3600.0), "America/New_York", now=start)
    times = fire_times(trigger, start, end)
    assert len(times) == runs
    utc = [t.astimezone(ZoneInfo("UTC")) for t in times]  # same-zone subtraction would ignore the offsets
    assert all((b - a) == timedelta(hours=1) for a, b in itertools.pairwise(utc))


def test_cron_fires_once_at_a_repeated_local_time_when_clocks_go_back() -> None:
    start, end = local_day(2026, 11, 1)
    times = fire_times(LocalCronTrigger("30 1 * * *", "America/New_York"), start, end)
    assert [t.isoformat() for t in times] == ["2026-11-01T01:30:00-04:00"]


def test_cron_skips_a_local_time_that_does_not_exist_when_clocks_go_forward() -> None:
    start, end = local_day(2026, 3, 8)
    assert fire_times(LocalCronTrigger("30 2 * * *", "America/New_York"), start, end) == []
    half_hourly = fire_times(LocalCronTrigger("*/30 * * * *", "America/New_York"), start, end)
    assert len(half_hourly) == 46
    assert "2026-03-08T03:00:00-04:00" in [t.isoformat() for t in half_hourly]


def test_cron_every_half_hour_fires_each_wall_time_once_on_the_long_day() -> None:
    start, end = local_day(2026, 11, 1)
    times = fire_times(LocalCronTrigger("*/30 * * * *", "America/New_York"), start, end)
    walls = [t.strftime("%H:%M") for t in times]
    assert len(times) == 48 and len(set(walls)) == 48


def test_cron_asked_inside_the_repeated_hour_moves_forward() -> None:
    trigger = LocalCronTrigger("30 1 * * *", "America/New_York")
    previous = datetime(2026, 11, 1, 1, 30, tzinfo=NY)  # the first 01:30 (EDT)
    inside_repeat = datetime(2026, 11, 1, 1, 40, fold=1, tzinfo=NY)  # 01:40 EST
    assert trigger.get_next_fire_time(previous, inside_repeat) == datetime(2026, 11, 2, 1, 30, tzinfo=NY)


def daemon_for(project: Project, api: Api, make_deps, extra: str = "") -> Daemon:
    config = project.config(seed_config(api, extra))
    return Daemon(str(config.path), deps=make_deps(config))


def test_reload_reschedules_changed_added_and_removed_sources(api: Api, project: Project, make_deps) -> None:
    api.json("/menu", {"items": []})
    daemon = daemon_for(project, api, make_deps)
    assert {j.id for j in daemon.scheduler.get_jobs()} == {"menu", SWEEP_JOB}
    project.write("config.toml", seed_config(api).replace('every = "5m"', 'every = "1m"').replace(
        'name = "menu"', 'name = "lunch"') .replace('sources = ["menu"]', 'sources = ["lunch"]')
        + f'\n[[sources]]\nname = "weather"\nurl = "{api.url}/weather"\ncron = "*/10 * * * *"\n')
    assert daemon.reload() is True
    jobs = {j.id: j for j in daemon.scheduler.get_jobs()}
    assert set(jobs) == {"lunch", "weather", SWEEP_JOB, REDRAW_JOB}  # templates may have changed
    assert jobs["lunch"].trigger.every == 60.0
    assert isinstance(jobs["weather"].trigger, LocalCronTrigger)


def test_a_source_named_like_a_daemon_job_does_not_replace_it(api: Api, project: Project, make_deps) -> None:
    config = seed_config(api).replace('name = "menu"', 'name = "stale-sweep"').replace(
        'sources = ["menu"]', 'sources = ["stale-sweep"]')
    loaded = project.config(config)
    daemon = Daemon(str(loaded.path), deps=make_deps(loaded))
    jobs = sorted((j.id, j.func.__name__) for j in daemon.scheduler.get_jobs())
    assert jobs == [("signfeed:stale-sweep", "sweep_stale"), ("stale-sweep", "run_job")]


def test_reload_with_broken_config_keeps_the_running_one(api: Api, project: Project, make_deps, caplog) -> None:
    daemon = daemon_for(project, api, make_deps)
    project.write("config.toml", seed_config(api) + "\nbogus = 1\n")
    assert daemon.reload() is False
    assert {j.id for j in daemon.scheduler.get_jobs()} == {"menu", SWEEP_JOB}
    assert daemon.config.source("menu").every == 300.0
    assert ("reload rejected, keeping the running config: config.toml: [[feeds]] \"board.html\": "
            "unknown key 'bogus'") in caplog.text


def test_reload_with_script_syntax_error_is_rejected(api: Api, project: Project, make_deps, caplog) -> None:
    daemon = daemon_for(project, api, make_deps)
    project.write("jobs/oauth_token.js", "const x = ;\n")
    assert daemon.reload() is False
    assert "menu: jobs/oauth_token.js:1: SyntaxError" in caplog.text


def test_daemon_refuses_to_start_with_a_script_syntax_error(api: Api, project: Project, make_deps) -> None:
    from worker.errors import ConfigError

    project.write("jobs/oauth_token.js", "let a = 1;\nif (a {\n")
    config = project.config(seed_config(api))
    with pytest.raises(ConfigError, match=r"^menu: jobs/oauth_token.js:2: SyntaxError"):
        Daemon(str(config.path), deps=make_deps(config))


def test_stale_data_rerenders_feeds_with_the_stale_flag_once(api: Api, project: Project, make_deps, clock) -> None:
    api.json("/menu", {"title": "Lunch", "items": []})
    daemon = daemon_for(project, api, make_deps, 'stale_after = "15m"')
    daemon.run_job("menu")
    assert daemon.stale_due["menu"] == clock.now + timedelta(minutes=15)
    html_fresh = project.feed("board.html").read_text()
    api.raw("/menu", b"down", status=500)
    clock.advance(14 * 60)
    daemon.run_job("menu")
    daemon.sweep_stale()
    assert project.feed("board.html").read_text() == html_fresh
    clock.advance(2 * 60)
    daemon.sweep_stale()
    assert json.loads(project.feed("menu.json").read_text())["stale"] is True
    assert "stale" in project.feed("board.html").read_text()
    before = project.feed("board.html").stat().st_mtime_ns
    daemon.sweep_stale()
    assert project.feed("board.html").stat().st_mtime_ns == before


def test_interval_sources_are_phased_by_name_across_their_period() -> None:
    from worker.scheduler import phase

    phases = [phase(f"room{i}", 60.0) for i in range(1000)]
    assert all(0 <= p < 60 for p in phases)
    assert phase("room1", 60.0) == phase("room1", 60.0)
    per_10s = [sum(1 for p in phases if k * 10 <= p < (k + 1) * 10) for k in range(6)]
    assert min(per_10s) > 120, per_10s  # ~167 each: no burst at one instant


@pytest.mark.parametrize(("age", "failing", "expected"), [
    (None, False, True), (299, False, False), (300, False, True), (3600, False, True), (30, True, True)])
def test_start_fetches_failing_missing_or_old_data_at_once_and_fresh_data_at_its_phase(
        age: int | None, failing: bool, expected: bool) -> None:
    from worker.scheduler import overdue

    source = Source(name="menu", url="u", every=300.0, stale_after=900.0)
    now = datetime(2026, 12, 3, 12, tzinfo=NY)
    assert overdue(source, None if age is None else now - timedelta(seconds=age), now, failing=failing) is expected


def test_a_source_whose_last_run_failed_is_pulled_at_start_up_even_with_fresh_data(api: Api, project: Project,
                                                                                  make_deps, clock) -> None:
    api.json("/menu", {"items": []})
    daemon_for(project, api, make_deps).run_job("menu")
    api.raw("/menu", b"down", status=500)
    clock.advance(30)
    daemon_for(project, api, make_deps).run_job("menu")  # fresh data (30 s old), but the last run failed
    restarted = daemon_for(project, api, make_deps)
    assert restarted.deps.store.failing_sources() == {"menu"}
    # At once (within the start-up spread), not at its phase on the 5-minute grid (194.675 s in).
    assert clock.now <= restarted.scheduler.get_job("menu").next_run_time < clock.now + timedelta(seconds=1)


@pytest.mark.parametrize(("due", "concurrency", "seconds"), [(5, 8, 0.125), (10_000, 32, 62.5), (0, 8, 0.0)])
def test_start_up_pulls_are_spread_only_as_much_as_the_threads_need(due: int, concurrency: int,
                                                                    seconds: float) -> None:
    from worker.scheduler import startup_window

    assert startup_window(due, concurrency) == seconds


def test_interval_trigger_starts_at_the_sources_phase_and_returns_to_it_after_a_forced_run() -> None:
    from worker.scheduler import phase

    now = datetime(2026, 12, 3, 12, tzinfo=NY)
    on_phase = now + timedelta(seconds=phase("menu", 300.0))
    trigger = trigger_for(Source(name="menu", url="u", every=300.0), "America/New_York", now)
    assert trigger.get_next_fire_time(None, now) == on_phase
    # The start-up run happens at `now`, off the grid; the next one is back on the source's phase, at least
    # half a period later (so it cannot collide with the start-up run still queued).
    expected = on_phase if on_phase - now >= timedelta(seconds=150) else on_phase + timedelta(minutes=5)
    assert trigger.get_next_fire_time(now, now) == expected
    assert trigger.get_next_fire_time(on_phase, on_phase) == on_phase + timedelta(minutes=5)


def test_live_daemon_keeps_a_fast_source_on_time_while_others_hang_drip_and_spin(api: Api, project: Project,
                                                                                  make_deps, caplog) -> None:
    """A 1 s source next to a hung API, a dripping API and a spinning script: it keeps landing on time,
    and each bad one ends within its 2 s deadline."""
    release = threading.Event()

    def drip():
        yield b'{"items": ['
        while not release.wait(0.3):
            yield b" "

    api.json("/menu", {"items": [1]})
    api.routes["/hung"] = lambda seen: (release.wait(30), (200, {}, b"{}"))[1]
    api.routes["/drip"] = lambda seen: (200, {"Content-Type": "application/json"}, drip())
    project.write("jobs/spin.js", "while (true) {}\n")
    toml = seed_config(api, 'every = "1s"').replace('every = "5m"\n', "")
    toml = toml.replace('pre_request = "oauth_token.js"\n', "")
    for name, extra in (("hung", ""), ("drip", ""), ("spinner", 'pre_request = "spin.js"\n')):
        path = "menu" if name == "spinner" else name
        toml += f'[[sources]]\nname = "{name}"\nurl = "{api.url}/{path}"\nevery = "1s"\n'
        toml += f"timeout = 2\nretries = 0\n{extra}"
    config = project.config(toml)
    daemon = Daemon(str(config.path), deps=make_deps(config))
    daemon.deps.clock = lambda: datetime.now(NY)
    starts: list[float] = []
    errors: dict[str, str] = {}
    enough = threading.Event()
    original = daemon.run_job

    def observed(name: str):
        if name == "menu":
            starts.append(time.monotonic())
        result = original(name)
        if result is not None and result.error:
            errors.setdefault(name, result.error)
        if len(starts) >= 6 and len(errors) == 3:
            enough.set()
        return result

    daemon.run_job = observed  # type: ignore[method-assign]
    for source in config.sources:
        now = datetime.now(NY)
        daemon._schedule(source, now, first_run=now)
    caplog.set_level(logging.INFO)
    daemon.scheduler.start()
    try:
        assert enough.wait(20), f"menu ran {len(starts)} times; errors so far: {errors}"
    finally:
        release.set()
        daemon.stop_scheduler()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert max(gaps) < 1.5, gaps
    assert errors["hung"] == f"hung: read from {api.url} timed out after 2s (no data)"
    assert errors["drip"].startswith(f"drip: total deadline passed while reading from {api.url}")
    assert errors["spinner"] == "spinner: pre-request script timed out after 2s (jobs/spin.js)"
    assert "previous run has not finished" in caplog.text


def test_first_success_after_a_stale_spell_clears_the_stale_badge(api: Api, project: Project, make_deps,
                                                                   clock) -> None:
    api.json("/menu", {"title": "Lunch", "items": []})
    daemon = daemon_for(project, api, make_deps, 'stale_after = "15m"')
    daemon.run_job("menu")
    clock.advance(20 * 60)  # the daemon was down: no runs at all
    daemon.mark_stale("menu")
    assert json.loads(project.feed("menu.json").read_text())["stale"] is True
    assert daemon.run_job("menu").status == "unchanged"
    assert json.loads(project.feed("menu.json").read_text())["stale"] is False
    assert "stale" not in project.feed("board.html").read_text()


def test_a_second_daemon_on_the_same_database_is_refused_until_the_first_stops(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/signfeed.db"
    first = hold_daemon_lock(url)
    with pytest.raises(WorkerError) as info:
        hold_daemon_lock(url)
    assert str(info.value) == (f"another signfeed daemon (pid {os.getpid()}) is running on {tmp_path}/signfeed.db; "
                               "stop it first (systemctl stop signfeed), or give this config its own database")
    first.close()
    hold_daemon_lock(url).close()


def test_a_success_the_sweep_has_not_heard_of_is_neither_called_stale_nor_hides_the_next_stale_spell(
        api: Api, project: Project, make_deps, clock, caplog) -> None:
    from worker.pipeline import run_source

    api.json("/menu", {"title": "Lunch", "items": []})
    daemon = daemon_for(project, api, make_deps, 'stale_after = "15m"')
    daemon.run_job("menu")
    clock.advance(16 * 60)
    # A run that has recorded its success but not yet returned to run_job, which updates stale_due.
    run_source(daemon.config.source("menu"), daemon.config, daemon.deps)
    daemon.sweep_stale()
    assert "data is stale" not in caplog.text
    assert daemon.stale_due["menu"] == clock.now + timedelta(minutes=15)
    api.raw("/menu", b"down", status=500)
    clock.advance(16 * 60)
    daemon.run_job("menu")
    daemon.sweep_stale()
    assert json.loads(project.feed("menu.json").read_text())["stale"] is True
    assert "menu: data is stale (no successful pull for 0:15:00); feeds say so" in caplog.text
