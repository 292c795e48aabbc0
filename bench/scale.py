"""Many sources on the real daemon path: 10,000 sources every 60 s against a loopback API that answers in 100 ms.

    .venv/bin/python bench/scale.py --quick         # 1,000 sources for 60 s (about 2 minutes in all)
    .venv/bin/python bench/scale.py                 # 10,000 sources for 180 s (about 5 minutes in all)
    .venv/bin/python bench/scale.py --jitter 60     # the same with `jitter = 60` on every source

The worker side is signfeed's own daemon, worker.scheduler.Daemon as `signfeed run` builds it (config.load, open_deps,
one APScheduler job per source, first runs spread over the start-up window, the real run_source; no pre-request
script; one JSON feed per source, no HTML feeds). The API is bench/_mockapi.py in its own process (asyncio,
answers every request 100 ms after it arrives; each source's body changes on every 10th request to it, offset by
source, so ~10% of the sources change each minute).

Start lateness = the moment the scheduler's job function (Daemon.run_job) is entered minus the run's scheduled time
(from APScheduler's EVENT_JOB_EXECUTED), split into scheduler lag (EVENT_JOB_SUBMITTED) and executor queue wait.
Missed runs = EVENT_JOB_MISSED + EVENT_JOB_MAX_INSTANCES + scheduled times that never ran (coalesced or not
submitted by the end): every source should run at its start-up time and then at every fire its own trigger plans
(its phase grid, at least half a period after the previous fire) up to --duration.
The daemon is stopped --margin seconds after --duration, and its runs in flight and queued are allowed to finish.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common


class CountingHandler(logging.Handler):
    """Counts worker log records at WARNING and above and keeps the first few."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        if len(self.first) < 5:
            self.first.append(f"{record.levelname} {record.name}: {record.getMessage()[:300]}")


def write_project(root: Path, api: str, sources: int, every: int, concurrency: int, jitter: int) -> Path:
    root.mkdir(parents=True)
    lines = [
        "[worker]",
        'database = "sqlite:///data/signfeed.db"',
        'feeds_dir = "feeds"',
        f"concurrency = {concurrency}",
        "",
    ]
    for i in range(sources):
        lines += ["[[sources]]", f'name = "s{i:05d}"', f'url = "{api}/s/{i}"', f'every = "{every}s"']
        if jitter:
            lines.append(f"jitter = {jitter}")
        lines.append("")
    path = root / "config.toml"
    path.write_text("\n".join(lines))
    return path


def db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
               if p.exists())


