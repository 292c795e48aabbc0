"""The daemon: APScheduler fires each source's run_source on its schedule; signals stop or reload it."""

import fcntl
import logging
import math
import os
import signal
import threading
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from worker import config as config_mod
from worker.check import require_valid
from worker.config import Config, Source
from worker.errors import WorkerError
from worker.pipeline import Deps, RunResult, open_deps, publish, render_all, run_source
from worker.render import Renderer
from worker.script import ScriptRunner

log = logging.getLogger(__name__)

# APScheduler's default grace of 1 s silently drops a run that starts late (busy machine, suspend);
# None runs it however late, and coalesce folds a backlog of missed slots into that one run.
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
STALE_SWEEP = 15  # seconds between checks for data that just turned stale


class LocalCronTrigger(BaseTrigger):
    """A crontab line read as local wall-clock times: each existing local time fires once.

    APScheduler 3's CronTrigger fires a repeated wall time twice when clocks go back, and asked again
    inside that hour it returns the same past instant, which spins its scheduler loop forever. Matching
    on naive wall time (computed as if in UTC) and mapping to the first occurrence avoids both.
    """

    def __init__(self, expr: str, timezone: str) -> None:
        self.tz = ZoneInfo(timezone)
        self.wall = CronTrigger.from_crontab(expr, timezone=UTC)

    def _wall(self, moment: datetime) -> datetime:
        return moment.astimezone(self.tz).replace(tzinfo=UTC, fold=0)

    def get_next_fire_time(self, previous: datetime | None, now: datetime) -> datetime | None:
        wall_prev = self._wall(previous) if previous else None
        wall_now = self._wall(now)
        while (candidate := self.wall.get_next_fire_time(wall_prev, wall_now)) is not None:
            real = candidate.replace(tzinfo=self.tz)  # fold=0: the first of a repeated local time
            exists = real.astimezone(UTC).astimezone(self.tz).replace(tzinfo=None) == real.replace(tzinfo=None)
            if exists and (previous is None or real > previous):
                return real
            wall_prev, wall_now = candidate, candidate + timedelta(seconds=1)
        return None

    def __str__(self) -> str:
        return f"local cron in {self.tz.key}"


def phase(name: str, every: float) -> float:
    """Seconds into its period at which a source fires: fixed per name, spread evenly over all names, so
    10,000 sources of one period start across the whole period instead of in one burst."""
    return (zlib.crc32(name.encode("utf-8")) % int(every * 1000)) / 1000


def overdue(source: Source, last_success: datetime | None, now: datetime, failing: bool = False) -> bool:
    """Whether a source must be pulled at start-up: its last run failed (a restart is often the fix, and its
    screen shows the error), or its data is missing or older than one period (a third of stale_after, which
    defaults to three periods). Fresh data waits for the source's phase."""
    if failing or last_success is None:
        return True
    return (now - last_success).total_seconds() >= source.stale_after / 3


class PhasedIntervalTrigger(BaseTrigger):
    """Every `every` seconds on a fixed grid (start + n × every, counted in UTC).

    Counting elapsed seconds keeps an hourly source hourly across DST (25 runs on the day clocks go back).
    The next fire is the first grid point at least half a period after the previous fire: a run forced off
    the grid (at start-up) neither drags the source into lockstep with every other source nor collides
    with the grid point right behind it while it is still queued.
    """

    def __init__(self, every: float, start: datetime, jitter: float = 0) -> None:
        self.every = every
        self.start = start.astimezone(UTC)
        self.jitter = jitter or None

    def get_next_fire_time(self, previous: datetime | None, now: datetime) -> datetime | None:
        after = previous + timedelta(seconds=self.every / 2) if previous else now
        steps = max(0, math.ceil((after - self.start).total_seconds() / self.every))
        fire = self.start + timedelta(seconds=steps * self.every)
        return self._apply_jitter(fire, self.jitter, now)

    def __str__(self) -> str:
        return f"every {self.every:g}s from {self.start:%H:%M:%S} UTC"


# Pulls one worker thread is assumed to finish per second at start-up. The threads alone would allow 10 (100 ms
# each), but first pulls cost more CPU than later ones (a new snapshot, a new feed file: 3.3 ms against 2.3 ms) and
# all of it runs under one GIL: at 8 a thread, 32 threads asked for 256 first pulls/s, within 15% of what one
# interpreter manages, and bench/scale.py's first-run lateness p99 swung 0.6-1.5 s between runs. 5 spreads 10,000
# first pulls over their 60 s period (capped there), the rate the schedule keeps anyway; a handful start at once.
STARTUP_PULLS_PER_THREAD = 5

