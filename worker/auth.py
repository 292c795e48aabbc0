"""OAuth2 client credentials: one token per [auth.NAME] block, requested once for all its sources, cached in SQLite."""

import base64
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote_plus, urlencode

import httpx
from sqlalchemy import Connection, Table, delete, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, SQLModel

from worker import fetch, jsontext
from worker.config import AuthBlock
from worker.errors import FetchError, StoreError
from worker.secrets import redact
from worker.store import Store, iso

log = logging.getLogger(__name__)

# The last 20% of a token's life is slack: a slow or failing token endpoint never leaves a source without a token.
REFRESH_FRACTION = 0.8
# JWTs run to a few kilobytes; a token endpoint sending more than this is sending something else.
MAX_TOKEN_BYTES = 1_000_000
FORM = "application/x-www-form-urlencoded"

T = TypeVar("T")


@dataclass(frozen=True)
class Token:
    """An access token and when to stop using it; repr hides the value so a logged Token leaks nothing."""

    value: str = field(repr=False)
    expires_at: datetime  # aware UTC
    refresh_at: datetime  # obtained_at + 0.8 * lifetime
    from_cache: bool  # True when this call did not hit the token endpoint


class CachedToken(SQLModel, table=True):
    """The current token of one auth block, so a restart does not ask for a new one."""

    __tablename__ = "auth_tokens"
    name: str = Field(primary_key=True)  # one row per block: an edited block's new token replaces the old one
    fingerprint: str  # sha256 of what the token depends on (see fingerprint())
    value: str
    obtained_at: str  # ISO-8601 UTC, like the other tables
    expires_at: str
    refresh_at: str


AUTH_TOKENS: Table = SQLModel.metadata.tables["auth_tokens"]


@dataclass(frozen=True)
class _Entry:
    fingerprint: str
    token: Token


def fingerprint(block: AuthBlock) -> str:
    """A hash of what the token depends on: editing any of it in the block makes the cached token unusable."""
    basis = [block.token_url, block.client_id, block.scope, sorted(block.extra.items())]
    return hashlib.sha256(json.dumps(basis).encode("utf-8")).hexdigest()


def basic_credentials(client_id: str, client_secret: str) -> str:
    """The HTTP Basic value RFC 6749 2.3.1 requires: each part form-urlencoded, joined by ':', base64."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def build_token_request(block: AuthBlock) -> httpx.Request:
    """The client-credentials POST: a form body, the client's credentials in the body or a Basic header."""
    form = {"grant_type": "client_credentials"}
    headers = {"Content-Type": FORM, "Accept": "application/json"}  # GitHub-style endpoints answer JSON if asked
    if block.client_auth == "basic":
        headers["Authorization"] = basic_credentials(block.client_id, block.client_secret)
    else:
        form |= {"client_id": block.client_id, "client_secret": block.client_secret}
    if block.scope:
        form["scope"] = block.scope
    form |= dict(block.extra)
    return fetch.build({"method": "POST", "url": block.token_url, "headers": headers, "params": {},
                        "body": urlencode(form)})


def parse_token_response(status: int, headers: Mapping[str, str], body: bytes, block: AuthBlock,
                         now: datetime) -> tuple[str, float]:
    """(access_token, lifetime in seconds) from a token response, or FetchError saying what the endpoint said."""
    pause = fetch.check_rate_limit(status, {k.lower(): v for k, v in headers.items()}, now)
    if pause is not None:
        raise fetch.RateLimited(f"auth {block.name}: token endpoint rate-limited (HTTP {status}); "
                                f"retry in {pause:.0f} s", pause)
    doc = _document(body)
    if not 200 <= status < 300 or "error" in doc:  # GitHub-style endpoints report errors with 200
        detail = _oauth_error(doc)
        shown = f" {detail}" if detail else f": {fetch.preview(_text(body)) or '(empty body)'}"
        raise FetchError(_masked(block, f"auth {block.name}: token request failed: HTTP {status}{shown}"))
    value = doc.get("access_token")
    if not isinstance(value, str) or not value:
        # No preview here: a 2xx body that is not a well-formed token response may still hold a token.
        found = ", ".join(sorted(doc)) or "a body that is neither JSON nor form data"
        raise FetchError(f"auth {block.name}: token response has no access_token (found: {found})")
    return value, _lifetime(doc.get("expires_in"), block.default_lifetime)


