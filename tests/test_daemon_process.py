"""The daemon as a real process: SIGTERM exits cleanly, SIGHUP reloads, SIGKILL at any moment loses nothing."""

import json
import os
import queue
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Api, Project

pytestmark = pytest.mark.slow


class Daemon:
    """`python -m worker run` in a subprocess, with its log lines readable as they come."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "worker", "--config", str(config), "run"],
                                     stderr=subprocess.PIPE, text=True, cwd=config.parent,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 20) -> str:
        """Block until a log line matches (a real event), failing with the log so far."""
        regex = re.compile(pattern)
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no log line matching {pattern!r}; log so far:\n" + "\n".join(self.log))
            self.log.append(line)
            if regex.search(line):
                return line

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=20)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def config_text(api: Api, names: list[str], every: str = "1s") -> str:
    text = ""
    for name in names:
        text += f'[[sources]]\nname = "{name}"\nurl = "{api.url}/{name}"\nevery = "{every}"\n\n'
    text += f'[[feeds]]\noutput = "board.html"\ntemplate = "board.html.j2"\nsources = ["{names[0]}"]\n'
    return text


def counting_route(api: Api, name: str, hits: "queue.Queue[int]") -> None:
    """Data that changes on every request (so every run writes), reporting each hit to the test."""
    count = {"n": 0}

    def reply(seen):
        count["n"] += 1
        hits.put(count["n"])
        doc = {"title": f"v{count['n']}", "items": [{"name": f"item {i}"} for i in range(50)]}
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()

    api.routes[f"/{name}"] = reply


def test_sigterm_lets_the_daemon_finish_and_exit_0(api: Api, project: Project, daemons: list[Daemon]) -> None:
    api.json("/menu", {"title": "x", "items": []})
    project.write("config.toml", config_text(api, ["menu"], every="1h"))
    daemon = Daemon(project.root / "config.toml")
    daemons.append(daemon)
    daemon.expect(r"INFO menu: ok \(HTTP 200")
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=20) == 0
    daemon.expect(r"signfeed: stopped")


def test_sighup_reloads_added_sources_and_rejects_a_broken_config(api: Api, project: Project,
                                                                  daemons: list[Daemon]) -> None:
    for name in ("menu", "news"):
        api.json(f"/{name}", {"title": name, "items": []})
    project.write("config.toml", config_text(api, ["menu"], every="1h"))
    daemon = Daemon(project.root / "config.toml")
    daemons.append(daemon)
    daemon.expect(r"INFO menu: ok")
    project.write("config.toml", config_text(api, ["menu", "news"], every="1h"))
    daemon.signal(signal.SIGHUP)
    daemon.expect(r"reloaded .* \(2 sources\)")
    daemon.expect(r"INFO news: ok")
    project.write("config.toml", config_text(api, ["menu"], every="1h") + "\nnonsense = true\n")
    daemon.signal(signal.SIGHUP)
    daemon.expect(r"ERROR reload rejected, keeping the running config: .*unknown key 'nonsense'")
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=20) == 0


def test_sigkill_at_random_moments_never_leaves_a_broken_feed_or_database(api: Api, project: Project,
                                                                          daemons: list[Daemon]) -> None:
    names = ["menu", "news", "rooms"]
    hits: queue.Queue[int] = queue.Queue()
    for name in names:
        counting_route(api, name, hits)
    project.write("config.toml", config_text(api, names))
    database = project.root / "data" / "signfeed.db"
    rng = random.Random(20261203)
    runs_before = 0
    for _cycle in range(8):
        daemon = Daemon(project.root / "config.toml")
        daemons.append(daemon)
        for _ in range(rng.randint(1, 12)):  # kill after a random number of requests: mid-run, mid-write, idle
            hits.get(timeout=30)
        daemon.proc.kill()
        daemon.proc.wait(timeout=20)
        with sqlite3.connect(database) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            runs = conn.execute("select count(*) from runs").fetchone()[0]
            snapshot_times = {row[0] for row in conn.execute("select fetched_at from snapshots")}
        assert runs >= runs_before, "a committed run record disappeared"
        runs_before = runs
        for feed in (project.root / "feeds").glob("*.json"):
            doc = json.loads(feed.read_text())  # a half-written feed would not parse
            assert doc["fetched_at"] is None or any(t.startswith(doc["fetched_at"][:19]) for t in snapshot_times)
        board = project.root / "feeds" / "board.html"
        if board.exists():
            assert board.read_text().endswith("</small>")
    assert runs_before > 0
    # A restart cleans the temporary files a kill can leave behind, then carries on.
    (project.root / "feeds" / ".menu.json.killed.tmp").write_text('{"half": ')
    leftovers = list((project.root / "feeds").glob(".*.tmp"))
    daemon = Daemon(project.root / "config.toml")
    daemons.append(daemon)
    daemon.expect(r"sources scheduled")
    assert not [p for p in leftovers if p.exists()]
    daemon.expect(r"INFO (menu|news|rooms): ok")
