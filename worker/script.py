"""Pre-request scripts: run them in warm helper processes with time and memory limits, and lint them."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from worker import jsontext
from worker.errors import ScriptError, WorkerError

HostCall = Callable[[str, dict[str, Any]], dict[str, Any]]

HOST_OPS = ("http", "auth_token")
START_TIMEOUT = 30.0  # a cold helper imports Python and dukpy; not charged to the script's own timeout
CHECK_TIMEOUT = 10.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# -I: ignore PYTHON* variables, user site and the cwd; the package root goes last so it shadows nothing.
_HELPER_CMD = [
    sys.executable,
    "-I",
    "-c",
    f"import sys; sys.path.append({_PACKAGE_ROOT!r}); from worker.script_host import main; main()",
]


@dataclass(frozen=True)
class ScriptJob:
    """One pre-request script run: where it comes from, its code and the request it may change."""

    source: str
    path: str
    code: str
    request: dict[str, Any]
    timeout: float = 10.0
    memory_mb: int = 64


@dataclass
class ScriptOutcome:
    """The request after the script's os.context.set calls, and what it printed."""

    request: dict[str, Any]
    console: list[tuple[str, str]] = field(default_factory=list)


# ---- error messages ----

_NAMED = re.compile(r"([A-Za-z_$][\w$]*): (.*)", re.S)
_LINE_BREAK = re.compile(r"\r\n|[\n\r\u2028\u2029]")


def _split_js_error(text: str, code: str, path: str) -> tuple[str, int | None]:
    """Engine error text -> (one-line message, the user's line number if a frame names the script)."""
    head, _, stack = text.partition("\n    at ")
    head = " ".join(head.split())
    frame = re.search(re.escape(path) + r":(\d+):\d+", stack)
    if frame is None:
        return head, None
    last = len(_LINE_BREAK.split(code.rstrip("\r\n\u2028\u2029")))
    if int(frame[1]) <= last:
        return head, int(frame[1])
    # Past the last line means the parser reached the marker appended after the script, so the
    # script itself ended too early; the engine's message would name the marker's first token.
    if head.startswith("SyntaxError"):
        head = "SyntaxError: unexpected end of script (something is not closed)"
    return head, last


def _error(job: ScriptJob, message: str, console: list[tuple[str, str]]) -> ScriptError:
    """A ScriptError carrying the console lines printed before the failure."""
    error = ScriptError(f"{job.source}: {message}")
    error.console = console  # type: ignore[attr-defined]
    return error


def _failure(job: ScriptJob, kind: str, text: str, console: list[tuple[str, str]]) -> ScriptError:
    """Turn an engine failure into the operator-facing ScriptError."""
    if kind == "memory":
        return _error(job, f"pre-request script exceeded {job.memory_mb} MB ({job.path})", console)
    if kind == "unfinished":
        message = "pre-request script never finished: a promise it awaits never settles"
        return _error(job, f"{message} ({job.path})", console)
    head, line = _split_js_error(text, job.code, job.path)
    where = job.path if line is None else f"{job.path}:{line}"
    named = _NAMED.fullmatch(head)
    if named is None or named[1] == "Error":
        head = "pre-request script failed: " + (named[2] if named else head)
    return _error(job, f"{head} ({where})", console)


def _timed_out(job: ScriptJob, console: list[tuple[str, str]]) -> ScriptError:
    """The wall-clock limit message."""
    return _error(job, f"pre-request script timed out after {job.timeout:g}s ({job.path})", console)


def _check_error(path: str, code: str, text: str) -> ScriptError:
    """A syntax-check failure as path:line: message."""
    head, line = _split_js_error(text, code, path)
    return ScriptError(f"{path}: {head}" if line is None else f"{path}:{line}: {head}")


def _serve_host(
    job: ScriptJob, host_call: HostCall, op: str, args: dict[str, Any], deadline: float | None
) -> dict[str, Any]:
    """Perform one os.* host call for the script; WorkerError becomes a rejection in JS."""
    if op not in HOST_OPS:
        return {"error": f"unknown host call {op!r}"}
    if op == "http" and deadline is not None:
        # The request may only use what is left of the script's budget.
        remaining = max(deadline - time.monotonic(), 0.001)
        asked = args.get("timeout")
        args = {**args, "timeout": min(asked, remaining) if asked else remaining}
    try:
        return {"ok": host_call(op, args)}
    except WorkerError as exc:
        return {"error": str(exc).removeprefix(f"{job.source}: ")}


# ---- helper processes ----


class _HelperDied(Exception):
    """The helper process exited or closed its pipe."""


