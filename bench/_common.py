"""Shared helpers for the bench scripts: machine header, /proc readings, percentiles, tables, the mock API.

Not a benchmark itself. Imports nothing from `worker`, so the floor variant of pull.py stays lean.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# Credentials the mock API accepts; no characters the seed script would need to percent-encode.
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-Secret_42"
SEED_SCRIPT = REPO / "jobs" / "oauth_token.js"


def seed_project(root: Path, api: str) -> str:
    """A project folder with the shipped seed script in jobs/; returns the config's opening lines (its
    [worker] and the [secrets] the seed script's placeholders need), for the caller to add sources to."""
    (root / "jobs").mkdir(parents=True)
    shutil.copy(SEED_SCRIPT, root / "jobs" / "oauth_token.js")
    return f"""
[worker]
database = "sqlite:///data/signfeed.db"

[secrets]
CLIENT_ID = {{ value = "{CLIENT_ID}" }}
CLIENT_SECRET = {{ value = "{CLIENT_SECRET}" }}
OAUTH_AUTHENTICATION_URL = "{api}/token"
"""


# ---- header ----


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "worker"],
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{rev or '?'}{' + uncommitted changes in worker/' if dirty else ''}"


def header(title: str, extra: Iterable[str] = ()) -> str:
    """The block every bench prints first: what ran, when, where."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        title,
        "=" * len(title),
        f"date:     {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine:  {platform.platform()} | {_cpu_model()} | cpu_count={os.cpu_count()} (usable {affinity})"
        f" | load avg {load}",
        f"python:   {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        f"signfeed: git {_git_rev()}",
        *extra,
    ]
    return "\n".join(lines)


# ---- /proc and rusage ----


def proc_stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (index 0 is field 3, `state`)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process, seconds (0 if it is gone)."""
    fields = proc_stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def proc_status_kib(pid: int, key: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/PID/status, KiB (0 if unavailable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# PIDs child_pids() ignores: processes the bench itself started (a mock API), not the worker's helpers.
NOT_HELPERS: set[int] = set()


def child_pids(parent: int | None = None) -> list[int]:
    """Live direct children of a process (the worker's script helpers are direct children)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat_fields(int(entry))
            if (fields is not None and int(fields[1]) == parent and fields[0] != "Z"
                    and int(entry) not in NOT_HELPERS):
                found.append(int(entry))
    return sorted(found)


def self_peak_kib() -> int:
    """Peak RSS of this process so far (ru_maxrss is KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reaped_children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class HelperMeter:
    """CPU of this process's child processes (script helpers) over a span, whether they live or exit in it.

    Live children are read from /proc; children reaped during the span show up in RUSAGE_CHILDREN.
    """

    def __init__(self) -> None:
        self.start_live = {pid: proc_cpu_s(pid) for pid in child_pids()}
        self.start_reaped = reaped_children_cpu_s()

    def cpu_s(self) -> float:
        live = {pid: proc_cpu_s(pid) for pid in child_pids()}
        return (sum(live.values()) + reaped_children_cpu_s()) - (sum(self.start_live.values()) + self.start_reaped)

    @staticmethod
    def peaks_kib() -> dict[int, int]:
        """VmHWM of each live child (call before the helpers are stopped)."""
        return {pid: proc_status_kib(pid, "VmHWM") for pid in child_pids()}


# ---- statistics and output ----


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile, p in [0, 100]; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table; first column left-aligned, the rest right-aligned."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


# ---- the mock API (bench/_mockapi.py in its own process) ----


class MockAPI:
    """Start bench/_mockapi.py as a subprocess on 127.0.0.1 and read its counters."""

    def __init__(self, delay_ms: float = 0.0, extra_args: Sequence[str] = ()) -> None:
        cmd = [sys.executable, str(BENCH_DIR / "_mockapi.py"), "--port", "0", "--delay-ms", str(delay_ms),
               "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET, *extra_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        NOT_HELPERS.add(self.proc.pid)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"mock API did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/__stats", timeout=10) as reply:
            stats: dict[str, Any] = json.loads(reply.read())
        return stats

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> MockAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Requests per route/status and CPU seconds the mock API spent between two stats() calls."""
    counts = {k: after["counts"].get(k, 0) - before["counts"].get(k, 0) for k in after["counts"]}
    counts = {k: v for k, v in counts.items() if v}
    requests = sum(v for k, v in counts.items() if not k.startswith("stats"))
    return {"counts": counts, "requests": requests, "cpu_s": after["cpu_s"] - before["cpu_s"],
            "connections": after.get("connections", 0) - before.get("connections", 0)}


# ---- stage timing (cheap enough to leave on: a couple of dozen wrapped calls per pull) ----

# (module, class or "", function, depth). Inclusive times; depth only indents the printed name. Functions missing
# from the build being measured are skipped, so the list may name old and new spellings.
PULL_STAGES = [
    ("worker.pipeline", "", "run_source", 0),
    ("worker.pipeline", "", "_prepare", 1),
    ("worker.auth", "TokenManager", "token", 2),
    ("worker.pipeline", "", "lint", 2),
    ("worker.fetch", "", "send_with_retries", 1),
    ("worker.fetch", "", "decode_json", 1),
    ("worker.pipeline", "", "_store_and_publish", 1),
    ("worker.store", "Store", "last_status", 2),
    ("worker.store", "Store", "last_outcome", 2),
    ("worker.pipeline", "", "encode_data", 2),
    ("worker.store", "Store", "latest_hash", 2),
    ("worker.store", "Store", "record", 2),
    ("worker.store", "Store", "record_pull", 2),
    ("worker.pipeline", "", "publish", 2),
    ("worker.pipeline", "", "source_view", 3),
    ("worker.store", "Store", "latest_snapshot", 4),
    ("worker.store", "Store", "state", 4),
    ("worker.pipeline", "", "json_feed", 3),
    ("worker.render", "Renderer", "render", 3),
    ("worker.pipeline", "", "write_atomic", 3),
]
DAEMON_STAGES = [
    ("worker.scheduler", "Daemon", "run_job", 0),
    ("worker.config", "Config", "source", 1),
    ("worker.scheduler", "", "run_source", 1),  # the daemon calls the name it imported
    *[(m, c, f, d + 1) for m, c, f, d in PULL_STAGES[1:]],
    ("worker.scheduler", "Daemon", "_schedule_stale_check", 1),
    ("worker.store", "", "_on_connect", 1),
]


class StageTimer:
    """Wrap functions with CPU-clock and wall-clock accumulators; thread-safe.

    clock: time.process_time for one thread, time.thread_time when many threads run the stages at once.
    Wrap before the objects that hold references are built (Store registers _on_connect at construction).
    """

    def __init__(self, stages: Sequence[tuple[str, str, str, int]], clock: Any) -> None:
        import importlib
        import threading

        self.clock = clock
        self.lock = threading.Lock()
        self.totals: dict[str, list[float]] = {}
        self.undo: list[tuple[Any, str, Any]] = []
        for module, cls, name, depth in stages:
            owner: Any = importlib.import_module(module)
            if cls:
                owner = getattr(owner, cls, None)
            original = getattr(owner, name, None)
            if original is None or any(o is owner and n == name for o, n, _ in self.undo):
                continue
            acc = self.totals.setdefault("  " * depth + (f"{cls}.{name}" if cls else name), [0.0, 0.0, 0])
            setattr(owner, name, self._wrap(original, acc))
            self.undo.append((owner, name, original))

    def _wrap(self, fn: Any, acc: list[float]) -> Any:
        clock, lock = self.clock, self.lock

        def timed(*args: Any, **kwargs: Any) -> Any:
            c, w = clock(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                c, w = clock() - c, time.perf_counter() - w
                with lock:
                    acc[0] += c
                    acc[1] += w
                    acc[2] += 1

        return timed

    def restore(self) -> None:
        for owner, name, original in self.undo:
            setattr(owner, name, original)

    def table(self, n: int, per: str) -> str:
        rows = [[label, f"{cpu / n * 1000:.3f}", f"{wall / n * 1000:.3f}", f"{calls / n:.2f}"]
                for label, (cpu, wall, calls) in self.totals.items() if calls]
        return table(["stage (inclusive)", f"CPU ms/{per}", f"wall ms/{per}", f"calls/{per}"], rows)