# The daemon's own jobs: a ':' can't be in a source name, so no source's job can replace them.
SWEEP_JOB = "signfeed:stale-sweep"
REDRAW_JOB = "signfeed:reload-render"


def startup_window(due: int, concurrency: int) -> float:
    """Seconds over which the first pulls at start-up are spread so the thread pool keeps up with them."""
    return due / (concurrency * STARTUP_PULLS_PER_THREAD)


def trigger_for(source: Source, timezone: str, now: datetime | None = None) -> BaseTrigger:
    """The APScheduler trigger for a source's `every` (phased by name) or `cron`."""
    if source.cron:
        return LocalCronTrigger(source.cron, timezone)
    every = source.every or 60.0
    start = (now or datetime.now(UTC)) + timedelta(seconds=phase(source.name, every))
    return PhasedIntervalTrigger(every, start, source.jitter)


def _remove_partial_feeds(feeds_dir: Path) -> None:
    """Temporary files a kill left mid-write; screens never saw them (rename is the only publish)."""
    for leftover in feeds_dir.glob(".*.tmp") if feeds_dir.is_dir() else ():
        leftover.unlink(missing_ok=True)


def hold_daemon_lock(database_url: str) -> IO[str]:
    """An exclusive lock beside the database for as long as the returned file stays open.

    Two daemons on one database would pull every source twice and race on the feed files. flock is released by
    the kernel when the process dies, so a kill -9 never leaves a stale lock behind.
    """
    database = database_url.removeprefix("sqlite:///")
    handle = open(f"{database}.lock", "a+", encoding="utf-8")  # noqa: SIM115 (held open on purpose)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise WorkerError(f"another signfeed daemon (pid {holder}) is running on {database}; "
                          "stop it first (systemctl stop signfeed), or give this config its own database") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _on_skipped(event: JobSubmissionEvent) -> None:
    log.warning("%s: previous run has not finished (running, or queued behind busy workers: see concurrency); "
                "this run is skipped", event.job_id)


