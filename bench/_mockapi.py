"""Loopback mock API for the benchmarks: an asyncio HTTP/1.1 server (keep-alive) on 127.0.0.1, no framework.

Routes
  POST /token            client-credentials token endpoint (form body: grant_type, client_id, client_secret)
  GET  /data/changing    ~5 KB JSON, different on every request (a sequence number); needs a Bearer token
  GET  /data/static      the same ~5 KB JSON every time; needs a Bearer token
  GET  /s/<i>            ~1 KB JSON for scale source i, no auth; source i's body changes on every 10th request to
                         it, offset by i, so 10% of the sources change per round of requests
  GET  /__stats          {"counts": {"<route> <status>": n}, "cpu_s": ..., "maxrss_kib": ..., "connections": n}

--delay-ms N answers every route but /__stats N ms after the request arrived (timers, not sleeping threads, so
thousands can wait at once). Prints "PORT <n>" once listening. Run by bench/_common.py:MockAPI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import secrets
import signal
from collections import Counter
from urllib.parse import parse_qs

REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed"}


def data_doc() -> dict[str, object]:
    """A ~5 KB menu-like document (the shape a signage feed shows)."""
    items = [
        {
            "id": i,
            "name": f"Dish number {i}",
            "category": ("starter", "main", "dessert", "drink")[i % 4],
            "price": round(3.5 + i * 0.25, 2),
            "vegan": i % 3 == 0,
            "allergens": ["gluten", "nuts"][: i % 3],
            "description": f"Seasonal special {i}: roasted vegetables, herbs, house sauce.",
        }
        for i in range(26)
    ]
    return {"title": "Cafeteria menu", "location": "Building A, ground floor", "currency": "EUR", "items": items}


STATIC_BODY = json.dumps(data_doc()).encode()
# Changing body = b'{"seq":N,' + the static document without its opening brace: one concatenation per request.
CHANGING_TAIL = STATIC_BODY[1:]
SCALE_ITEMS = json.dumps([{"line": k, "text": f"Departure {k} to Central Station, platform {k % 7}"}
                          for k in range(12)]).encode()


class State:
    def __init__(self, delay: float, client_id: str, client_secret: str) -> None:
        self.delay = delay
        self.client_id = client_id
        self.client_secret = client_secret
        self.tokens: set[bytes] = set()
        self.counts: Counter[str] = Counter()
        self.seq = 0
        self.connections = 0
        self.scale_hits: dict[int, int] = {}


class Http(asyncio.Protocol):
    """Minimal HTTP/1.1: request line, headers, Content-Length bodies, keep-alive; no pipelining needed."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].split(b"\r\n")
            try:
                method, target, _ = lines[0].split(b" ", 2)
            except ValueError:
                self.transport.close()  # type: ignore[union-attr]
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0") or 0)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.handle(method, target, headers, body)

    def handle(self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        path = target.split(b"?", 1)[0]
        close = headers.get(b"connection", b"").lower() == b"close"
        if path == b"/__stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            doc = {"counts": dict(self.state.counts), "cpu_s": usage.ru_utime + usage.ru_stime,
                   "maxrss_kib": usage.ru_maxrss, "connections": self.state.connections}
            self.state.counts["stats 200"] += 1
            self.reply(200, json.dumps(doc).encode(), close)
            return
        route, status, payload = self.route(method, path, headers, body)
        self.state.counts[f"{route} {status}"] += 1
        if self.state.delay > 0:
            asyncio.get_running_loop().call_later(self.state.delay, self.reply, status, payload, close)
        else:
            self.reply(status, payload, close)

    def route(self, method: bytes, path: bytes, headers: dict[bytes, bytes], body: bytes) -> tuple[str, int, bytes]:
        state = self.state
        if path == b"/token":
            if method != b"POST":
                return "token", 405, b'{"error":"method_not_allowed"}'
            form = {k: v[0] for k, v in parse_qs(body.decode("ascii", "replace")).items()}
            if (form.get("grant_type") != "client_credentials" or form.get("client_id") != state.client_id
                    or form.get("client_secret") != state.client_secret):
                return "token", 401, b'{"error":"invalid_client"}'
            token = secrets.token_urlsafe(24).encode()
            state.tokens.add(token)
            return "token", 200, b'{"access_token":"' + token + b'","token_type":"Bearer","expires_in":3600}'
        if path.startswith(b"/data/"):
            auth = headers.get(b"authorization", b"")
            if auth[:7].lower() != b"bearer " or auth[7:] not in state.tokens:
                return "data", 401, b'{"error":"invalid_token"}'
            if path == b"/data/static":
                return "data", 200, STATIC_BODY
            if path == b"/data/changing":
                state.seq += 1
                return "data", 200, b'{"seq":' + str(state.seq).encode() + b"," + CHANGING_TAIL
        if path.startswith(b"/s/") and path[3:].isdigit():
            i = int(path[3:])
            hits = state.scale_hits.get(i, 0)
            state.scale_hits[i] = hits + 1
            version = (hits + i % 10) // 10
            return "scale", 200, (b'{"source":' + str(i).encode() + b',"version":' + str(version).encode()
                                  + b',"items":' + SCALE_ITEMS + b"}")
        return "other", 404, b'{"error":"not_found"}'

    def reply(self, status: int, payload: bytes, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
                % (status, REASONS.get(status, b"?"), len(payload), b"Connection: close\r\n" if close else b""))
        transport.write(head + payload)
        if close:
            transport.close()


async def serve(args: argparse.Namespace) -> None:
    state = State(args.delay_ms / 1000, args.client_id, args.client_secret)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Http(state), "127.0.0.1", args.port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Bounded in time even if the parent forgets to stop it.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--client-id", default="bench-client")
    parser.add_argument("--client-secret", default="bench-Secret_42")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long (default 1 h)")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