def _helper_env() -> dict[str, str]:
    """Just enough environment for Python to start; no secrets from ours."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
    if "LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


class _Helper:
    """One warm `script_host` process speaking JSON lines."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            _HELPER_CMD,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_helper_env(),
            cwd="/",
            start_new_session=True,  # terminal signals go to the worker, which cleans up its helpers
        )
        self.busy = False  # mid-conversation: only a kill brings it back to a known state
        self._buffer = b""
        self._poll = select.poll()
        self._poll.register(self.proc.stdout.fileno(), select.POLLIN)  # type: ignore[union-attr]
        try:
            ready = self.receive(time.monotonic() + START_TIMEOUT)
        except _HelperDied:
            ready = None
        if ready is None or ready.get("t") != "ready":
            self.kill()
            raise OSError(f"script helper did not start ({self.exit_status()})")

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def send(self, message: dict[str, Any]) -> None:
        """Write one message."""
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError) as exc:
            raise _HelperDied from exc

    def receive(self, deadline: float) -> dict[str, Any] | None:
        """Next message, or None once the deadline passes; poll() waits without holding the GIL."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._poll.poll(remaining * 1000):
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _HelperDied
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return jsontext.loads(line)  # a script can print or set "\ud800", which nothing downstream could write

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def exit_status(self) -> str:
        """How the process ended, for messages."""
        code = self.proc.wait()
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


class ScriptRunner:
    """Runs scripts in a pool of warm helper processes (started lazily, up to `size`); thread-safe."""

    def __init__(self, size: int = 2) -> None:
        self._size = max(1, size)
        self._idle: list[_Helper] = []
        self._live = 0
        self._closed = False
        self._cond = threading.Condition()

    def __enter__(self) -> ScriptRunner:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _acquire(self, what: str) -> _Helper:
        """An idle helper, a new one if the pool has room, else wait for one."""
        with self._cond:
            while not self._closed and not self._idle and self._live >= self._size:
                self._cond.wait()
            if self._closed:
                raise ScriptError(f"{what}: the script runner is closed")
            if self._idle:
                return self._idle.pop()
            self._live += 1
        try:
            return _Helper()
        except OSError as exc:
            self._forget()
            raise ScriptError(f"{what}: could not start the script helper: {exc}") from None

    def _forget(self) -> None:
        """Free a pool slot."""
        with self._cond:
            self._live -= 1
            self._cond.notify()

    def _release(self, helper: _Helper) -> None:
        """Back to the pool if it is in a known state, else kill it (it is replaced lazily)."""
        with self._cond:
            if not helper.busy and helper.alive and not self._closed:
                self._idle.append(helper)
                self._cond.notify()
                return
        helper.kill()
        self._forget()

    def run(self, job: ScriptJob, host_call: HostCall) -> ScriptOutcome:
        """Run the script; raise ScriptError on any failure (the request must then not be sent)."""
        helper = self._acquire(job.source)
        try:
            return _Conversation(helper, job, host_call).run()
        finally:
            self._release(helper)

    def check(self, code: str, path: str) -> None:
        """Syntax-check a script without running it; raise ScriptError("path:line: SyntaxError: ...")."""
        helper = self._acquire(path)
        try:
            reply = _ask_check(helper, code, path)
        finally:
            self._release(helper)
        if reply.get("error"):
            raise _check_error(path, code, reply["error"])

    def close(self) -> None:
        """Stop idle helpers now; busy ones stop when their run ends."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for helper in idle:
            helper.kill()


def _ask_check(helper: _Helper, code: str, path: str) -> dict[str, Any]:
    """Have a helper parse the code; its reply holds the engine's error text or None."""
    helper.busy = True
    try:
        helper.send({"t": "check", "code": code, "path": path})
        reply = helper.receive(time.monotonic() + CHECK_TIMEOUT)
    except _HelperDied:
        raise ScriptError(f"{path}: the script helper exited during the syntax check") from None
    if reply is None:
        raise ScriptError(f"{path}: the syntax check timed out")
    helper.busy = False
    return reply


