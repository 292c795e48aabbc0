"""The `signfeed` command: a thin argparse layer over config, pipeline and scheduler."""

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from worker import config as config_mod
from worker import fetch
from worker.check import check_all
from worker.config import Config, Source
from worker.errors import WorkerError
from worker.fetch import preview
from worker.pipeline import Deps, RunResult, open_deps, render_all, run_source
from worker.render import ago
from worker.scheduler import Daemon, LocalCronTrigger
from worker.script import ScriptRunner
from worker.store import SourceState

log = logging.getLogger("signfeed")
PREVIEW_BODY = 1500

EXAMPLES = {
    "run": "signfeed run --config /etc/signfeed/config.toml",
    "test": "signfeed test menu",
    "pull": "signfeed pull menu weather --force",
    "render": "signfeed render",
    "check": "signfeed check --config config.toml",
    "history": "signfeed history menu --limit 10",
    "status": "signfeed status",
    "demo": "signfeed demo",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signfeed", description="Pull API data on a schedule into signage feeds.")
    parser.add_argument("--config", default="config.toml", help="path to config.toml (default: ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "run": "run the daemon: every source on its schedule until SIGTERM",
        "test": "one pull of SOURCE without storing: request, response, script output",
        "pull": "pull now (all sources or the ones named), store and render",
        "render": "re-render every feed from stored snapshots (after a template edit)",
        "check": "validate config.toml, pre-request scripts and templates",
        "history": "recent runs and snapshots of SOURCE",
        "status": "one line per source: last success, last error, failures",
        "demo": "start the bundled demo API on 127.0.0.1:8787 and run the daemon on config.toml",
    }
    commands = {}
    for name, text in helps.items():
        commands[name] = sub.add_parser(name, help=text, description=text, epilog=f"example: {EXAMPLES[name]}")
        commands[name].add_argument("--config", default=argparse.SUPPRESS, help="path to config.toml")
    commands["test"].add_argument("source")
    commands["pull"].add_argument("sources", nargs="*", metavar="SOURCE")
    commands["pull"].add_argument("--force", action="store_true", help="re-render even when the data is unchanged")
    commands["history"].add_argument("source")
    commands["history"].add_argument("--limit", type=_positive, default=10, help="rows of each kind (default 10)")
    return parser


def _positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; WorkerErrors become one line on stderr and exit status 1."""
    args = _parser().parse_args(argv)
    # journald stamps each line itself; a person at a terminal gets the time in the line.
    stamp = "%(asctime)s " if sys.stderr.isatty() else ""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=stamp + "%(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # signfeed logs skipped overlaps itself, with the source name; APScheduler's own line would repeat it.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    if args.command not in ("run", "demo") and not args.verbose:
        # One-shot commands print each result themselves; the pipeline's log lines would say it twice.
        logging.getLogger("worker.pipeline").setLevel(logging.CRITICAL)
    try:
        return COMMANDS[args.command](args)
    except WorkerError as exc:
        print(f"signfeed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        print(f"signfeed: internal error: {exc.__class__.__name__}: {fetch.preview(str(exc))} "
              "(run with -v for the traceback, and please report it)", file=sys.stderr)
        return 2


def _with_deps(args: argparse.Namespace, body: Callable[[Config, Deps], int]) -> int:
    config = config_mod.load(args.config)
    deps = open_deps(config)
    try:
        return body(config, deps)
    finally:
        deps.close()


def cmd_run(args: argparse.Namespace) -> int:
    return Daemon(args.config).run()


def cmd_test(args: argparse.Namespace) -> int:
    def body(config: Config, deps: Deps) -> int:
        result = run_source(config.source(args.source), config, deps, store=False)
        print_test(result)
        return 0 if result.ok else 1

    return _with_deps(args, body)


def print_test(result: RunResult) -> None:
    """What the "Run Test" button shows: request as sent (masked), script console, response."""
    if result.request:
        req = result.request
        params = "&".join(f"{k}={v}" for k, v in req.get("params", {}).items())
        print(f"{req['method']} {req['url']}{'?' + params if params else ''}")
        for name, value in req["headers"].items():
            print(f"  {name}: {value}")
        if req.get("body"):
            print(f"  body: {preview(req['body'])}")
    if result.auth_note:
        print(result.auth_note)
    if result.console:
        print("script console:")
        for level, line in result.console:
            print(f"  [{level}] {line}")
    if result.response:
        resp = result.response
        print(f"HTTP {resp.status} in {resp.elapsed_ms:.0f} ms, {len(resp.body):,} bytes")
        for name, value in result.shown_headers.items():
            print(f"  {name}: {value}")
        text = result.shown_body
        print(text[:PREVIEW_BODY] + ("\n…" if len(text) > PREVIEW_BODY else ""))
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"ok in {result.duration_ms:.0f} ms" if result.ok else f"FAILED: {result.error}")


def cmd_pull(args: argparse.Namespace) -> int:
    def body(config: Config, deps: Deps) -> int:
        sources = [config.source(n) for n in args.sources] if args.sources else list(config.sources)
        failed = 0
        for source in sources:
            result = run_source(source, config, deps, force=args.force)
            line = result.error if not result.ok else f"{source.name}: {result.status} ({result.duration_ms:.0f} ms)"
            print(line)
            for problem in result.render_errors:
                print(problem)
            failed += (not result.ok) or bool(result.render_errors)
        return 1 if failed else 0

    return _with_deps(args, body)


def cmd_render(args: argparse.Namespace) -> int:
    def body(config: Config, deps: Deps) -> int:
        result = render_all(config, deps)
        for path in result.written:
            print(f"wrote {path}")
        for problem in result.render_errors:
            print(problem, file=sys.stderr)
        return 1 if result.render_errors else 0

    return _with_deps(args, body)


def cmd_check(args: argparse.Namespace) -> int:
    config = config_mod.load(args.config)
    with ScriptRunner(size=1) as runner:
        problems, warnings = check_all(config, runner)
    for line in warnings:
        print(f"warning: {line}")
    for line in problems:
        print(f"error: {line}")
    if not problems:
        print(f"{args.config}: ok ({len(config.sources)} sources, {len(config.feeds)} feeds)")
    return 1 if problems else 0


def cmd_history(args: argparse.Namespace) -> int:
    def body(config: Config, deps: Deps) -> int:
        name = config.source(args.source).name
        print(f"runs of {name} (newest first, times in {config.worker.timezone}):")
        tz = config.worker.tz
        for run in deps.store.runs(name, args.limit):
            started = datetime.fromisoformat(run.started_at).astimezone(tz)
            print(f"  {started:%Y-%m-%d %H:%M:%S}  {run.status:<9} {run.duration_ms:>8.0f} ms  {run.error or ''}")
        print(f"snapshots (times in {config.worker.timezone}):")
        for snap in deps.store.snapshots(name, args.limit):
            fetched = datetime.fromisoformat(snap.fetched_at).astimezone(tz)
            print(f"  {fetched:%Y-%m-%d %H:%M:%S}  HTTP {snap.http_status}  {snap.data:>8} characters  "
                  f"{snap.content_hash[:12]}")
        return 0

    return _with_deps(args, body)


def cmd_status(args: argparse.Namespace) -> int:
    def body(config: Config, deps: Deps) -> int:
        now = deps.clock()
        for source in config.sources:
            state = deps.store.state(source.name)
            success = (f"{state.last_success_at.astimezone(config.worker.tz):%Y-%m-%d %H:%M:%S} "
                       f"({ago(state.last_success_at, now)})"
                       if state.last_success_at else "never")
            error = f", {state.consecutive_failures} failing: {state.last_error}" if state.last_error else ""
            print(f"{source.name}: last success {success}{error}; next due {_next_due(source, config, state, now)}")
        return 0

    return _with_deps(args, body)


def _next_due(source: Source, config: Config, state: SourceState, now: datetime) -> str:
    """When the daemon will next pull the source (as far as the database and schedule tell)."""
    tz = config.worker.tz
    if source.cron:
        due = LocalCronTrigger(source.cron, config.worker.timezone).get_next_fire_time(None, now)
    elif state.last_run_at is not None:
        due = max(state.last_run_at + timedelta(seconds=source.every or 0), now)
    else:
        return "at daemon start"
    return f"{due.astimezone(tz):%H:%M:%S}" if due else "never"


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import DEFAULT_PORT, DemoAPI

    api = DemoAPI()
    try:
        # The bundled config.toml names this port (DEMO_API, OAUTH_AUTHENTICATION_URL), so it is not an option.
        _server, base_url = api.start(port=DEFAULT_PORT)
    except OSError as exc:
        raise WorkerError(f"cannot start the demo API on 127.0.0.1:{DEFAULT_PORT}: {exc.strerror}; "
                          "is another `signfeed demo` running? Stop it, or free the port") from None
    try:
        daemon = Daemon(args.config)
    except BaseException:
        api.stop()
        raise
    feeds = daemon.config.worker.feeds_dir
    print(f"demo API on {base_url}; feeds in {feeds}/ (open {Path(feeds) / 'lobby.html'}); Ctrl-C stops both")
    try:
        return daemon.run()
    finally:
        api.stop()


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "test": cmd_test,
    "pull": cmd_pull,
    "render": cmd_render,
    "check": cmd_check,
    "history": cmd_history,
    "status": cmd_status,
    "demo": cmd_demo,
}