class Recorder:
    """Per-run timings from the wrapped job function and APScheduler's events."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.submitted: dict[str, float] = {}
        self.runs: list[tuple[str, float, float, float, float]] = []  # id, scheduled, submitted, started, finished
        self.missed = 0
        self.max_instances = 0
        self.errors = 0
        self.other_jobs = 0
        self.in_flight = 0
        self.job_cpu = 0.0  # thread CPU spent inside the job function, summed over runs
        self.profile = False
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def hook(self, scheduler_mod: Any) -> None:
        """Time the job function: Daemon.run_job(self, name) in this build, guarded(source, ...) in older ones."""
        recorder = self

        def timed(fn: Any, name_of: Any) -> Any:
            def job(*args: Any) -> Any:
                recorder.started[name_of(args)] = time.time()
                with recorder._lock:
                    recorder.in_flight += 1
                profiler = cProfile.Profile(time.thread_time) if recorder.profile else None
                cpu = time.thread_time()
                try:
                    if profiler is None:
                        return fn(*args)
                    return profiler.runcall(fn, *args)
                finally:
                    spent = time.thread_time() - cpu
                    with recorder._lock:
                        recorder.in_flight -= 1
                        recorder.job_cpu += spent
                        if profiler is not None:
                            recorder.profiles.append(profiler)

            return job

        if hasattr(scheduler_mod.Daemon, "run_job"):  # looked up on the instance when each job is added
            scheduler_mod.Daemon.run_job = timed(scheduler_mod.Daemon.run_job, lambda a: a[1])
        else:
            scheduler_mod.guarded = timed(scheduler_mod.guarded, lambda a: a[0].name)

    def listen(self, scheduler: Any) -> None:
        from apscheduler import events as ev

        def on_submitted(event: Any) -> None:
            self.submitted[event.job_id] = time.time()

        def on_done(event: Any) -> None:
            if event.code == ev.EVENT_JOB_MISSED:
                self.missed += 1
                return
            if ":" in event.job_id:  # the daemon's own helper jobs (stale re-render checks), not pulls
                self.other_jobs += 1
                return
            if event.code == ev.EVENT_JOB_ERROR:
                self.errors += 1
            job = event.job_id
            self.runs.append((job, event.scheduled_run_time.timestamp(), self.submitted.get(job, float("nan")),
                              self.started.get(job, float("nan")), time.time()))

        def on_max_instances(event: Any) -> None:
            self.max_instances += 1

        scheduler.add_listener(on_submitted, ev.EVENT_JOB_SUBMITTED)
        scheduler.add_listener(on_done, ev.EVENT_JOB_EXECUTED | ev.EVENT_JOB_ERROR | ev.EVENT_JOB_MISSED)
        scheduler.add_listener(on_max_instances, ev.EVENT_JOB_MAX_INSTANCES)


class Sampler(threading.Thread):
    """Once a second: CPU seconds of this process, RSS, threads, runs in flight, database bytes."""

    def __init__(self, recorder: Recorder, db: Path, api_pid: int) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.recorder, self.db, self.api_pid = recorder, db, api_pid
        self.samples: list[tuple[float, float, int, int, int, float]] = []
        self.stop = threading.Event()

    def sample(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.samples.append((time.time(), usage.ru_utime + usage.ru_stime,
                             common.proc_status_kib(os.getpid(), "VmRSS"), self.recorder.in_flight,
                             db_bytes(self.db), common.proc_cpu_s(self.api_pid)))

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.sample()


def _cpu_between(samples: list[tuple[float, ...]], t0: float, t1: float) -> tuple[float, float]:
    """(CPU seconds, wall seconds) between the samples nearest t0 and t1."""
    inside = [s for s in samples if t0 - 0.6 <= s[0] <= t1 + 0.6]
    if len(inside) < 2:
        return float("nan"), float("nan")
    return inside[-1][1] - inside[0][1], inside[-1][0] - inside[0][0]


def _ms(x: float) -> str:
    return "nan" if x != x else (f"{x * 1000:.0f}" if abs(x) < 10 else f"{x * 1000:,.0f}")


def run(args: argparse.Namespace) -> int:
    import worker.scheduler as scheduler_mod

    extra = [f"run:      {args.sources:,} sources every {args.every} s, API answers after {args.delay_ms:g} ms, "
             f"[worker] concurrency = {args.concurrency}, jitter = {args.jitter}, {args.duration:g} s of schedule "
             f"(+{args.margin:g} s margin, then runs in flight finish)",
             f"needed:   Little's law: {args.sources / args.every:.0f} runs/s x {args.delay_ms / 1000:g} s = "
             f"{args.sources / args.every * args.delay_ms / 1000:.1f} runs in flight on average if spread evenly"]
    print(common.header("signfeed bench/scale.py: many sources on the real daemon path", extra), flush=True)
    root = Path(tempfile.mkdtemp(prefix="signfeed-bench-scale-"))
    handler = CountingHandler()
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    try:
        with common.MockAPI(delay_ms=args.delay_ms, extra_args=["--max-seconds", str(args.duration + 900)]) as api:
            print(f"mock API: {api.url} (pid {api.pid}); project in {root}", flush=True)
            config_path = write_project(root / "project", api.url, args.sources, args.every, args.concurrency,
                                        args.jitter)
            return _run_daemon(args, scheduler_mod, config_path, api, handler)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


class Run:
    """What one scale run measured, for the report."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def _what_if(args: argparse.Namespace, scheduler_mod: Any) -> list[str]:
    """The what-if patches this bench once offered are built into the daemon now (phased triggers, a keep-alive
    pool as wide as concurrency); the options stay accepted so old command lines still run."""
    notes = []
    if args.what_if_stagger:
        notes.append("--what-if-stagger: built in (PhasedIntervalTrigger); nothing patched")
    if args.what_if_keepalive:
        notes.append("--what-if-keepalive: built in (fetch.new_client(concurrency)); nothing patched")
    return notes


