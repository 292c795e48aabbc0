"""cProfile of signfeed's pull path, in ms per pull: where the CPU of run_source goes.

    .venv/bin/python bench/profile_pull.py                       # seed script in ScriptRunner, data changing
    .venv/bin/python bench/profile_pull.py --mode unchanged
    .venv/bin/python bench/profile_pull.py --runner inprocess    # the script engine's own cost shows up too
    .venv/bin/python bench/profile_pull.py --sources 10000       # scale.py's path: no script, JSON feed only,
                                                                 # a config of 10,000 sources, pulls rotate

cProfile sees this process only: with the (default) isolated runner, the helper process's CPU is not in the
profile; --runner inprocess runs the same engine here so it is. Profiling inflates Python-heavy code, so read the
shares, not the absolute numbers; bench/pull.py has the unprofiled figures.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common
import pull


def _scale_project(root: Path, api: str, sources: int, mode: str) -> Path:
    root.mkdir(parents=True)
    lines = ["[worker]", 'database = "sqlite:///data/signfeed.db"', ""]
    for i in range(sources):
        # /s/<i> bodies change on every 10th request to a source; /data/static never does (needs no token here).
        lines += ["[[sources]]", f'name = "s{i:05d}"', f'url = "{api}/s/{i}"', 'every = "60s"', ""]
    (root / "config.toml").write_text("\n".join(lines))
    return root / "config.toml"


def _print_top(stats: pstats.Stats, n: int, key: str, top: int) -> None:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    index = 3 if key == "cumulative" else 2
    rows = []
    for (file, line, func), (_cc, calls, tt, ct, _callers) in sorted(raw.items(), key=lambda kv: -kv[1][index])[:top]:
        where = f"{Path(file).name}:{line}" if line else file
        rows.append([f"{func} ({where})", f"{ct / n * 1000:.3f}", f"{tt / n * 1000:.3f}", f"{calls / n:.1f}"])
    print(common.table(["function", "cum ms/pull", "own ms/pull", "calls/pull"], rows))


def _measure(args: argparse.Namespace, api: str, root: Path) -> tuple[float, float, str, cProfile.Profile, float]:
    """Warm up, then n pulls under the stage timer and n more under cProfile."""
    from worker import config as config_mod
    from worker import pipeline
    from worker.pipeline import open_deps
    from worker.script import InProcessRunner

    if args.sources:
        config = config_mod.load(_scale_project(root / "p", api, args.sources, args.mode), environ={})
    else:
        config = pull._load_config(root / "p", api, args.mode, use_auth=args.auth)
    deps = open_deps(config)
    if args.runner == "inprocess":
        deps.scripts.close()
        deps.scripts = InProcessRunner()
    # Scale-style: the same 1,000 sources over and over, so ~10% of the pulls see changed data (as in scale.py).
    sources = config.sources[:1000]

    def pull_one(i: int) -> None:
        source = sources[i % len(sources)]
        result = pipeline.run_source(source, config, deps)  # looked up per call: StageTimer wraps it
        if not result.ok:
            raise RuntimeError(result.error)

    warm = len(sources) if args.sources else 10
    for i in range(warm):  # first pulls: snapshots created, helper and caches warm
        pull_one(i)
    # 1. Stage table, without cProfile: accurate CPU per stage.
    timer = common.StageTimer(common.PULL_STAGES, time.process_time)
    meter = common.HelperMeter()
    cpu0 = time.process_time()
    for i in range(args.n):
        pull_one(warm + i)
    stage_cpu, helper_cpu = time.process_time() - cpu0, meter.cpu_s()
    stage_table = timer.table(args.n, "pull")
    timer.restore()
    warm += args.n
    # 2. cProfile.
    profiler = cProfile.Profile(time.process_time if args.timer == "cpu" else time.perf_counter)
    started = time.perf_counter()
    profiler.enable()
    for i in range(args.n):
        pull_one(warm + i)
    profiler.disable()
    wall = time.perf_counter() - started
    deps.close()
    return stage_cpu, helper_cpu, stage_table, profiler, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("changing", "unchanged"), default="changing")
    parser.add_argument("--auth", action="store_true", help="an [auth.api] block instead of the pre-request script")
    parser.add_argument("--runner", choices=("isolated", "inprocess"), default="isolated")
    parser.add_argument("--sources", type=int, default=0, help="scale-style config with this many sources")
    parser.add_argument("--n", type=int, default=300, help="profiled pulls (default 300)")
    parser.add_argument("--top", type=int, default=30, help="rows per table (default 30)")
    parser.add_argument("--timer", choices=("cpu", "wall"), default="cpu",
                        help="cpu: time.process_time (default; waits on sockets, pipes and fsync cost nothing), "
                             "wall: time.perf_counter")
    parser.add_argument("--out", type=Path, help="also write the raw profile here (pstats / snakeviz)")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 20000 or args.sources > 50000:
        parser.error("bounded: 1 <= --n <= 20000, --sources <= 50000")

    root = Path(tempfile.mkdtemp(prefix="signfeed-bench-profile-"))
    try:
        with common.MockAPI() as api:
            stage_cpu, helper_cpu, stage_table, profiler, wall = _measure(args, api.url, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    what = (f"{args.sources:,}-source config, no script, JSON feed only" if args.sources else
            f"{'[auth.api] block' if args.auth else f'seed script ({args.runner} runner)'}, JSON + HTML feed, "
            f"data {args.mode}")
    print(common.header("signfeed bench/profile_pull.py: cProfile of run_source",
                        [f"run:      {args.n} pulls; {what}; {wall / args.n * 1000:.2f} ms wall per pull under the "
                         f"profiler"]))
    print(f"\nStages, timed without cProfile ({args.n} pulls): this process {stage_cpu / args.n * 1000:.3f} ms CPU "
          f"per pull, script helper processes {helper_cpu / args.n * 1000:.3f} ms CPU per pull")
    print(stage_table)
    print(f"\ncProfile ({args.timer} timer; profiling inflates call-heavy code such as the pure-Python JSON encoder)")
    stats = pstats.Stats(profiler)
    if args.out:
        stats.dump_stats(args.out)
    print("\nTop by cumulative time")
    _print_top(stats, args.n, "cumulative", args.top)
    print("\nTop by own time")
    _print_top(stats, args.n, "own", args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
