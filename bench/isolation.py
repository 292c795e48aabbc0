"""Cost of running pre-request scripts in helper processes, and how a runaway script is contained.

    .venv/bin/python bench/isolation.py                # all three parts, about 1 minute
    .venv/bin/python bench/isolation.py --rounds 40 --runs 200

1. Overhead per pull: the seed script (jobs/oauth_token.js, placeholders filled) with a trivial host_call that
   answers the token request at once, in ScriptRunner (a warm helper process, as shipped) and in InProcessRunner
   (same engine and shim in this process). Rounds alternate which runner goes first so machine noise hits both;
   the overhead is the median of the per-round differences. CPU = this process + the helper (/proc).
   Also: one run's latency after a 20 ms idle gap (a helper process that slept must be woken; the daemon's usual case).
2. Kill latency: a warm ScriptRunner given `while (true) {}` with timeout=1 s, start to ScriptError.
3. The same on the real scheduler: worker.scheduler.Daemon (as `signfeed run` builds it, real run_source) with a
   1 s-interval source `tick` (seed script, real HTTP to a loopback mock API) and a source `spin`
   (`while (true) {}`, script_timeout = 1, every 3 s).
   `spin` is paused for the baseline phase, then runs; reports each spin's start-to-kill time and `tick`'s start
   lateness (job function entered vs scheduled time) in both phases.

(Replaces bench/isolation_quick.py; its three figures are parts 1 and 2 here.)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

from worker.errors import ScriptError
from worker.script import InProcessRunner, ScriptJob, ScriptRunner

REQUEST = {"method": "GET", "url": "https://api.example.com/menu", "headers": {}, "params": {}, "body": None}
SEED_PATH = common.SEED_SCRIPT
TOKEN_REPLY = {"status": 200, "headers": {"content-type": "application/json"},
               "text": '{"access_token": "t0k3n-abcdef", "token_type": "Bearer", "expires_in": 3600}'}


def seed_code() -> str:
    """jobs/oauth_token.js with its placeholders filled, as run_source would send it."""
    return (SEED_PATH.read_text().replace("<CLIENT_ID>", common.CLIENT_ID)
            .replace("<CLIENT_SECRET>", common.CLIENT_SECRET)
            .replace("<OAUTH_AUTHENTICATION_URL>", "http://127.0.0.1:9/token"))


def trivial_host(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Answer every host call with a token at once."""
    return TOKEN_REPLY


# ---- part 1 ----


def _batch(runner: ScriptRunner | InProcessRunner, job: ScriptJob, runs: int) -> tuple[float, float]:
    """(wall ms per run, CPU ms per run incl. helper processes) for `runs` back-to-back runs."""
    meter = common.HelperMeter()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(runs):
        outcome = runner.run(job, trivial_host)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0 + meter.cpu_s()
    assert outcome.request["headers"].get("authorization", "").startswith("Bearer "), outcome.request
    return wall / runs * 1000, cpu / runs * 1000


def _idle_ms(runner: ScriptRunner | InProcessRunner, job: ScriptJob, runs: int) -> float:
    """Median wall time of one run after a 20 ms idle gap (the usual case in the daemon)."""
    times = []
    for _ in range(runs):
        time.sleep(0.02)
        started = time.perf_counter()
        runner.run(job, trivial_host)
        times.append(time.perf_counter() - started)
    return common.median(times) * 1000


def part_overhead(rounds: int, runs: int) -> list[str]:
    job = ScriptJob("bench", "jobs/oauth_token.js", seed_code(), REQUEST)
    rows, lines = [], []
    with ScriptRunner(size=1) as isolated, InProcessRunner() as local:
        runners = {"ScriptRunner": isolated, "InProcessRunner": local}
        for runner in runners.values():
            _batch(runner, job, 20)  # warm-up: helper started, engine contexts built, caches warm
        per: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
        for rnd in range(rounds):
            order = list(runners) if rnd % 2 == 0 else list(reversed(runners))
            for name in order:
                per[name].append(_batch(runners[name], job, runs))
        wall_diff = [a[0] - b[0] for a, b in zip(per["ScriptRunner"], per["InProcessRunner"], strict=True)]
        cpu_diff = [a[1] - b[1] for a, b in zip(per["ScriptRunner"], per["InProcessRunner"], strict=True)]
        for name in runners:
            walls, cpus = [w for w, _ in per[name]], [c for _, c in per[name]]
            rows.append([name, f"{common.median(walls):.3f}", f"{min(walls):.3f}-{max(walls):.3f}",
                         f"{common.median(cpus):.3f}", f"{min(cpus):.3f}-{max(cpus):.3f}"])
        rows.append(["overhead (median of per-round differences)", f"{common.median(wall_diff):+.3f}",
                     f"{min(wall_diff):+.3f}..{max(wall_diff):+.3f}", f"{common.median(cpu_diff):+.3f}",
                     f"{min(cpu_diff):+.3f}..{max(cpu_diff):+.3f}"])
        idle = {name: _idle_ms(runner, job, 50) for name, runner in runners.items()}
    lines.append(f"1. Seed script, trivial host_call: {rounds} rounds x {runs} back-to-back runs per runner, "
                 "alternating order")
    lines.append(common.table(["runner", "wall ms/run", "range", "CPU ms/run", "range"], rows))
    overhead = common.median(wall_diff)
    cpu_overhead = common.median(cpu_diff)
    lines.append(f"   one run after a 20 ms idle gap (median of 50): ScriptRunner {idle['ScriptRunner']:.3f} ms, "
                 f"InProcessRunner {idle['InProcessRunner']:.3f} ms "
                 f"(difference {idle['ScriptRunner'] - idle['InProcessRunner']:+.3f} ms)")
    lines.append(f"   target: isolation overhead <= 0.3 ms per pull -> wall {overhead:+.3f} ms "
                 f"{common.verdict(overhead <= 0.3)}; CPU {cpu_overhead:+.3f} ms {common.verdict(cpu_overhead <= 0.3)}"
                 f"; after an idle gap {idle['ScriptRunner'] - idle['InProcessRunner']:+.3f} ms "
                 f"{common.verdict(idle['ScriptRunner'] - idle['InProcessRunner'] <= 0.3)}")
    return lines