def _run_daemon(args: argparse.Namespace, scheduler_mod: Any, config_path: Path, api: common.MockAPI,
                handler: CountingHandler) -> int:
    recorder = Recorder()
    recorder.profile = bool(args.profile)
    for note in _what_if(args, scheduler_mod):
        print(f"WHAT-IF:  {note} (patched in this bench process; not what signfeed ships)", flush=True)
    stages = common.StageTimer(common.DAEMON_STAGES, time.thread_time) if args.stages else None
    recorder.hook(scheduler_mod)
    rss_before = common.proc_status_kib(os.getpid(), "VmRSS")
    api_before = api.stats()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    daemon = scheduler_mod.Daemon(str(config_path))
    init_cpu, init_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    db = Path(daemon.config.worker.database.removeprefix("sqlite:///"))
    out = Run(args=args, rec=recorder, db=db, db_start=db_bytes(db), init_wall=init_wall, init_cpu=init_cpu,
              rss_before=rss_before, rss_after_init=common.proc_status_kib(os.getpid(), "VmRSS"), handler=handler,
              stages=stages)
    recorder.listen(daemon.scheduler)
    sampler = Sampler(recorder, db, api.pid)
    # First runs are spread over the start-up window; later ones follow each source's phased trigger.
    jobs = [j for j in daemon.scheduler.get_jobs() if ":" not in j.id]
    out.first = {j.id: j.next_run_time.timestamp() for j in jobs}
    out.triggers = {j.id: j.trigger for j in jobs}
    out.t0 = min(out.first.values())
    sampler.sample()
    thread = threading.Thread(target=daemon.run, kwargs={"install_signals": False}, name="daemon")
    thread.start()
    sampler.start()
    print(f"Daemon() built in {init_wall:.2f} s ({init_cpu:.2f} s CPU: config.load, open_deps, checks, one job per "
          f"source); scheduler started {time.time() - out.t0:.2f} s after start_now; running ...", flush=True)
    stop_at = out.t0 + args.duration + args.margin
    while time.time() < stop_at:
        time.sleep(min(5.0, max(stop_at - time.time(), 0.01)))
        _progress(recorder, sampler, out.t0)
    out.stop_time = time.time()
    daemon.stop()
    thread.join(timeout=args.duration + 600)
    out.ended = time.time()
    sampler.stop.set()
    sampler.join()
    sampler.sample()
    out.samples = sampler.samples
    out.peak_kib = common.proc_status_kib(os.getpid(), "VmHWM")
    out.api = common.stats_delta(api_before, api.stats())
    # (job, scheduled, submitted, started, finished, is its first run)
    out.runs = sorted(((*r, abs(r[1] - out.first.get(r[0], -1)) < 1e-3) for r in recorder.runs),
                      key=lambda r: (r[1], r[3]))
    out.fires = int((out.stop_time - out.t0) // args.every) + 1
    _report(out)
    return 0


def _progress(recorder: Recorder, sampler: Sampler, t0: float) -> None:
    last = sampler.samples[-1] if sampler.samples else None
    if last is None:
        return
    print(f"  t={last[0] - t0:6.1f} s  runs done {len(recorder.runs):7,}  in flight {last[3]:3}  "
          f"RSS {last[2] / 1024:6.1f} MiB  db {last[4] / common.MIB:6.1f} MiB", file=sys.stderr, flush=True)


def _lateness_rows(runs: list[tuple[str, float, float, float, float, bool]]) -> list[list[str]]:
    rows = []
    groups = {"all runs": runs, "first runs (start-up)": [r for r in runs if r[5]],
              "periodic runs": [r for r in runs if not r[5]]} if runs else {}
    for label, group in groups.items():
        late = [r[3] - r[1] for r in group]
        lag = [r[2] - r[1] for r in group]
        wait = [r[3] - r[2] for r in group]
        dur = [r[4] - r[3] for r in group]
        rows.append([label, f"{len(group):,}", _ms(common.percentile(late, 50)), _ms(common.percentile(late, 99)),
                     _ms(max(late, default=float("nan"))), _ms(common.percentile(lag, 99)),
                     _ms(common.percentile(wait, 99)), _ms(common.percentile(dur, 50))])
    return rows


def _expected_times(trigger: Any, first: float, stop: float) -> set[float]:
    """The start-up run, then every fire the source's own trigger plans after it up to the stop."""
    times, previous = {round(first, 3)}, datetime.fromtimestamp(first, UTC)
    while (fire := trigger.get_next_fire_time(previous, previous)) is not None and fire.timestamp() <= stop:
        times.add(round(fire.timestamp(), 3))
        previous = fire
    return times


def _missed(out: Run) -> tuple[int, str]:
    """Fires the triggers planned from each first run up to the stop that never ran, and how that was counted."""
    args, rec = out.args, out.rec
    events = f"EVENT_JOB_MISSED {rec.missed}, EVENT_JOB_MAX_INSTANCES {rec.max_instances} (runs skipped)"
    per_source: dict[str, set[float]] = defaultdict(set)
    for job, scheduled, *_ in out.runs:
        per_source[job].add(round(scheduled, 3))
    if args.jitter:
        counts = sorted(len(v) for v in per_source.values()) + [0] * (args.sources - len(per_source))
        return rec.missed + rec.max_instances, (f"{events}; with jitter runs per source: min {counts[0]}, "
                                                f"median {common.median(counts):g}, max {counts[-1]}")
    never = total = 0
    for job, first in out.first.items():
        expected = _expected_times(out.triggers[job], first, out.stop_time)
        total += len(expected)
        never += len(expected - per_source.get(job, set()))
    return never, f"of {total:,} scheduled never ran; {events}"


def _period_rows(out: Run) -> tuple[list[list[str]], list[float]]:
    """Per period of the schedule: runs due, CPU until the next period (the last until the queue drained)."""
    rows, period_cpu = [], []
    edges = [out.t0 + k * out.args.every for k in range(out.fires)] + [out.ended]
    for k in range(len(edges) - 1):
        a, b = edges[k], edges[k + 1]
        late = [r[3] - r[1] for r in out.runs if a <= r[1] < b]
        cpu, _wall = _cpu_between(out.samples, a, b)
        inside = [s for s in out.samples if a - 0.6 <= s[0] <= b + 0.6]
        api_cpu = (inside[-1][5] - inside[0][5]) if len(inside) > 1 else float("nan")
        period_cpu.append(100 * cpu / out.args.every)
        rows.append([f"{a - out.t0:5.0f}-{b - out.t0:.0f}", f"{len(late):,}", _ms(common.percentile(late, 99)),
                     _ms(max(late, default=float("nan"))), f"{period_cpu[-1]:.0f}%",
                     f"{100 * api_cpu / out.args.every:.1f}%", f"{cpu / max(len(late), 1) * 1000:.2f}",
                     f"{max((s[2] for s in inside), default=0) / 1024:.0f}",
                     f"{max((s[3] for s in inside), default=0)}",
                     f"{max((s[4] for s in inside), default=0) / common.MIB:.1f}"])
    return rows, period_cpu


def _summary_rows(out: Run, period_cpu: list[float]) -> list[list[str]]:
    args, rec, runs = out.args, out.rec, out.runs
    missed, how = _missed(out)
    statuses = _statuses(out.db)
    late_all = [r[3] - r[1] for r in runs]
    periodic = [r[3] - r[1] for r in runs if not r[5]]
    cpu_all, _ = _cpu_between(out.samples, out.t0, out.ended)
    whole = 100 * cpu_all / (out.fires * args.every)
    steady = common.median(period_cpu[1:]) if len(period_cpu) > 1 else float("nan")
    db_end, db_max = db_bytes(out.db), max(s[4] for s in out.samples)
    n = max(len(runs), 1)
    return [
        ["daemon start-up (Daemon(): config.load, open_deps, checks, jobs)",
         f"{out.init_wall:.2f} s wall, {out.init_cpu:.2f} s CPU", "", ""],
        ["runs done", f"{len(runs):,} ({', '.join(f'{k} {v:,}' for k, v in sorted(statuses.items()))})", "", ""],
        ["runs missed", f"{missed:,} {how}", "0", common.verdict(missed == 0)],
        ["start lateness p99, all runs", f"{_ms(common.percentile(late_all, 99))} ms", "<= 1000 ms",
         common.verdict(common.percentile(late_all, 99) <= 1.0)],
        ["start lateness p99, periodic runs only", f"{_ms(common.percentile(periodic, 99))} ms", "<= 1000 ms",
         common.verdict(common.percentile(periodic, 99) <= 1.0) if periodic else "n/a"],
        [f"worker CPU, all {out.fires} periods (CPU s / {out.fires} x {args.every} s)",
         f"{whole:.0f}% of one core ({cpu_all:.1f} s)", "<= 50%", common.verdict(whole <= 50)],
        ["worker CPU, periods after the start-up one (median)", f"{steady:.0f}% of one core", "<= 50%",
         common.verdict(steady <= 50) if steady == steady else "n/a"],
        ["worker CPU per run (all runs)", f"{cpu_all / n * 1000:.2f} ms, of which {rec.job_cpu / n * 1000:.2f} ms "
         "in the job's own thread (thread_time); the rest: scheduler and other threads", "", ""],
        ["peak RSS (worker process, VmHWM)", f"{out.peak_kib / 1024:.0f} MiB (before Daemon(): "
         f"{out.rss_before / 1024:.0f} MiB; after: {out.rss_after_init / 1024:.0f} MiB)", "<= 300 MiB",
         common.verdict(out.peak_kib / 1024 <= 300)],
        ["database size (db + wal + shm)", f"{out.db_start / common.MIB:.2f} MiB empty -> {db_end / common.MIB:.1f} "
         f"MiB at the end (+{(db_end - out.db_start) / common.MIB / (out.fires * args.every / 60):.1f} MiB per "
         f"minute of schedule); largest while running {db_max / common.MIB:.1f} MiB", "", ""],
        ["daemon's other jobs run (stale re-render checks)", f"{rec.other_jobs}", "", ""],
        ["worker log records >= WARNING", ", ".join(f"{k} {v}" for k, v in out.handler.counts.items()) or "none",
         "", ""],
        ["mock API", f"{out.api['cpu_s']:.1f} s CPU, {out.api['requests']:,} requests on {out.api['connections']:,} "
         f"new connections", "", ""],
    ]


def _report(out: Run) -> None:
    print("\nStart lateness (ms; start = job function entered, vs its scheduled time)")
    print(common.table(["runs", "count", "p50", "p99", "max", "sched lag p99", "queue wait p99", "run p50"],
                       _lateness_rows(out.runs)))
    rows, period_cpu = _period_rows(out)
    print(f"\nPer period of the schedule (t = seconds since start_now; CPU = CPU seconds spent in the row's window "
          f"/ {out.args.every} s; the last window lasts until every queued run ended)")
    print(common.table(["t (s)", "runs due", "late p99 ms", "late max ms", "worker CPU", "API CPU", "CPU ms/run",
                        "RSS MiB", "max in flight", "db+wal max MiB"], rows))
    print("\nSummary")
    print(common.table(["figure", "measured", "target", "verdict"], _summary_rows(out, period_cpu)))
    for line in out.handler.first:
        print(f"  log: {line}")
    if out.stages is not None and out.runs:
        print(f"\nStages in the pool threads (thread CPU time; {len(out.runs):,} runs)")
        print(out.stages.table(len(out.runs), "run"))
    if out.rec.profiles and out.runs:
        _print_profile(out)


def _print_profile(out: Run) -> None:
    stats = pstats.Stats(out.rec.profiles[0])
    for prof in out.rec.profiles[1:]:
        stats.add(prof)
    if out.args.profile != "-":
        stats.dump_stats(out.args.profile)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    n = len(out.runs)
    top = sorted(raw.items(), key=lambda kv: -kv[1][3])[:out.args.profile_top]
    print(f"\ncProfile of the job function in the pool threads (thread CPU time, per run, {n:,} runs; "
          "profiling inflates call-heavy code)")
    print(common.table(["function", "cum ms/run", "own ms/run", "calls/run"], [
        [f"{func} ({Path(file).name}:{line})", f"{ct / n * 1000:.3f}", f"{tt / n * 1000:.3f}", f"{calls / n:.1f}"]
        for (file, line, func), (_cc, calls, tt, ct, _callers) in top]))


def _statuses(db: Path) -> dict[str, int]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    except sqlite3.Error as exc:
        return {f"(cannot read runs: {exc})": 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 sources for 60 s")
    parser.add_argument("--sources", type=int, help="number of sources (default 10,000; --quick 1,000)")
    parser.add_argument("--duration", type=float, help="seconds of schedule (default 180; --quick 60)")
    parser.add_argument("--every", type=int, default=60, help="schedule of every source, seconds (default 60)")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="API answer delay (default 100)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="[worker] concurrency (default 32; signfeed's own default is 8)")
    parser.add_argument("--jitter", type=int, default=0, help="`jitter` seconds on every source (default 0)")
    parser.add_argument("--margin", type=float, default=5.0,
                        help="seconds after --duration before the daemon is stopped (default 5)")
    parser.add_argument("--profile", metavar="FILE", help="cProfile every run (thread CPU time) and print the top "
                        "functions; FILE gets the merged pstats ('-' for none). Slows the runs down")
    parser.add_argument("--stages", action="store_true", help="time the stages of each run (thread CPU) and print "
                        "them; adds a few dozen wrapped calls per run")
    parser.add_argument("--profile-top", type=int, default=30, help="rows of the profile table (default 30)")
    parser.add_argument("--what-if-stagger", action="store_true",
                        help="try a fix: spread each source's first run (and so its phase) over its period")
    parser.add_argument("--what-if-keepalive", type=int, metavar="N",
                        help="try a fix: an httpx client keeping N idle connections (signfeed keeps httpx's 20)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project folder")
    args = parser.parse_args(argv)
    args.sources = args.sources or (1000 if args.quick else 10000)
    args.duration = args.duration or (60.0 if args.quick else 180.0)
    if args.duration > 1800 or args.sources > 50000:
        parser.error("bounded: --duration <= 1800 and --sources <= 50000")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
