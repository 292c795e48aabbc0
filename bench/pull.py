"""Sequential pulls against a loopback OAuth2 API: the httpx floor, signfeed's run_source, and Newman, side by side.

    .venv/bin/python bench/pull.py                  # N=300 pulls per variant, 3 interleaved rounds
    .venv/bin/python bench/pull.py --n 1000 --rounds 5
    .venv/bin/python bench/pull.py --variant floor --n 300 --json   # one variant (what the parent runs)

A mock API (bench/_mockapi.py: POST /token and a ~5 KB JSON data endpoint) runs in its own process; its CPU per
request is printed so you can see it is not the bottleneck. Every variant runs in its own fresh subprocess so peak
RSS figures do not mix; rounds rotate the order so machine noise hits every variant alike.

Variants
  floor               plain httpx.Client, keep-alive: token POST + data GET, nothing else
  floor-cached        the same with the token fetched once: data GET only (what a token cache can reach; the
                      [auth] variants cache the token, so compare them with this too)
  signfeed-changing   run_source with jobs/oauth_token.js in the isolated ScriptRunner (as shipped), storing and
                      rendering a JSON and an HTML feed; the data changes on every pull
  signfeed-unchanged  the same, data identical on every pull (run recorded, nothing re-rendered)
  auth-changing       run_source with an [auth.api] oauth2_client_credentials block instead of a script
  auth-unchanged      the same, data identical on every pull
  newman              Newman (npm), a one-request collection whose pre-request script gets the token with
                      pm.sendRequest; installed with `npm install --prefix DIR newman` (skipped without npm)

CPU per pull = CPU of the worker process (time.process_time) + CPU of its script helper processes (/proc, and
RUSAGE_CHILDREN for any reaped during the run). Peak RSS = the worker's ru_maxrss + each helper's VmHWM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

VARIANTS = ("floor", "floor-cached", "signfeed-changing", "signfeed-unchanged", "auth-changing", "auth-unchanged",
            "newman")
SEED_SCRIPT = common.SEED_SCRIPT
NEWMAN_DIR = Path(tempfile.gettempdir()) / "signfeed-bench-newman"

TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ menu.data.title }}</title></head><body>
<h1>{{ menu.data.title }}</h1><p>{{ menu.data.location }}</p>
<table>
{% for i in menu.data['items'] %}<tr><td>{{ i.name }}</td><td>{{ i.category }}</td>
<td>{{ '%.2f' | format(i.price) }} {{ menu.data.currency }}</td><td>{{ i.description }}</td>
<td>{{ 'vegan' if i.vegan }} {{ i.allergens | join(', ') }}</td></tr>
{% endfor %}</table>
<footer>updated {{ menu.fetched_at | local_time('%H:%M') }}{{ ' (stale)' if menu.stale }}</footer>
</body></html>
"""

NEWMAN_PRE_REQUEST = """pm.sendRequest({
  url: pm.environment.get('base') + '/token',
  method: 'POST',
  header: { 'Content-Type': 'application/x-www-form-urlencoded' },
  body: { mode: 'urlencoded', urlencoded: [
    { key: 'grant_type', value: 'client_credentials' },
    { key: 'client_id', value: pm.environment.get('client_id') },
    { key: 'client_secret', value: pm.environment.get('client_secret') }
  ] }
}, function (err, res) {
  if (err) { throw err; }
  pm.request.headers.upsert({ key: 'Authorization', value: 'Bearer ' + res.json().access_token });
});"""


# ======================================================================================================
# Variants (each runs in its own subprocess: `pull.py --variant NAME --json`)
# ======================================================================================================


def _measure(pull: Any, n: int, warmup: int, max_seconds: float) -> dict[str, Any]:
    """Run pull() warmup times, then n times (bounded by max_seconds) under CPU and wall meters."""
    for _ in range(warmup):
        pull()
    meter = common.HelperMeter()
    latencies = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    done = 0
    for _ in range(n):
        t = time.perf_counter()
        pull()
        latencies.append(time.perf_counter() - t)
        done += 1
        if time.perf_counter() - wall0 > max_seconds:
            break
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    helpers_cpu = meter.cpu_s()
    helper_peaks = common.HelperMeter.peaks_kib()
    return {
        "status": "ok", "n": done, "wall_s": wall, "cpu_self_s": cpu, "cpu_helpers_s": helpers_cpu,
        "lat_p50_ms": common.median(latencies) * 1000, "lat_p99_ms": common.percentile(latencies, 99) * 1000,
        "peak_self_kib": common.self_peak_kib(), "peak_helpers_kib": sum(helper_peaks.values()),
        "helpers": len(helper_peaks), "warmup": warmup,
    }


