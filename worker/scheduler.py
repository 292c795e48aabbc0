"""The daemon: APScheduler fires each source's run_source on its schedule; signals stop or reload it."""

import logging
import signal
import threading
from datetime import datetime
from types import FrameType

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from worker import config as config_mod
from worker.config import Config, Source
from worker.errors import WorkerError
from worker.pipeline import Deps, open_deps, run_source
from worker.render import Renderer

log = logging.getLogger(__name__)

# APScheduler's default grace of 1 s silently drops a run that starts late (busy machine, suspend);
# None runs it however late, and coalesce folds a backlog of missed slots into that one run.
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}


def trigger_for(source: Source, timezone: str) -> BaseTrigger:
    """The APScheduler trigger for a source's `every` or `cron`."""
    jitter = int(source.jitter) or None
    if source.cron:
        return CronTrigger.from_crontab(source.cron, timezone=timezone)
    # Interval triggers count elapsed seconds, so an hourly source stays hourly across DST changes.
    return IntervalTrigger(seconds=int(source.every or 60), timezone=timezone, jitter=jitter)


def guarded(source: Source, config: Config, deps: Deps) -> None:
    """One scheduled run; nothing it raises may take the daemon down."""
    try:
        run_source(source, config, deps)
    except WorkerError as exc:  # store/render failures outside a source's own error handling
        log.error("%s: %s", source.name, exc)
    except Exception:
        log.exception("%s: unexpected error; the daemon carries on", source.name)


def _on_skipped(event: JobExecutionEvent) -> None:
    log.warning("%s: previous run still in progress; this run is skipped", event.job_id)


def build_scheduler(config: Config, deps: Deps, *, start_now: datetime | None = None) -> BackgroundScheduler:
    """A scheduler with one job per source; start_now makes every source run once at start-up."""
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=config.worker.concurrency)},
        job_defaults=JOB_DEFAULTS,
        timezone=config.worker.timezone,
    )
    scheduler.add_listener(_on_skipped, EVENT_JOB_MAX_INSTANCES)
    for source in config.sources:
        add_job(scheduler, source, config, deps, start_now)
    return scheduler


def add_job(scheduler: BackgroundScheduler, source: Source, config: Config, deps: Deps,
            start_now: datetime | None) -> None:
    extra = {"next_run_time": start_now} if start_now else {}
    scheduler.add_job(guarded, trigger_for(source, config.worker.timezone), args=(source, config, deps),
                      id=source.name, name=source.name, replace_existing=True, **extra)


class Daemon:
    """`signfeed run`: schedule every source until SIGTERM/SIGINT; SIGHUP reloads config.toml."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.config = config_mod.load(config_path)
        self.deps = open_deps(self.config)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.scheduler = build_scheduler(self.config, self.deps, start_now=self.deps.clock())

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, self._signal_stop)
            signal.signal(signal.SIGINT, self._signal_stop)
            signal.signal(signal.SIGHUP, self._signal_reload)
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
        log.info("signfeed: %s received; finishing runs in flight", signal.Signals(signum).name)
        self._stop.set()

    def _signal_reload(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload.set()

    def stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """Swap in a new config; an invalid one is logged and the running one kept."""
        try:
            new = config_mod.load(self.config_path)
        except WorkerError as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            return
        old_names = {s.name for s in self.config.sources}
        self.config = new
        self.deps.renderer = Renderer(new.worker.templates_dir, new.worker.timezone)
        for source in new.sources:
            add_job(self.scheduler, source, new, self.deps, None)
        for name in old_names - {s.name for s in new.sources}:
            self.scheduler.remove_job(name)
        log.info("signfeed: reloaded %s (%d sources)", self.config_path, len(new.sources))

    def shutdown(self) -> None:
        self.scheduler.shutdown(wait=True)
        self.deps.close()
        log.info("signfeed: stopped")
