"""QuickJS engine for pre-request scripts, and the helper process that runs it (JSON lines on stdin/stdout)."""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import dukpy
from dukpy import _dukpy

# This file also runs as `python -I worker/script_host.py`, so it imports nothing from `worker`.

PRELUDE = Path(__file__).with_name("prelude.js").read_bytes()
# Appended, never prepended, so the user's line numbers stay as written.
DONE_MARK = "\n;globalThis.__sf_done = true;\n"
# An import that can never resolve: QuickJS parses the whole module, then fails before running any of it.
CHECK_MODULE = "signfeed:syntax-check-only"
CHECK_MARK = f'\n;import "{CHECK_MODULE}";\n'
CONTEXT_PATHS = "request.url, request.method, request.body, request.headers.<name>, request.params.<name>"
MAX_CONSOLE_LINES = 500
MAX_CONSOLE_CHARS = 2000

# Engine-side host: (op, args) -> {"ok": result} or {"error": message}.
EngineHost = Callable[[str, dict[str, Any]], dict[str, Any]]


ConsoleSink = Callable[[str, str], None]


class ScriptFailure(Exception):
    """A run that did not finish; kind is "js", "memory" or "unfinished", text is the engine's error."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text


class _Run:
    """The state one run mutates through os.context and console."""

    def __init__(self, request: dict[str, Any], host: EngineHost, console: ConsoleSink) -> None:
        self.request = {
            "method": request.get("method", "GET"),
            "url": request.get("url", ""),
            "headers": dict(request.get("headers") or {}),
            "params": dict(request.get("params") or {}),
            "body": request.get("body"),
        }
        self.host = host
        self._console = console
        self._lines = 0

    def log(self, level: str, text: str) -> None:
        """Pass a console line on, capped so a chatty loop cannot flood the parent."""
        self._lines += 1
        if self._lines <= MAX_CONSOLE_LINES:
            self._console(level, text[:MAX_CONSOLE_CHARS])
        elif self._lines == MAX_CONSOLE_LINES + 1:
            self._console("warn", "(further console output dropped)")


def _scalar(value: Any, what: str) -> str:
    """Coerce a JS scalar to the string a header, param or URL holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ValueError(f"{what} must be a string, not {type(value).__name__}")


def _set_header(headers: dict[str, str], name: str, value: Any) -> None:
    """Replace every casing of the header with one entry (or remove it when value is null)."""
    for key in [k for k in headers if k.lower() == name.lower()]:
        del headers[key]
    if value is None:
        return
    text = _scalar(value, f"header {name}")
    if "\r" in text or "\n" in text:
        raise ValueError(f"header {name} must not contain a line break")
    headers[name] = text


def context_get(request: dict[str, Any], path: str) -> Any:
    """Read os.context.get(path) from the request."""
    if path in ("request.url", "request.method", "request.body", "request.headers", "request.params"):
        return request[path.removeprefix("request.")]
    if path.startswith("request.headers.") and len(path) > 16:
        name = path[16:].lower()
        return next((v for k, v in request["headers"].items() if k.lower() == name), None)
    if path.startswith("request.params.") and len(path) > 15:
        return request["params"].get(path[15:])
    raise ValueError(f'unknown context path "{path}"; valid paths: {CONTEXT_PATHS}')


def context_set(request: dict[str, Any], path: str, value: Any) -> None:
    """Apply os.context.set(path, value) to the request."""
    if path in ("request.url", "request.method"):
        text = _scalar(value, path)
        request[path[8:]] = text.upper() if path == "request.method" else text
    elif path == "request.body":
        is_text = value is None or isinstance(value, str)
        request["body"] = value if is_text else json.dumps(value, separators=(",", ":"))
    elif path.startswith("request.headers.") and len(path) > 16:
        _set_header(request["headers"], path[16:], value)
    elif path.startswith("request.params.") and len(path) > 15:
        if value is None:
            request["params"].pop(path[15:], None)
        else:
            request["params"][path[15:]] = _scalar(value, path)
    else:
        raise ValueError(f'unknown context path "{path}"; valid paths: {CONTEXT_PATHS}')


def _failure_kind(text: str) -> str:
    """Tell an out-of-memory failure from an ordinary script error."""
    first = text.split("\n", 1)[0]
    return "memory" if "out of memory" in first or "MemoryError" in first else "js"