def variant_floor(api: str, n: int, warmup: int, max_seconds: float, cached: bool = False) -> dict[str, Any]:
    """httpx.Client with keep-alive: POST the token form (once if cached), GET the data with the bearer token."""
    import httpx

    form = {"grant_type": "client_credentials", "client_id": common.CLIENT_ID, "client_secret": common.CLIENT_SECRET}
    with httpx.Client(trust_env=False) as client:
        first = client.post(f"{api}/token", data=form).json()["access_token"] if cached else ""

        def pull() -> None:
            token = first if cached else client.post(f"{api}/token", data=form).json()["access_token"]
            reply = client.get(f"{api}/data/changing", headers={"Authorization": f"Bearer {token}"})
            if reply.status_code != 200:
                raise RuntimeError(f"floor: HTTP {reply.status_code}")
            reply.read()

        return _measure(pull, n, warmup, max_seconds)


def _write_project(root: Path, api: str, mode: str, auth_block: str | None) -> Path:
    head = common.seed_project(root, api)
    (root / "templates").mkdir()
    (root / "templates" / "board.html.j2").write_text(TEMPLATE)
    source_auth = 'auth = "api"' if auth_block is not None else 'pre_request = "oauth_token.js"'
    (root / "config.toml").write_text(head + f"""{auth_block or ""}
[[sources]]
name = "menu"
url = "{api}/data/{'changing' if mode == 'changing' else 'static'}"
every = "1m"
headers = {{ Accept = "application/json" }}
{source_auth}

[[feeds]]
output = "board.html"
template = "board.html.j2"
sources = ["menu"]
""")
    return root / "config.toml"


def _load_config(root: Path, api: str, mode: str, use_auth: bool) -> Any:
    """The project's Config: the seed script, or with use_auth an [auth.api] block in its place."""
    from worker import config as config_mod

    block = None
    if use_auth:
        block = (f'\n[auth.api]\ntype = "oauth2_client_credentials"\ntoken_url = "{api}/token"\n'
                 'client_id = "<CLIENT_ID>"\nclient_secret = "<CLIENT_SECRET>"\n')
    return config_mod.load(_write_project(root, api, mode, block), environ={})


def variant_signfeed(api: str, n: int, warmup: int, max_seconds: float, mode: str,
                     use_auth: bool) -> dict[str, Any]:
    """run_source with production deps (open_deps: SQLite, httpx, ScriptRunner helpers, Jinja)."""
    from collections import Counter

    from worker.pipeline import open_deps, run_source

    root = Path(tempfile.mkdtemp(prefix="signfeed-bench-pull-"))
    try:
        config = _load_config(root / "project", api, mode, use_auth)
        source = config.sources[0]
        deps = open_deps(config)
        statuses: Counter[str] = Counter()
        errors: list[str] = []

        def pull() -> None:
            result = run_source(source, config, deps)
            statuses[result.status] += 1
            if not result.ok and len(errors) < 3:
                errors.append(str(result.error))

        try:
            out = _measure(pull, n, warmup, max_seconds)
        finally:
            deps.close()
        out.update(statuses=dict(statuses), errors=errors)
        expected = "ok" if mode == "changing" else "unchanged"
        if statuses.get(expected, 0) < out["n"]:  # warm-up pulls are counted too; the first unchanged one is ok
            out["status"] = "error"
            out["message"] = f"expected every measured pull to be {expected!r}; got {dict(statuses)} {errors}"
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ensure_newman(directory: Path, fresh: bool) -> tuple[Path | None, str]:
    """(path to newman.js, version) after `npm install --prefix DIR newman`, or (None, why not)."""
    script = directory / "node_modules" / "newman" / "bin" / "newman.js"
    if fresh:
        shutil.rmtree(directory, ignore_errors=True)
    if not script.is_file():
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            return None, "skipped: npm/node not available"
        directory.mkdir(parents=True, exist_ok=True)
        print(f"installing newman: npm install --prefix {directory} newman ...", file=sys.stderr, flush=True)
        try:
            done = subprocess.run([npm, "install", "--prefix", str(directory), "--no-audit", "--no-fund", "newman"],
                                  capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            return None, "skipped: npm install newman timed out (600 s)"
        if done.returncode != 0 or not script.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return None, f"skipped: npm install newman failed: {' / '.join(tail)}"
    version = subprocess.run(["node", str(script), "--version"], capture_output=True, text=True, timeout=60,
                             check=False).stdout.strip()
    return script, version


def _run_newman(script: Path, collection: Path, api: str, n: int, timeout: float) -> dict[str, Any]:
    """One `newman run -n N`; wall, CPU and peak RSS of the node process from wait4()."""
    cmd = ["node", str(script), "run", str(collection), "-n", str(n), "--silent",
           "--env-var", f"base={api}", "--env-var", f"client_id={common.CLIENT_ID}",
           "--env-var", f"client_secret={common.CLIENT_SECRET}"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.005)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_kib": usage.ru_maxrss,
            "rc": proc.returncode, "stderr": stderr[-500:]}


