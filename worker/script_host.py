"""QuickJS engine for pre-request scripts, and the helper process that runs it (JSON lines on stdin/stdout)."""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import json
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

# This file also runs as `python -I worker/script_host.py`, so it imports nothing from `worker`.


def _load_engine() -> ModuleType:
    """dukpy's QuickJS extension alone: the dukpy package's __init__ also imports its npm installer
    (urllib, http.client, email), which would cost every helper about 11 MB of memory it never uses."""
    package = importlib.util.find_spec("dukpy")
    if package is None or not package.submodule_search_locations:
        raise ImportError("dukpy is not installed")
    spec = importlib.machinery.PathFinder.find_spec("_dukpy", list(package.submodule_search_locations))
    if spec is None or spec.loader is None:
        raise ImportError("dukpy's _dukpy extension is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_dukpy = _load_engine()

PRELUDE = Path(__file__).with_name("prelude.js").read_bytes()
# Evaluated as a module under this name, so the shim's stack frames never look like the user's.
PRELUDE_NAME = "signfeed:prelude"
# User code runs as the body of an async arrow in a classic script: top-level await works, its
# declarations stay local to the run, and the prefix sits on the user's first line, so every line
# number in an error is the user's. (Only columns on line 1 shift.)
ARROW_HEAD = "async () => {"
ARROW_TAIL = "\n}"
# A syntax check puts a throw first: the engine parses the whole script, then stops at that statement.
CHECK_SENTINEL = "signfeed:syntax-check-only"
# A module parse (the old check) pins a stray `}` to its own line; see _stray_brace. The import can
# never resolve, so QuickJS parses the whole module and fails before running any of it.
CHECK_MODULE = "signfeed:syntax-check-only"
CHECK_MARK = f'\n;import "{CHECK_MODULE}";\n'
# Classic scripts all run under this name, whatever name the host passes.
SCRIPT_NAME = "<dukpy>"
# A reused context is replaced after this many runs, or once the process has grown this much since
# the context was built; both are safety nets against slow accumulation inside the engine.
RECYCLE_RUNS = 500
RECYCLE_GROWTH_BYTES = 32 * 1024 * 1024
RECYCLE_MEMORY_EVERY = 16  # runs between /proc reads for the growth check
CONTEXT_PATHS = "request.url, request.method, request.body, request.headers.<name>, request.params.<name>"
MAX_CONSOLE_LINES = 500
MAX_CONSOLE_CHARS = 2000

_PAGE = resource.getpagesize()

# Engine-side host: (op, args) -> {"ok": result} or {"error": message}, as a dict or already as JSON.
EngineHost = Callable[[str, dict[str, Any]], dict[str, Any] | bytes]


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


def _source(code: str) -> str:
    """The code as the engine sees it, with a leading #! line turned into a comment (legal only at offset 0)."""
    text = code.encode(errors="replace").decode()
    return "//" + text[2:] if text.startswith("#!") else text


def _js_length(text: str) -> int:
    """Length in UTF-16 code units, as JavaScript counts it."""
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


def _user_frames(text: str, path: str) -> str:
    """Name the user's file in the engine's stack: the wrapped code's frames are the only script frames
    that are not the host's own `<eval>` top level."""
    head, sep, stack = text.partition("\n    at ")
    if not sep:
        return text
    stack = stack.replace(f"<eval> ({SCRIPT_NAME}:", "<eval> (signfeed:driver:").replace(f"{SCRIPT_NAME}:", f"{path}:")
    return head + sep + stack


def _stray_brace(code: str, path: str) -> str | None:
    """The module parser's error if it stops at a `}` that closes nothing, else None.

    Inside the wrapper such a brace closes the arrow itself, so the parser only complains at some later
    token, often past the user's last line; parsed as a module, the code fails at the brace.
    """
    try:
        _dukpy.eval_string(_Bare(), (code + CHECK_MARK).encode(errors="replace"), b"{}", True, path)
    except _dukpy.JSRuntimeError as exc:
        text = str(exc)
        if text.startswith("SyntaxError") and text.split("\n", 1)[0].endswith("'}'"):
            return text
    return None


def _engine_error(text: str, code: str, path: str) -> str:
    """The engine's error text as the user should see it: their file named in the frames, a stray `}` found."""
    if text.startswith("SyntaxError") and f"\n    at {SCRIPT_NAME}:" in text:  # raised by the parser, not at run time
        stray = _stray_brace(code, path)
        if stray is not None:
            return stray
    return _user_frames(text, path)


@functools.cache
def _statm_fd() -> int:
    """A descriptor on /proc/self/statm, kept open: re-reading it is one pread, opening it is several calls."""
    return os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)