def token_rejected(block: AuthBlock, status: int, body: bytes) -> bool:
    """Whether a data response says the token no longer works: 401/403, or a 2xx body containing expired_when."""
    if status in (401, 403):
        return True
    if not block.expired_when or not 200 <= status < 300:
        return False
    return block.expired_when.encode("utf-8") in body


def _text(body: bytes) -> str:
    return body.decode("utf-8-sig", errors="replace")


def _document(body: bytes) -> dict[str, Any]:
    """The response as a dict: JSON (BOM or not, whatever the content type) or a form-encoded body."""
    text = _text(body).strip()
    if text.startswith("{"):
        try:
            doc = jsontext.loads(text)
        except json.JSONDecodeError:
            return {}
        return doc if isinstance(doc, dict) else {}
    try:
        form = parse_qs(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return {}
    return {key: values[0] for key, values in form.items()}


def _oauth_error(doc: Mapping[str, Any]) -> str | None:
    """'code: first line of the description' from an RFC 6749 5.2 error (or a Graph-style error object)."""
    error = doc.get("error")
    if isinstance(error, dict):
        code, description = error.get("code"), error.get("message")
    else:
        code, description = error, doc.get("error_description")
    if not code:
        return None
    lines = str(description or "").strip().splitlines()
    return f"{fetch.preview(str(code))}: {fetch.preview(lines[0])}" if lines else fetch.preview(str(code))


def _lifetime(expires_in: Any, default: float) -> float:
    """expires_in as seconds (a JSON number or a numeric string); missing or unusable means the default."""
    if isinstance(expires_in, bool):
        return default
    try:
        seconds = float(expires_in)
    except (TypeError, ValueError):
        return default
    return seconds if math.isfinite(seconds) and seconds > 0 else default


def _masked(block: AuthBlock, message: str) -> str:
    # Endpoints have echoed the submitted form back in errors; the secret must not reach the run log.
    return redact(message, [block.client_secret])


def _clock_time(moment: datetime) -> str:
    return f"{moment:%H:%M:%S} UTC"


class TokenManager:
    """Tokens for all auth blocks: a memory copy for the hot path, SQLite for restarts, one request per block."""

    def __init__(self, store: Store, client: httpx.Client, clock: Callable[[], datetime]) -> None:
        self._engine = store.engine
        self._client = client
        self._clock = clock
        self._memory: dict[str, _Entry] = {}
        self._paused: dict[str, datetime] = {}  # block name -> until when its token endpoint asked us to wait
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        try:
            AUTH_TOKENS.create(self._engine, checkfirst=True)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot create the auth_tokens table: {getattr(exc, 'orig', None) or exc}") from None

    def token(self, block: AuthBlock, *, deadline: float) -> Token:
        """A usable token: the memory copy, else the database's, else a new one (one request at a time per block)."""
        key = fingerprint(block)
        current = self._fresh(block.name, key, self._clock())
        if current is not None:
            return current
        lock = self._lock_for(block.name)
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise FetchError(f"auth {block.name}: deadline passed waiting for the token request already in progress")
        try:
            return self._token_locked(block, key, deadline)
        finally:
            lock.release()

    def invalidate(self, block: AuthBlock, failed_value: str) -> None:
        """Drop the cached token if it is still the one that failed; a newer one stays (one refresh, not ten)."""
        with self._lock_for(block.name):
            entry = self._memory.get(block.name)
            if entry is not None and entry.token.value == failed_value:
                del self._memory[block.name]
                log.info("auth %s: token rejected; the next request gets a new one", block.name)
            # By value, so a newer token another thread or process stored is never the one deleted.
            self._db("drop a rejected token", lambda conn: conn.execute(
                delete(AUTH_TOKENS).where(AUTH_TOKENS.c.name == block.name, AUTH_TOKENS.c.value == failed_value)))

    def header_for(self, block: AuthBlock, token: Token) -> tuple[str, str]:
        """(header name, value): the prefix, a space and the token, or the token alone when the prefix is empty."""
        return block.header, f"{block.prefix} {token.value}" if block.prefix else token.value

    def _lock_for(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def _fresh(self, name: str, key: str, now: datetime) -> Token | None:
        entry = self._memory.get(name)
        if entry is None or entry.fingerprint != key or now >= entry.token.refresh_at:
            return None
        return replace(entry.token, from_cache=True)

    def _token_locked(self, block: AuthBlock, key: str, deadline: float) -> Token:
        if block.name not in self._memory:  # first use since start: an earlier run may have left a token
            self._load(block.name)
        current = self._fresh(block.name, key, self._clock())  # a thread we waited for may have just got one
        if current is not None:
            return current
        try:
            return self._request(block, key, deadline)
        except FetchError as exc:
            return self._still_valid(block, key, exc)

    def _still_valid(self, block: AuthBlock, key: str, failure: FetchError) -> Token:
        """The current token if it has not expired yet (what the refresh slack is for); else re-raise the failure."""
        entry = self._memory.get(block.name)
        if entry is None or entry.fingerprint != key or self._clock() >= entry.token.expires_at:
            raise failure
        # The failure's message already starts with "auth NAME:".
        log.warning("%s; using the current token until it expires at %s", failure, _clock_time(entry.token.expires_at))
        return replace(entry.token, from_cache=True)

    def _request(self, block: AuthBlock, key: str, deadline: float) -> Token:
        self._check_paused(block)
        obtained = self._clock()  # before sending: the token's life starts no later than this
        response = _send(self._client, block, deadline)
        try:
            value, lifetime = parse_token_response(response.status, response.headers, response.body, block, obtained)
        except fetch.RateLimited as exc:
            self._paused[block.name] = obtained + timedelta(seconds=exc.seconds)
            raise
        token = Token(value, obtained + timedelta(seconds=lifetime),
                      obtained + timedelta(seconds=REFRESH_FRACTION * lifetime), from_cache=False)
        self._memory[block.name] = _Entry(key, token)
        self._save(block.name, key, token, obtained)
        log.info("auth %s: new token, expires %s", block.name, _clock_time(token.expires_at))
        return token

    def _check_paused(self, block: AuthBlock) -> None:
        """Every source of a block waits out the token endpoint's Retry-After, not just the one that got it."""
        until = self._paused.get(block.name)
        if until is None:
            return
        left = (until - self._clock()).total_seconds()
        if left > 0:
            raise fetch.RateLimited(f"auth {block.name}: token endpoint rate-limited until {_clock_time(until)}", left)
        del self._paused[block.name]

    def _load(self, name: str) -> None:
        row = self._db("read the cached token", lambda conn: conn.execute(
            select(AUTH_TOKENS).where(AUTH_TOKENS.c.name == name)).first())
        if row is None:
            return
        token = Token(row.value, datetime.fromisoformat(row.expires_at), datetime.fromisoformat(row.refresh_at),
                      from_cache=True)
        self._memory[name] = _Entry(row.fingerprint, token)
        log.debug("auth %s: token from the database, expires %s", name, _clock_time(token.expires_at))

    def _save(self, name: str, key: str, token: Token, obtained: datetime) -> None:
        def write(conn: Connection) -> None:
            conn.execute(delete(AUTH_TOKENS).where(AUTH_TOKENS.c.name == name))
            conn.execute(insert(AUTH_TOKENS).values(
                name=name, fingerprint=key, value=token.value, obtained_at=iso(obtained),
                expires_at=iso(token.expires_at), refresh_at=iso(token.refresh_at)))

        self._db("store the new token", write)

    def _db(self, action: str, work: Callable[[Connection], T]) -> T | None:
        """Run work in one transaction; a failure is a warning, since the memory copy still serves."""
        try:
            with self._engine.begin() as conn:
                return work(conn)
        except SQLAlchemyError as exc:
            # Only the driver's message: SQLAlchemy's own text lists the statement's parameters (the token).
            log.warning("auth token cache: cannot %s: %s", action, getattr(exc, "orig", None) or type(exc).__name__)
            return None


def _send(client: httpx.Client, block: AuthBlock, deadline: float) -> fetch.Response:
    """POST the token request; transport failures keep their type (Transient is worth a retry)."""
    try:
        return fetch.send(client, build_token_request(block), deadline=deadline, max_bytes=MAX_TOKEN_BYTES)
    except FetchError as exc:
        kind = fetch.Transient if isinstance(exc, fetch.Transient) else FetchError
        raise kind(_masked(block, f"auth {block.name}: token request failed: {exc}")) from None