class Daemon:
    """`signfeed run`: schedule every source until SIGTERM/SIGINT; SIGHUP reloads config.toml."""

    def __init__(self, config_path: str, deps: Deps | None = None) -> None:
        self.config_path = config_path
        self.config = config_mod.load(config_path)
        self.deps = deps or open_deps(self.config)
        self._validate(self.config)
        self._stop = threading.Event()
        self._reload = threading.Event()
        # When each source's data turns stale, and which are already shown as stale. Kept here and swept
        # every few seconds: a job per run would cost a scheduler wake-up per pull, and a job added by a
        # running job deadlocks APScheduler's shutdown (it holds its job-store lock while waiting).
        self.stale_due: dict[str, datetime] = {}
        self._shown_stale: set[str] = set()
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=self.config.worker.concurrency)},
            job_defaults=JOB_DEFAULTS,
            timezone=self.config.worker.timezone,
        )
        self.scheduler.add_listener(_on_skipped, EVENT_JOB_MAX_INSTANCES)
        now = self.deps.clock()
        successes, failing = self.deps.store.last_successes(), self.deps.store.failing_sources()
        due_now = {s.name for s in self.config.sources
                   if overdue(s, successes.get(s.name), now, failing=s.name in failing)}
        window = startup_window(len(due_now), self.config.worker.concurrency)
        for source in self.config.sources:
            last = successes.get(source.name)
            if last is not None:
                self.stale_due[source.name] = last + timedelta(seconds=source.stale_after)
            first = None
            if source.name in due_now:
                period = source.every or source.stale_after / 3
                first = now + timedelta(seconds=min(window, period) * phase(source.name, period) / period)
            self._schedule(source, now, first_run=first)
        self.scheduler.add_job(self.sweep_stale, "interval", seconds=STALE_SWEEP, id=SWEEP_JOB,
                               next_run_time=now)

    def _validate(self, config: Config) -> None:
        """Script syntax and templates are checked before any pull: a typo fails now, not at 3 a.m."""
        runner = self.deps.scripts if isinstance(self.deps.scripts, ScriptRunner) else ScriptRunner(size=1)
        for warning in require_valid(config, runner):
            log.warning("%s", warning)

    def _schedule(self, source: Source, now: datetime, first_run: datetime | None) -> None:
        extra = {"next_run_time": first_run} if first_run else {}
        trigger = trigger_for(source, self.config.worker.timezone, now)
        self.scheduler.add_job(self.run_job, trigger, args=(source.name,), id=source.name, name=source.name,
                               replace_existing=True, **extra)

    def run_job(self, name: str) -> RunResult | None:
        """One scheduled run, against the config in force now; nothing it raises may stop the daemon."""
        config = self.config
        try:
            result = run_source(config.source(name), config, self.deps)
        except WorkerError as exc:  # store or render trouble outside the source's own error handling
            log.error("%s: %s", name, exc)
            return None
        except Exception:
            log.exception("%s: unexpected error; the daemon carries on", name)
            return None
        if result.ok:
            self.stale_due[name] = result.started_at + timedelta(seconds=config.source(name).stale_after)
            self._shown_stale.discard(name)
        return result

    def sweep_stale(self) -> None:
        """Re-render the feeds of sources whose data just turned stale, so screens say so without a pull."""
        now = self.deps.clock()
        for name, due in list(self.stale_due.items()):
            if due <= now and name not in self._shown_stale:
                self.mark_stale(name)

    def mark_stale(self, name: str) -> None:
        """Redraw a source's feeds as stale, unless the database shows a success this sweep did not know of."""
        try:
            stale_after = timedelta(seconds=self.config.source(name).stale_after)
            # A run may have succeeded after stale_due was read (it is updated once run_source returns):
            # the database is the truth, and a false "stale" would also hide the next real stale spell.
            last = self.deps.store.state(name).last_success_at
            if last is not None and last + stale_after > self.deps.clock():
                self.stale_due[name] = last + stale_after
                return
            self._shown_stale.add(name)
            publish(self.config, self.deps, [name])
            log.warning("%s: data is stale (no successful pull for %s); feeds say so", name, stale_after)
        except WorkerError as exc:
            log.error("%s: %s", name, exc)

    def run(self, install_signals: bool = True) -> int:
        lock = hold_daemon_lock(self.config.worker.database)
        try:
            return self._serve(install_signals)
        finally:
            lock.close()

    def _serve(self, install_signals: bool) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, self._signal_stop)
            signal.signal(signal.SIGINT, self._signal_stop)
            signal.signal(signal.SIGHUP, self._signal_reload)
        _remove_partial_feeds(self.config.worker.feeds_dir)
        self.scheduler.start()
        log.info("signfeed: %d sources scheduled from %s", len(self.config.sources), self.config_path)
        while not self._stop.is_set():
            self._stop.wait(1.0)
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
        self.shutdown()
        return 0

    def _signal_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop.is_set():
            # A second Ctrl-C/SIGTERM: the operator will not wait for a hung request; feeds and the
            # database are crash-safe, so leaving now loses only the runs in flight.
            log.warning("signfeed: %s again; exiting without waiting", signal.Signals(signum).name)
            os._exit(1)
        log.info("signfeed: %s received; finishing runs in flight (send again to exit at once)",
                 signal.Signals(signum).name)
        self._stop.set()

    def _signal_reload(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload.set()

    def stop(self) -> None:
        self._stop.set()

    def reload(self) -> bool:
        """Swap in config.toml as it is now; an invalid one is logged and the running one kept."""
        try:
            new = config_mod.load(self.config_path)
            self._validate(new)
        except WorkerError as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            return False
        old = {s.name: s for s in self.config.sources}
        self.config = new
        self.deps.renderer = Renderer(new.worker.templates_dir, new.worker.timezone)
        for source in new.sources:
            if old.get(source.name) != source:
                # New and changed sources run at once, so an edit shows up without waiting a whole period.
                now = self.deps.clock()
                self._schedule(source, now, first_run=now)
        for name in old.keys() - {s.name for s in new.sources}:
            if self.scheduler.get_job(name):
                self.scheduler.remove_job(name)
            self.stale_due.pop(name, None)
        # Templates may have changed: redraw every feed from stored data, off the main thread.
        self.scheduler.add_job(self._render_all, id=REDRAW_JOB, replace_existing=True)
        log.info("signfeed: reloaded %s (%d sources)", self.config_path, len(new.sources))
        return True

    def _render_all(self) -> None:
        try:
            render_all(self.config, self.deps)
        except WorkerError as exc:
            log.error("re-render after reload: %s", exc)

    def stop_scheduler(self) -> None:
        """Stop firing and wait for runs in flight (runs never add jobs: see stale_due)."""
        self.scheduler.shutdown(wait=True)

    def shutdown(self) -> None:
        self.stop_scheduler()
        self.deps.close()
        log.info("signfeed: stopped")
