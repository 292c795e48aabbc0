"""The daemon: APScheduler fires each source's run_source on its schedule; signals stop or reload it."""

import logging
import os
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

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
STALE_SUFFIX = ":stale"


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


def trigger_for(source: Source, timezone: str) -> BaseTrigger:
    """The APScheduler trigger for a source's `every` or `cron`."""
    if source.cron:
        return LocalCronTrigger(source.cron, timezone)
    # Interval triggers count elapsed seconds, so an hourly source runs 25 times on the day clocks go back.
    return IntervalTrigger(seconds=int(source.every or 60), timezone=timezone, jitter=int(source.jitter) or None)


def _remove_partial_feeds(feeds_dir: Path) -> None:
    """Temporary files a kill left mid-write; screens never saw them (rename is the only publish)."""
    for leftover in feeds_dir.glob(".*.tmp") if feeds_dir.is_dir() else ():
        leftover.unlink(missing_ok=True)


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
        # APScheduler's shutdown holds its job-store lock while it waits for running jobs, so a job that
        # adds a job then would deadlock it; jobs add under this lock and not at all once closing.
        self._jobs_lock = threading.Lock()
        self._closing = False
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=self.config.worker.concurrency)},
            job_defaults=JOB_DEFAULTS,
            timezone=self.config.worker.timezone,
        )
        self.scheduler.add_listener(_on_skipped, EVENT_JOB_MAX_INSTANCES)
        now = self.deps.clock()
        for source in self.config.sources:
            self._schedule(source, first_run=now)
            self._schedule_stale_check(source.name)

    def _validate(self, config: Config) -> None:
        """Script syntax and templates are checked before any pull: a typo fails now, not at 3 a.m."""
        runner = self.deps.scripts if isinstance(self.deps.scripts, ScriptRunner) else ScriptRunner(size=1)
        for warning in require_valid(config, runner):
            log.warning("%s", warning)

    def _schedule(self, source: Source, first_run: datetime | None) -> None:
        extra = {"next_run_time": first_run} if first_run else {}
        self.scheduler.add_job(self.run_job, trigger_for(source, self.config.worker.timezone), args=(source.name,),
                               id=source.name, name=source.name, replace_existing=True, **extra)

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
            self._schedule_stale_check(name)
        return result

    def _schedule_stale_check(self, name: str) -> None:
        """Re-render a source's feeds the moment its data turns stale, so screens say so without a new pull."""
        state = self.deps.store.state(name)
        if state.last_success_at is None:
            return
        due = state.last_success_at + timedelta(seconds=self.config.source(name).stale_after, milliseconds=10)
        with self._jobs_lock:
            if not self._closing:
                self.scheduler.add_job(self.mark_stale, "date", run_date=max(due, self.deps.clock()), args=(name,),
                                       id=name + STALE_SUFFIX, replace_existing=True)

    def mark_stale(self, name: str) -> None:
        try:
            publish(self.config, self.deps, [name])
            log.warning("%s: data is stale (no successful pull for %s); feeds say so", name,
                        timedelta(seconds=self.config.source(name).stale_after))
        except WorkerError as exc:
            log.error("%s: %s", name, exc)

    def run(self, install_signals: bool = True) -> int:
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
                self._schedule(source, first_run=self.deps.clock())
        for name in old.keys() - {s.name for s in new.sources}:
            for job_id in (name, name + STALE_SUFFIX):
                if self.scheduler.get_job(job_id):
                    self.scheduler.remove_job(job_id)
        # Templates may have changed: redraw every feed from stored data, off the main thread.
        self.scheduler.add_job(self._render_all, id="reload-render", replace_existing=True)
        log.info("signfeed: reloaded %s (%d sources)", self.config_path, len(new.sources))
        return True

    def _render_all(self) -> None:
        try:
            render_all(self.config, self.deps)
        except WorkerError as exc:
            log.error("re-render after reload: %s", exc)

    def stop_scheduler(self) -> None:
        """Stop firing and wait for runs in flight (they may not add jobs now: see _jobs_lock)."""
        with self._jobs_lock:
            self._closing = True
        self.scheduler.shutdown(wait=True)

    def shutdown(self) -> None:
        self.stop_scheduler()
        self.deps.close()
        log.info("signfeed: stopped")
