"""Quick numbers for script isolation: per-run cost of helper processes vs in-process, and timeout latency.

Run: .venv/bin/python bench/isolation_quick.py
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from worker.errors import ScriptError
from worker.script import InProcessRunner, ScriptJob, ScriptRunner

SEED = """const body = {"grant_type": "client_credentials", "client_id": "abc", "client_secret": "s3cr+t/="};
const params = Object.keys(body || {}).map((key) => { return key + '=' + body[key]; }).join('&');
const {data, headers} = await os.postRequest("http://127.0.0.1:8787/token", params, {headers: {'content-type': 'application/x-www-form-urlencoded'}});
const token = 'Bearer ' + data.access_token;
os.context.set("request.headers.authorization", token);
"""  # noqa: E501 -- the vendor's script, verbatim
RUNS = 500
REQUEST = {"method": "GET", "url": "https://api.example.com/menu", "headers": {}, "params": {}, "body": None}


def trivial_host(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Answer every request with a token at once."""
    return {"status": 200, "headers": {"content-type": "application/json"}, "text": '{"access_token": "t"}'}


def per_run_ms(runner: ScriptRunner | InProcessRunner) -> float:
    """Mean wall time of one seed-script run, after a warm-up run."""
    job = ScriptJob("bench", "jobs/oauth_token.js", SEED, REQUEST)
    runner.run(job, trivial_host)
    started = time.perf_counter()
    for _ in range(RUNS):
        runner.run(job, trivial_host)
    return (time.perf_counter() - started) / RUNS * 1000


def idle_latency_ms(runner: ScriptRunner | InProcessRunner) -> float:
    """Median wall time of one run when the runner was idle before it (the usual case in the daemon)."""
    job = ScriptJob("bench", "jobs/oauth_token.js", SEED, REQUEST)
    times = []
    for _ in range(100):
        time.sleep(0.005)  # lets the helper finish building the next run's context
        started = time.perf_counter()
        runner.run(job, trivial_host)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def timeout_latency_s(runner: ScriptRunner) -> float:
    """Seconds from starting a spinning script (timeout=1, warm helper) to its ScriptError."""
    runner.run(ScriptJob("bench", "jobs/x.js", "1", REQUEST), trivial_host)  # make sure a helper is warm
    started = time.perf_counter()
    try:
        runner.run(ScriptJob("bench", "jobs/spin.js", "while (true) {}", REQUEST, timeout=1), trivial_host)
    except ScriptError:
        return time.perf_counter() - started
    raise AssertionError("the spinning script finished")


def main() -> None:
    """Print both figures."""
    with ScriptRunner(size=1) as isolated, InProcessRunner() as local:
        helper_ms = per_run_ms(isolated)
        local_ms = per_run_ms(local)
        print(f"seed script, {RUNS} runs each, trivial host_call:")
        print(f"  ScriptRunner (helper process): {helper_ms:.3f} ms/run")
        print(f"  InProcessRunner:               {local_ms:.3f} ms/run")
        print(f"  isolation overhead:            {helper_ms - local_ms:+.3f} ms/run")
        print("median latency of one run after an idle gap (100 runs):")
        print(f"  ScriptRunner: {idle_latency_ms(isolated):.3f} ms   InProcessRunner: {idle_latency_ms(local):.3f} ms")
        latencies = [timeout_latency_s(isolated) for _ in range(3)]
        print(
            f"while(true) with timeout=1 -> ScriptError: {', '.join(f'{s:.3f}' for s in latencies)} s "
            f"(median {statistics.median(latencies):.3f} s)"
        )


if __name__ == "__main__":
    main()
