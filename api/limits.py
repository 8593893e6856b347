"""Request limits in front of the API (RELIABILITY.md item 24): body size, per-client request rate.

A pure ASGI middleware, so it runs before FastAPI parses anything:

- a request body larger than ``max_body`` is refused with 413, by its ``Content-Length`` at once or,
  for a chunked body, as soon as the running total passes the limit;
- every client gets a token bucket of ``rate_per_s`` with a ``burst``; past it, 429 with
  ``Retry-After``; a WebSocket handshake counts as one request. The buckets are bounded in number
  (least recently used dropped first). A client is its address, or its address and member of staff
  when its bearer token is verified (:class:`VerifiedTokens`): a token that does not verify never
  opens a bucket of its own, so a client that sends a new made-up token with every request is still
  one client.

WebSocket frames are limited by the server (uvicorn's ``ws_max_size``) and by the handlers' bounded
send queues (a client too slow to read is disconnected, see :mod:`api.view`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BUCKETS: Final = 50_000
MAX_VERIFIED: Final = 50_000


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class VerifiedTokens:
    """Bearer tokens the API has verified, by digest, and whose they are (bounded: least recently used dropped).

    ``check`` verifies a token not seen yet without I/O (the embedded provider's own signature), so a client's
    fresh token has its own bucket from its first request; any other token (OIDC: its provider's keys may need
    fetching) is remembered once the authentication dependency has verified it."""

    def __init__(self, check: Callable[[str], str | None] | None = None, max_tokens: int = MAX_VERIFIED) -> None:
        """Remember at most ``max_tokens`` tokens; ``check``: a token's subject if it verifies, else None."""
        self.max_tokens, self._check = max_tokens, check
        self._subjects: OrderedDict[str, str] = OrderedDict()

    def remember(self, token: str, subject: str) -> None:
        """``token`` verified as ``subject``'s."""
        key = _digest(token)
        self._subjects.pop(key, None)
        self._subjects[key] = subject
        while len(self._subjects) > self.max_tokens:
            self._subjects.popitem(last=False)

    def subject(self, token: str) -> str | None:
        """Whose ``token`` is, if it was verified (or verifies now by ``check``); None for any other token."""
        key = _digest(token)
        subject = self._subjects.get(key)
        if subject is not None:
            self._subjects.move_to_end(key)
            return subject
        subject = self._check(token) if self._check is not None else None
        if subject is not None:
            self.remember(token, subject)
        return subject


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """The API's request limits."""

    max_body: int = 1024 * 1024
    rate_per_s: float = 50.0
    burst: int = 200
    ws_max_frame: int = 64 * 1024


class Limits:
    """The middleware; ``counters`` says how often each limit was hit."""

    def __init__(self, app: App, settings: LimitSettings | None = None,
                 clock: Callable[[], float] = time.monotonic, counters: dict[str, int] | None = None,
                 verified: VerifiedTokens | None = None) -> None:
        """Wrap ``app``; count into ``counters`` if given (so the application can report them); ``verified``:
        the tokens the application's authentication has verified (without it every client is its address)."""
        self.app, self.settings, self._clock = app, settings or LimitSettings(), clock
        self.verified = verified if verified is not None else VerifiedTokens()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self.counters = counters if counters is not None else {}
        self.counters.setdefault("body_too_large", 0)
        self.counters.setdefault("rate_limited", 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the limits, then hand the request on."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        wait = self._take(self._client_key(scope))
        if wait > 0:
            self.counters["rate_limited"] += 1
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": "rate limited"})
                return
            await _answer(send, 429, "too many requests: slow down", {"retry-after": str(max(1, round(wait)))})
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_body:
            self.counters["body_too_large"] += 1
            await _answer(send, 413, f"request body over {self.settings.max_body} bytes")
            return
        received = 0
        started = False  # the application began its answer (then it ends it; we only stop the body)
        answered = False  # we refused the body: whatever the application sends after that is dropped

        async def counted_receive() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.settings.max_body:
                    if not answered:
                        self.counters["body_too_large"] += 1
                        answered = not started
                        if answered:
                            await _answer(send, 413, f"request body over {self.settings.max_body} bytes")
                    return {"type": "http.disconnect"}  # the application stops reading, as if the client left
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if not answered:
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not answered:
                raise

    def _take(self, key: str) -> float:
        """Take one token for ``key``; the seconds to wait when there is none (0: go ahead)."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self.settings.burst), now))
        tokens = min(float(self.settings.burst), tokens + (now - at) * self.settings.rate_per_s)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.settings.rate_per_s
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return wait

    def _client_key(self, scope: Scope) -> str:
        """Who is asking: the address, with the member of staff when the bearer token is one the API verified."""
        client = scope.get("client")
        address = client[0] if client else ""
        authorization = _header(scope, b"authorization")
        if authorization and authorization.lower().startswith("bearer "):
            subject = self.verified.subject(authorization[7:])
            if subject is not None:
                return f"s:{address}|{subject}"
        return f"a:{address}"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