class _Conversation:
    """One run's exchange with a helper: serve host calls until done, fail or the deadline."""

    def __init__(self, helper: _Helper, job: ScriptJob, host_call: HostCall) -> None:
        self.helper = helper
        self.job = job
        self.host_call = host_call
        self.console: list[tuple[str, str]] = []
        self.deadline = time.monotonic() + job.timeout

    def run(self) -> ScriptOutcome:
        """Drive the run to its end."""
        job = self.job
        request = {
            "t": "run",
            "code": job.code,
            "path": job.path,
            "request": job.request,
            "timeout": job.timeout,
            "memory_mb": job.memory_mb,
        }
        try:
            self.helper.busy = True
            self.helper.send(request)
            while True:
                outcome = self._step()
                if outcome is not None:
                    return outcome
        except _HelperDied:
            self.helper.kill()
            status = self.helper.exit_status()
            message = f"pre-request script helper exited unexpectedly ({status}) ({job.path})"
            raise _error(job, message, self.console) from None

    def _step(self) -> ScriptOutcome | None:
        """Handle one message from the helper; an outcome ends the run."""
        message = self.helper.receive(self.deadline)
        if message is None:
            self.helper.kill()
            raise _timed_out(self.job, self.console)
        kind = message["t"]
        if kind == "console":
            self.console.append((message["level"], message["text"]))
            return None
        if kind == "host":
            reply = _serve_host(self.job, self.host_call, message["op"], message["args"], self.deadline)
            if time.monotonic() >= self.deadline:
                self.helper.kill()
                raise _timed_out(self.job, self.console)
            self.helper.send(reply)
            return None
        self.helper.busy = False
        if kind == "done":
            return ScriptOutcome(request=message["request"], console=self.console)
        if message["kind"] == "memory":
            self.helper.kill()
        raise _failure(self.job, message["kind"], message["text"], self.console)


class InProcessRunner:
    """Same engine and shim in this process, without isolation or limits (benchmark baseline only)."""

    def __init__(self) -> None:
        # Imported here: the worker process itself never loads the JavaScript engine (about 10 MB).
        from worker.script_host import Engine

        self._engine = Engine()
        self._lock = threading.Lock()

    def run(self, job: ScriptJob, host_call: HostCall) -> ScriptOutcome:
        """Run the script in-process; raise ScriptError on failure."""
        console: list[tuple[str, str]] = []

        def host(op: str, args: dict[str, Any]) -> dict[str, Any]:
            return _serve_host(job, host_call, op, args, None)

        def sink(level: str, text: str) -> None:
            console.append((level, text))

        from worker.script_host import ScriptFailure

        with self._lock:
            try:
                request = self._engine.run(job.code, job.path, job.request, host, sink)
            except ScriptFailure as failure:
                raise _failure(job, failure.kind, failure.text, console) from None
        return ScriptOutcome(request=request, console=console)

    def check(self, code: str, path: str) -> None:
        """Syntax-check a script without running it."""
        text = self._engine.check(code, path)
        if text is not None:
            raise _check_error(path, code, text)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> InProcessRunner:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# ---- lint ----

_SCHEME_GLUED = re.compile(r"(Bearer|Basic)(?=\S)", re.I)
_SCHEME_GLUED_IN_CODE = re.compile(r"""(['"`])(Bearer|Basic)\1\s*\+""", re.I)
_FORM_CONCAT = re.compile(r"""\+\s*(['"`])=\1\s*\+|=(['"`])\s*\+|\$\{[^}]*\}=\$\{|[&?]\w+=\$\{""")
_RESERVED = set("+&=%/?# ")


def _glued_scheme(job: ScriptJob, outcome: ScriptOutcome | None) -> str | None:
    """The auth scheme glued to its token ("Bearerabc"), from the result or else from the code."""
    if outcome is not None:
        value = next(
            (str(v) for k, v in outcome.request.get("headers", {}).items() if k.lower() == "authorization"), ""
        )
        glued = _SCHEME_GLUED.match(value)
        return glued[1] if glued else None
    glued = _SCHEME_GLUED_IN_CODE.search(job.code)
    return glued[2] if glued else None


def _line_of(code: str, offset: int) -> int:
    """1-based line of a character offset."""
    return len(_LINE_BREAK.findall(code, 0, offset)) + 1


def lint(job: ScriptJob, outcome: ScriptOutcome | None, secret_values: Iterable[str]) -> list[str]:
    """Warnings about mistakes that make APIs reject the request; never changes anything."""
    warnings = []
    scheme = _glued_scheme(job, outcome)
    if scheme:
        warnings.append(
            f'{job.source}: Authorization header "{scheme}…" has no space after "{scheme}"; '
            f"most APIs reject it ({job.path})"
        )
    concat = _FORM_CONCAT.search(job.code)
    risky = [s for s in secret_values if s and s in job.code and _RESERVED.intersection(s)]
    if concat and risky and "encodeURIComponent" not in job.code:
        where = f"{job.path}:{_line_of(job.code, concat.start())}"
        warnings.append(
            f"{job.source}: the form body is built by string concatenation, but a secret it uses contains "
            f"a character that must be percent-encoded (+ & = % / ? # or space); wrap values in "
            f"encodeURIComponent() or pass an object to os.postRequest ({where})"
        )
    return warnings