class Engine:
    """Runs each script in a fresh QuickJS context with the shim loaded; dukpy calls back into it."""

    def __init__(self) -> None:
        self._run: _Run | None = None
        self._dirty = True
        self.prepare()

    def prepare(self) -> None:
        """Build the next run's context now (the helper does this while idle, off the critical path)."""
        # A fresh context per run, not a reused one: QuickJS keeps every evaluated module for the
        # context's lifetime (each eval gets slower and memory grows), and deleting added globals
        # cannot undo a patched prototype. Building one costs about 1 ms.
        if self._dirty:
            self._ctx = _dukpy.create_context()
            self._eval(PRELUDE, module=False)
            self._dirty = False

    def _eval(self, code: bytes, module: bool, filename: str = "signfeed") -> Any:
        """Evaluate code and decode the JSON completion value."""
        result = _dukpy.eval_string(self, code, b"{}", module, filename)
        return None if result is None else json.loads(result)

    def run(
        self, code: str, path: str, request: dict[str, Any], host: EngineHost, console: ConsoleSink
    ) -> dict[str, Any]:
        """Run a script to completion (timers included) and return the request it left, or raise."""
        self.prepare()
        self._dirty = True
        state = self._run = _Run(request, host, console)
        try:
            self._eval((code + DONE_MARK).encode(errors="replace"), module=True, filename=path)
            while self._eval(b"__signfeed.fireNextTimer()", module=False):
                pass
            if not self._eval(b"globalThis.__sf_done === true", module=False):
                raise ScriptFailure("unfinished", "")
        except dukpy.JSRuntimeError as exc:
            raise ScriptFailure(_failure_kind(str(exc)), str(exc)) from None
        except MemoryError:
            raise ScriptFailure("memory", "MemoryError") from None
        finally:
            self._run = None
        return state.request

    @staticmethod
    def check(code: str, path: str) -> str | None:
        """Parse code as a module without running it; return the engine's error text, or None."""
        try:
            _dukpy.eval_string(_Bare(), (code + CHECK_MARK).encode(errors="replace"), b"{}", True, path)
        except dukpy.JSRuntimeError as exc:
            text = str(exc)
            return None if f"'{CHECK_MODULE}'" in text.split("\n", 1)[0] else text
        return "internal error: the syntax check ran the script"

    # ---- dukpy host protocol ----
    def _check_exported_function_exists(self, name: bytes) -> bool:
        """Only the shim's three entry points exist."""
        return name in (b"sf_console", b"sf_context", b"sf_host")

    def _call_python(self, name: bytes, json_args: bytes) -> bytes:
        """Serve a call from the shim; failures go back as {"error": ...} so JS throws a plain Error."""
        args = json.loads(json_args)
        try:
            reply = self._dispatch(name.decode(), args)
        except ValueError as exc:
            reply = {"error": str(exc)}
        return json.dumps(reply).encode()

    def _dispatch(self, name: str, args: list[Any]) -> dict[str, Any]:
        """Route a shim call to the current run."""
        run = self._run
        if run is None:
            return {"error": "no script is running"}
        if name == "sf_console":
            run.log(str(args[0]), str(args[1]))
            return {"ok": None}
        if name == "sf_context":
            if args[0] == "get":
                return {"ok": context_get(run.request, args[1])}
            context_set(run.request, args[1], args[2])
            return {"ok": None}
        return run.host(str(args[0]), args[1])


class _Bare:
    """A context with no host functions, for syntax checks."""

    def __init__(self) -> None:
        self._ctx = _dukpy.create_context()

    def _check_exported_function_exists(self, name: bytes) -> bool:
        """Nothing is exported."""
        return False

    def _call_python(self, name: bytes, json_args: bytes) -> None:
        """Never called."""
        return None


# ---- helper process ----

_MB = 1024 * 1024


class _Limits:
    """Per-run address-space and CPU limits; the CPU one only matters if the parent died mid-run."""

    def __init__(self) -> None:
        self._as = resource.getrlimit(resource.RLIMIT_AS)
        self._cpu = resource.getrlimit(resource.RLIMIT_CPU)

    def apply(self, memory_mb: int, timeout: float) -> None:
        """Allow memory_mb on top of what the process maps now, and bound CPU time."""
        with open("/proc/self/statm") as statm:  # Linux: what the address space holds right now
            mapped = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + memory_mb * _MB, self._as[1]))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        spent = usage.ru_utime + usage.ru_stime
        resource.setrlimit(resource.RLIMIT_CPU, (int(spent + timeout) + 5, self._cpu[1]))

    def lift(self) -> None:
        """Back to the limits the process started with."""
        resource.setrlimit(resource.RLIMIT_AS, self._as)
        resource.setrlimit(resource.RLIMIT_CPU, self._cpu)


class _Channel:
    """JSON lines to and from the parent."""

    def __init__(self, inp: BinaryIO, out: BinaryIO) -> None:
        self._inp = inp
        self._out = out

    def send(self, message: dict[str, Any]) -> None:
        """Write one message."""
        self._out.write(json.dumps(message).encode() + b"\n")
        self._out.flush()

    def receive(self) -> dict[str, Any] | None:
        """Read one message; None when the parent has gone."""
        line = self._inp.readline()
        return json.loads(line) if line else None

    def console(self, level: str, text: str) -> None:
        """Stream a console line, so the parent still has it if the run is killed."""
        self.send({"t": "console", "level": level, "text": text})

    def host(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Ask the parent to perform a host call and wait for its reply."""
        self.send({"t": "host", "op": op, "args": args})
        reply = self.receive()
        if reply is None:
            os._exit(0)  # the parent is gone; an exception here would only become a catchable JS error
        return reply


def _serve_run(engine: Engine, limits: _Limits, channel: _Channel, msg: dict[str, Any]) -> bool:
    """Run one script under limits and report; False when the helper must exit (memory exhausted)."""
    limits.apply(int(msg["memory_mb"]), float(msg["timeout"]))
    try:
        request = engine.run(msg["code"], msg["path"], msg["request"], channel.host, channel.console)
    except ScriptFailure as failure:
        limits.lift()
        channel.send({"t": "fail", "kind": failure.kind, "text": failure.text})
        if failure.kind == "memory":
            return False
        engine.prepare()
        return True
    limits.lift()
    channel.send({"t": "done", "request": request})
    engine.prepare()
    return True


def main() -> None:
    """Serve run and check requests until stdin closes."""
    # Keep the protocol on a private fd so stray prints cannot corrupt it.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    channel = _Channel(sys.stdin.buffer, out)
    engine = Engine()
    limits = _Limits()
    channel.send({"t": "ready", "pid": os.getpid()})
    while (msg := channel.receive()) is not None:
        if msg["t"] == "check":
            channel.send({"t": "checked", "error": Engine.check(msg["code"], msg["path"])})
        elif not _serve_run(engine, limits, channel, msg):
            return


if __name__ == "__main__":
    main()