def _memory() -> tuple[int, int]:
    """(mapped, resident) bytes of this process (Linux)."""
    mapped, resident = os.pread(_statm_fd(), 128, 0).split()[:2]
    return int(mapped) * _PAGE, int(resident) * _PAGE


class Engine:
    """Runs scripts in one hardened QuickJS context with the shim loaded; dukpy calls back into it."""

    def __init__(self) -> None:
        self._run: _Run | None = None
        self._dirty = True
        self._runs = 0
        self._resident = 0
        self.prepare()

    def prepare(self) -> None:
        """Replace the context if it is due (the helper does this while idle, off the critical path)."""
        # One context serves many runs: building one (engine, shim, hardening) costs about 5 ms of CPU,
        # many times a run. The shim freezes the intrinsics and deletes each run's globals; a run that
        # fails, or trips one of the shim's checks, may have left something behind and marks it dirty.
        if not self._due():
            return
        self._ctx = _dukpy.create_context()
        self._eval(PRELUDE, module=True, filename=PRELUDE_NAME)
        self._dirty = False
        self._runs = 0
        self._resident = _memory()[1]

    def _due(self) -> bool:
        """Whether the context must be replaced before the next run."""
        if self._dirty or self._runs >= RECYCLE_RUNS:
            return True
        if self._runs % RECYCLE_MEMORY_EVERY:
            return False
        return _memory()[1] - self._resident > RECYCLE_GROWTH_BYTES

    def _eval(self, code: bytes, module: bool = False, filename: str = SCRIPT_NAME) -> bytes | None:
        """Evaluate code; the raw JSON of its completion value (serialised after the engine drains its jobs)."""
        result: bytes | None = _dukpy.eval_string(self, code, b"{}", module, filename)
        return result

    def run(
        self, code: str, path: str, request: dict[str, Any], host: EngineHost, console: ConsoleSink
    ) -> dict[str, Any]:
        """Run a script to completion (timers included) and return the request it left, or raise."""
        self.prepare()
        self._runs += 1
        state = self._run = _Run(request, host, console)
        arrow = ARROW_HEAD + _source(code) + ARROW_TAIL
        settled = False
        try:
            status = self._eval(f"__signfeed.run({_js_length(arrow)}, {arrow});".encode())
            while status == b'"timers"':
                status = self._eval(b"__signfeed.tick()")
            if status != b'"done"':
                raise ScriptFailure("unfinished", "")
            settled = True
        except _dukpy.JSRuntimeError as exc:
            raise ScriptFailure(_failure_kind(str(exc)), _engine_error(str(exc), code, path)) from None
        except MemoryError:
            raise ScriptFailure("memory", "MemoryError") from None
        finally:
            self._run = None
            if not settled:
                self._dirty = True  # queued jobs, a pending promise or half-done state may be left behind
        return state.request

    @staticmethod
    def check(code: str, path: str) -> str | None:
        """Parse code exactly as a run would, without running it; return the engine's error text, or None."""
        text = f'throw "{CHECK_SENTINEL}";({ARROW_HEAD}{_source(code)}{ARROW_TAIL});'
        try:
            _dukpy.eval_string(_Bare(), text.encode(), b"{}", False, path)
        except _dukpy.JSRuntimeError as exc:
            error = str(exc)
            return None if error.split("\n", 1)[0] == CHECK_SENTINEL else _engine_error(error, code, path)
        return "internal error: the syntax check ran the script"

    # ---- dukpy host protocol ----
    def _check_exported_function_exists(self, name: bytes) -> bool:
        """Only the shim's entry points exist."""
        return name in (b"sf_console", b"sf_context", b"sf_host", b"sf_dirty")

    def _call_python(self, name: bytes, json_args: bytes) -> bytes:
        """Serve a call from the shim; failures go back as {"error": ...} so JS throws a plain Error."""
        args = json.loads(json_args)
        try:
            reply = self._dispatch(name.decode(), args)
        except ValueError as exc:
            reply = {"error": str(exc)}
        return reply if isinstance(reply, bytes) else json.dumps(reply).encode()

    def _dispatch(self, name: str, args: list[Any]) -> dict[str, Any] | bytes:
        """Route a shim call to the current run."""
        if name == "sf_dirty":
            self._dirty = True  # the shim saw something a later run must not inherit
            return {"ok": None}
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
        mapped = _memory()[0]
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

    def host(self, op: str, args: dict[str, Any]) -> bytes:
        """Ask the parent to perform a host call and wait for its reply, passed on to the engine as it came."""
        self.send({"t": "host", "op": op, "args": args})
        reply = self._inp.readline()
        if not reply:
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