# ---- part 2 ----


def part_kill(repeats: int) -> list[str]:
    spin = ScriptJob("bench", "jobs/spin.js", "while (true) {}", REQUEST, timeout=1)
    times, messages = [], set()
    with ScriptRunner(size=1) as runner:
        for _ in range(repeats):
            runner.run(ScriptJob("bench", "jobs/x.js", "1", REQUEST), trivial_host)  # a warm helper
            started = time.perf_counter()
            try:
                runner.run(spin, trivial_host)
            except ScriptError as exc:
                times.append(time.perf_counter() - started)
                messages.add(str(exc))
            else:
                raise AssertionError("the spinning script finished")
    return [f"2. while (true) {{}} with timeout=1 s on a warm ScriptRunner, start -> ScriptError (helper killed and "
            f"reaped): {', '.join(f'{t:.3f}' for t in times)} s (median {common.median(times):.3f} s, "
            f"overrun {1000 * (common.median(times) - 1):+.0f} ms)",
            f"   error: {' | '.join(sorted(messages))}"]


# ---- part 3 ----


def _project(root: Path, api: str) -> Path:
    head = common.seed_project(root, api)
    (root / "jobs" / "spin.js").write_text("while (true) {}\n")
    (root / "config.toml").write_text(head + f"""
[[sources]]
name = "tick"
url = "{api}/data/static"
every = "1s"
pre_request = "oauth_token.js"

[[sources]]
name = "spin"
url = "{api}/data/static"
every = "3s"
pre_request = "spin.js"
script_timeout = 1
""")
    return root / "config.toml"