def variant_newman(api: str, n: int, max_seconds: float, newman_dir: Path) -> dict[str, Any]:
    """Newman with N iterations, and with 1 iteration to separate start-up from the per-pull cost."""
    script, version = ensure_newman(newman_dir, fresh=False)
    if script is None:
        return {"status": "skipped", "message": version}
    root = Path(tempfile.mkdtemp(prefix="signfeed-bench-newman-"))
    try:
        collection = root / "collection.json"
        collection.write_text(json.dumps({
            "info": {"name": "signfeed-bench", "schema":
                     "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"},
            "item": [{
                "name": "data",
                "event": [{"listen": "prerequest",
                           "script": {"type": "text/javascript", "exec": NEWMAN_PRE_REQUEST.splitlines()}}],
                "request": {"method": "GET", "url": "{{base}}/data/changing",
                            "header": [{"key": "Accept", "value": "application/json"}]},
            }],
        }))
        one = _run_newman(script, collection, api, 1, max_seconds)
        full = _run_newman(script, collection, api, n, max_seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if full["rc"] != 0 or one["rc"] != 0:
        return {"status": "error", "message": f"newman exit {full['rc']}: {full['stderr'] or one['stderr']}"}
    marginal_wall = (full["wall_s"] - one["wall_s"]) / max(n - 1, 1)
    marginal_cpu = (full["cpu_s"] - one["cpu_s"]) / max(n - 1, 1)
    return {
        "status": "ok", "n": n, "version": version, "wall_s": full["wall_s"], "cpu_self_s": full["cpu_s"],
        "cpu_helpers_s": 0.0, "peak_self_kib": full["peak_kib"], "peak_helpers_kib": 0, "helpers": 0,
        "startup_wall_s": one["wall_s"], "startup_cpu_s": one["cpu_s"],
        "marginal_wall_ms": marginal_wall * 1000, "marginal_cpu_ms": marginal_cpu * 1000,
    }


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name in ("floor", "floor-cached"):
        return variant_floor(args.api, args.n, args.warmup, args.max_seconds, cached=name == "floor-cached")
    if name == "newman":
        return variant_newman(args.api, args.n, args.max_seconds, args.newman_dir)
    kind, mode = name.split("-")
    return variant_signfeed(args.api, args.n, args.warmup, args.max_seconds, mode, use_auth=kind == "auth")


# ======================================================================================================
# Orchestrator
# ======================================================================================================


def _child(name: str, args: argparse.Namespace, api: common.MockAPI) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", name, "--api", api.url, "--json",
           "--n", str(args.n), "--warmup", str(args.warmup), "--max-seconds", str(args.max_seconds),
           "--newman-dir", str(args.newman_dir)]
    before = api.stats()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * args.max_seconds + 120, check=False)
    except subprocess.TimeoutExpired:
        return {"variant": name, "status": "error", "message": "variant subprocess timed out"}
    server = common.stats_delta(before, api.stats())
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"variant": name, "status": "error", "message": f"exit {done.returncode}: {done.stderr[-800:]}"}
    result["variant"] = name
    result["server"] = server
    return result


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of each per-round figure; the largest peak RSS; the spread of CPU per pull."""
    ok = [r for r in results if r["status"] == "ok"]
    if not ok:
        return {"status": results[0]["status"], "message": results[0].get("message", "")}
    rates = [r["n"] / r["wall_s"] for r in ok]
    cpu = [(r["cpu_self_s"] + r["cpu_helpers_s"]) / r["n"] * 1000 for r in ok]
    cpu_self = [r["cpu_self_s"] / r["n"] * 1000 for r in ok]
    cpu_helpers = [r["cpu_helpers_s"] / r["n"] * 1000 for r in ok]
    # API cost per pull: requests the variant made (newman's 1-iteration start-up run included) over its pulls.
    pulls = [r["n"] + r.get("warmup", 0) + (1 if r["variant"] == "newman" else 0) for r in ok]
    server_ms = [r["server"]["cpu_s"] * 1000 / max(r["server"]["requests"], 1) for r in ok]
    return {
        "status": "ok", "rounds": len(ok), "n": ok[0]["n"],
        "rate": common.median(rates), "rate_min": min(rates), "rate_max": max(rates),
        "cpu_ms": common.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
        "cpu_self_ms": common.median(cpu_self), "cpu_helpers_ms": common.median(cpu_helpers),
        "lat_p50_ms": common.median([r["lat_p50_ms"] for r in ok]) if "lat_p50_ms" in ok[0] else None,
        "peak_self_mib": max(r["peak_self_kib"] for r in ok) / 1024,
        "peak_helpers_mib": max(r["peak_helpers_kib"] for r in ok) / 1024,
        "peak_total_mib": max(r["peak_self_kib"] + r["peak_helpers_kib"] for r in ok) / 1024,
        "helpers": max(r["helpers"] for r in ok),
        "server_us_per_req": common.median(server_ms) * 1000,
        "req_per_pull": common.median([r["server"]["requests"] / p for r, p in zip(ok, pulls, strict=True)]),
        "extra": ok[-1],
    }


def orchestrate(args: argparse.Namespace) -> int:
    variants = [v for v in VARIANTS if v in args.variants]
    extra = [f"run:      N={args.n} pulls per variant (after {args.warmup} warm-up pulls), {args.rounds} rounds, "
             f"order rotated each round; each variant in a fresh subprocess"]
    newman_note = ""
    if "newman" in variants:
        script, newman_note = ensure_newman(args.newman_dir, fresh=args.fresh_newman)
        if script is not None:
            extra.append(f"newman:   {newman_note} (node {_node_version()}) in {args.newman_dir}")
    print(common.header("signfeed bench/pull.py: sequential pulls, token POST + data GET on 127.0.0.1", extra),
          flush=True)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with common.MockAPI() as api:
        print(f"mock API: {api.url} (pid {api.pid}, asyncio, own process)\n", flush=True)
        for rnd in range(args.rounds):
            if not variants:
                break
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for name in order:
                result = _child(name, args, api)
                results[name].append(result)
                if result["status"] == "ok":
                    line = (f"  round {rnd + 1} {name:<19} {result['n'] / result['wall_s']:8.1f} pulls/s  "
                            f"{(result['cpu_self_s'] + result['cpu_helpers_s']) / result['n'] * 1000:7.3f} CPU ms/pull")
                else:
                    line = f"  round {rnd + 1} {name:<19} {result.get('message', result['status'])}"
                print(line, file=sys.stderr, flush=True)
            # A skipped variant (no npm) is skipped for the same reason next round.
            variants = [v for v in variants if results[v][-1]["status"] != "skipped"]
        api_total = api.stats()
    agg = {v: _aggregate(rs) for v, rs in results.items()}
    _report(agg, api_total, newman_note)
    return 0


def _node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30,
                              check=False).stdout.strip()
    except OSError:
        return "?"


def _report(agg: dict[str, dict[str, Any]], api_total: dict[str, Any], newman_note: str) -> None:
    rows = []
    for name, a in agg.items():
        if a["status"] != "ok":
            continue  # listed below the table with the reason
        rows.append([
            name, f"{a['rate']:.1f}", f"{a['rate_min']:.0f}-{a['rate_max']:.0f}",
            _fmt(a["lat_p50_ms"], 2),
            f"{a['cpu_ms']:.3f}", f"{a['cpu_self_ms']:.3f} + {a['cpu_helpers_ms']:.3f}",
            f"{a['cpu_min']:.2f}-{a['cpu_max']:.2f}",
            f"{a['peak_total_mib']:.1f}" + (f" ({a['peak_self_mib']:.1f} + {a['helpers']}x helper "
                                             f"{a['peak_helpers_mib']:.1f})" if a["helpers"] else ""),
            f"{a['req_per_pull']:.2f}", f"{a['server_us_per_req']:.0f}",
        ])
    print("\nResults (median of rounds; CPU = worker process + script helper processes)")
    print(common.table(["variant", "pulls/s", "range", "p50 ms", "CPU ms/pull", "= worker + helpers",
                        "CPU range", "peak RSS MiB", "API req/pull", "API µs CPU/req"], rows))
    skipped = [f"  {name}: {a['message']}" for name, a in agg.items() if a["status"] != "ok"]
    if skipped:
        print("\n".join(["", *skipped]))
    newman = agg.get("newman", {})
    if newman.get("status") == "ok":
        x = newman["extra"]
        print(f"\nnewman {x['version']}: one run of N={x['n']} iterations = {x['wall_s']:.2f} s wall, "
              f"{x['cpu_self_s']:.2f} s CPU; a 1-iteration run (start-up) = {x['startup_wall_s']:.2f} s wall, "
              f"{x['startup_cpu_s']:.2f} s CPU; marginal per pull = {x['marginal_wall_ms']:.2f} ms wall, "
              f"{x['marginal_cpu_ms']:.2f} ms CPU ({1000 / x['marginal_wall_ms']:.0f} pulls/s steady state)")
    print(f"mock API total: {api_total['cpu_s']:.2f} s CPU, peak RSS {api_total['maxrss_kib'] / 1024:.1f} MiB, "
          f"requests {json.dumps(api_total['counts'])}")
    _targets(agg)


SIGNFEED_VARIANTS = {"signfeed-changing": 2.0, "signfeed-unchanged": 1.3, "auth-changing": 2.0, "auth-unchanged": 1.3}


def _target_rows(name: str, a: dict[str, Any], floor: dict[str, Any], newman: dict[str, Any]) -> list[list[str]]:
    """The three targets for one signfeed variant: CPU vs the floor, pulls/s vs Newman, peak RSS."""
    rows = []
    if floor.get("status") == "ok":
        limit = SIGNFEED_VARIANTS[name]
        ratio = a["cpu_ms"] / floor["cpu_ms"]
        rows.append([f"CPU/pull {name} / floor", f"{ratio:.2f}x  ({a['cpu_ms']:.3f} / {floor['cpu_ms']:.3f} ms)",
                     f"<= {limit}x", common.verdict(ratio <= limit)])
    if newman.get("status") == "ok":
        whole = a["rate"] / newman["rate"]
        steady = a["rate"] / (1000 / newman["extra"]["marginal_wall_ms"])
        note = "" if (steady >= 10) == (whole >= 10) else f" (whole run: {common.verdict(whole >= 10)})"
        rows.append([f"pulls/s {name} / newman", f"{whole:.1f}x whole run; {steady:.1f}x vs newman's steady state",
                     ">= 10x", common.verdict(steady >= 10) + note])
    rows.append([f"peak RSS {name} (worker + helpers)", f"{a['peak_total_mib']:.1f} MiB", "<= 80 MiB",
                 common.verdict(a["peak_total_mib"] <= 80)])
    return rows


def _targets(agg: dict[str, dict[str, Any]]) -> None:
    floor, newman = agg.get("floor", {}), agg.get("newman", {})
    measured = [name for name in SIGNFEED_VARIANTS if agg.get(name, {}).get("status") == "ok"]
    rows = [row for name in measured for row in _target_rows(name, agg[name], floor, newman)]
    if rows:
        print("\nTargets")
        print(common.table(["target", "measured", "limit", "verdict"], rows))
    if floor.get("status") == "ok" and measured:
        print("\nCPU above the floor per pull: "
              + ", ".join(f"{name} +{agg[name]['cpu_ms'] - floor['cpu_ms']:.3f} ms" for name in measured))
    cached = agg.get("floor-cached", {})
    auth = [name for name in measured if name.startswith("auth")]
    if cached.get("status") == "ok" and auth:
        print("[auth] variants vs floor-cached (both send one request per pull): "
              + ", ".join(f"{name} {agg[name]['cpu_ms'] / cached['cpu_ms']:.2f}x CPU" for name in auth))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="measured pulls per variant and round (default 300)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured pulls first (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="V",
                        help=f"which variants (default all: {' '.join(VARIANTS)})")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="stop a variant's loop after this long (default 120)")
    parser.add_argument("--newman-dir", type=Path, default=NEWMAN_DIR,
                        help=f"npm --prefix for newman, reused if present (default {NEWMAN_DIR})")
    parser.add_argument("--fresh-newman", action="store_true", help="delete --newman-dir and install again")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant only (internal: the parent uses it)")
    parser.add_argument("--api", help="mock API base URL for --variant (default: start one)")
    parser.add_argument("--json", action="store_true", help="with --variant: print one JSON line")
    args = parser.parse_args(argv)
    if args.n < 2 or args.rounds < 1:
        parser.error("--n must be >= 2 and --rounds >= 1")
    if args.variant is None:
        return orchestrate(args)
    own_api = None
    if args.api is None:
        own_api = common.MockAPI()
        args.api = own_api.url
    try:
        result = run_variant(args.variant, args)
    finally:
        if own_api is not None:
            own_api.stop()
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0 if result["status"] != "error" else 1


if __name__ == "__main__":
    raise SystemExit(main())