def part_scheduler(baseline: float, spinning: float) -> list[str]:
    import logging

    from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES

    import worker.scheduler as scheduler_mod
    import worker.script as script_mod

    started: dict[str, float] = {}
    runs: list[tuple[str, float, float, float]] = []  # source, scheduled, started, finished
    results: list[tuple[str, float, str | None]] = []  # source, run_source duration (s), error
    skipped: list[str] = []
    real_run_source = scheduler_mod.run_source

    def run_source(source: Any, config: Any, deps: Any, **kw: Any) -> Any:
        started[source.name] = time.time()
        result = real_run_source(source, config, deps, **kw)
        results.append((source.name, result.duration_ms / 1000, result.error))
        return result

    # The daemon's job function calls the module's run_source at call time; the spin errors it logs are expected.
    scheduler_mod.run_source = run_source
    # The helper conversation (job sent to the helper .. outcome or kill): the script's own start-to-kill time,
    # without the wait for a helper (a cold start after the previous spinner's helper was killed).
    conversations: list[tuple[str, float]] = []
    conversation_cls = getattr(script_mod, "_Conversation", None)
    real_conversation_run = getattr(conversation_cls, "run", None)
    if conversation_cls is not None and real_conversation_run is not None:
        def conversation_run(self: Any) -> Any:
            begun = time.perf_counter()
            try:
                return real_conversation_run(self)
            finally:
                conversations.append((self.job.source, time.perf_counter() - begun))

        conversation_cls.run = conversation_run
    logging.basicConfig(level=logging.CRITICAL, force=True)
    root = Path(tempfile.mkdtemp(prefix="signfeed-bench-isolation-"))
    try:
        with common.MockAPI() as api:
            daemon = scheduler_mod.Daemon(str(_project(root / "project", api.url)))  # as `signfeed run` builds it
            scheduler = daemon.scheduler
            scheduler.add_listener(lambda e: runs.append((e.job_id, e.scheduled_run_time.timestamp(),
                                                          started.get(e.job_id, float("nan")), time.time())),
                                   EVENT_JOB_EXECUTED)
            scheduler.add_listener(lambda e: skipped.append(e.job_id), EVENT_JOB_MAX_INSTANCES)
            scheduler.pause_job("spin")  # baseline first: `tick` alone
            thread = threading.Thread(target=daemon.run, kwargs={"install_signals": False}, daemon=True)
            thread.start()
            time.sleep(baseline)
            t_spin = time.time()
            scheduler.resume_job("spin")
            time.sleep(spinning)
            t_end = time.time()
            daemon.stop()
            thread.join(timeout=60)
    finally:
        scheduler_mod.run_source = real_run_source
        if real_conversation_run is not None:
            conversation_cls.run = real_conversation_run
        shutil.rmtree(root, ignore_errors=True)

    spins = [(d, e) for name, d, e in results if name == "spin"]
    spin_runs = [(r[2], r[3]) for r in runs if r[0] == "spin"]
    ticks = [r for r in runs if r[0] == "tick"]

    def near_spin(t: float) -> bool:  # scheduled while a spinner ran, or within 1 s after it ended
        return any(a <= t <= b + 1.0 for a, b in spin_runs)

    groups = {
        f"baseline (spin paused, {baseline:g} s)": [r for r in ticks if r[1] < t_spin],
        f"spin phase (every 3 s, {spinning:g} s)": [r for r in ticks if t_spin <= r[1] <= t_end],
        "  of which during a spin or <= 1 s after": [r for r in ticks if t_spin <= r[1] <= t_end and near_spin(r[1])],
    }
    rows = []
    for label, group in groups.items():
        late = [(r[2] - r[1]) * 1000 for r in group]
        dur = [(r[3] - r[2]) * 1000 for r in group]
        rows.append([label, len(group), f"{common.percentile(late, 50):.1f}", f"{common.percentile(late, 99):.1f}",
                     f"{max(late, default=float('nan')):.1f}", f"{common.percentile(dur, 50):.1f}",
                     f"{max(dur, default=float('nan')):.1f}"])
    kill = [d for d, _ in spins]
    conv = [d for name, d in conversations if name == "spin"]
    errors = sorted({str(e) for _, e in spins})
    tick_errors = sorted({str(e) for name, _, e in results if name == "tick" and e})
    lines = [
        "3. Real scheduler: `tick` every 1 s (seed script + HTTP) beside `spin` (while(true), script_timeout = 1, "
        "every 3 s)",
        f"   spin runs: {len(kill)}; run_source start -> ScriptError: median {common.median(kill):.3f} s, "
        f"max {max(kill, default=float('nan')):.3f} s  ({', '.join(f'{d:.2f}' for d in kill)})",
        "   spin script start (sent to its helper) -> killed: "
        + (f"median {common.median(conv):.3f} s, max {max(conv):.3f} s" if conv else "n/a (not hooked in this build)")
        + "; the rest of run_source's time is waiting for a helper (a new one starts after each kill)",
        f"   spin errors: {' | '.join(errors) or 'none'}",
        "   tick (expected one run per second):",
        common.table(["tick runs", "count", "late p50 ms", "late p99 ms", "late max ms", "run p50 ms", "run max ms"],
                     rows),
        f"   tick errors: {' | '.join(tick_errors) or 'none'}; runs skipped (max_instances): {len(skipped)}",
    ]
    spin_ok = bool(kill) and max(kill) <= 1.5
    late_all = [(r[2] - r[1]) for r in groups[f"spin phase (every 3 s, {spinning:g} s)"]]
    lines.append(f"   verdicts: every spin killed within 1.5 s of its start: {common.verdict(spin_ok)}; "
                 f"tick p99 lateness during the spin phase <= 1 s: "
                 f"{common.verdict(common.percentile(late_all, 99) <= 1.0)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="part 1 rounds (default 20)")
    parser.add_argument("--runs", type=int, default=100, help="part 1 runs per runner per round (default 100)")
    parser.add_argument("--kills", type=int, default=3, help="part 2 repeats (default 3)")
    parser.add_argument("--baseline", type=float, default=10.0, help="part 3 seconds with spin paused (default 10)")
    parser.add_argument("--spinning", type=float, default=30.0, help="part 3 seconds with spin running (default 30)")
    parser.add_argument("--parts", default="123", help="which parts to run, e.g. 13 (default 123)")
    args = parser.parse_args(argv)
    if args.rounds * args.runs > 100_000 or args.baseline + args.spinning > 600:
        parser.error("bounded: rounds x runs <= 100000 and baseline + spinning <= 600 s")
    print(common.header("signfeed bench/isolation.py: pre-request script isolation",
                        [f"run:      part 1 {args.rounds} rounds x {args.runs} runs; part 2 {args.kills} kills; "
                         f"part 3 {args.baseline:g} s + {args.spinning:g} s"]), flush=True)
    parts = {"1": lambda: part_overhead(args.rounds, args.runs), "2": lambda: part_kill(args.kills),
             "3": lambda: part_scheduler(args.baseline, args.spinning)}
    for key in args.parts:
        print()
        print("\n".join(parts[key]()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
