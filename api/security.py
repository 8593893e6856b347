"""Who is calling, and what they may see: bearer tokens, roles, unit scope, WebSocket tickets.

Authentication (RELIABILITY.md items 20-21):

- **Local** (the embedded default): members of staff sign in with a password (Argon2id hashes in the
  relational state, :mod:`state.credentials`) and get an HS256 token signed with a key generated into
  the data directory (mode 0600), valid :data:`LOCAL_TOKEN_TTL_S`.
- **OIDC** (production): tokens of the hospital's identity provider, verified against its JWKS keys
  with an explicit algorithm allow-list (asymmetric only: a provider cannot be impersonated with its
  own public key as an HMAC secret), issuer, audience, expiry and not-before, with a small leeway.

Either way the token names a member of staff; the role and the unit scope come from Wardlink's own
data *at request time* (the staff row and the current assignments), so ending a shift assignment ends
that person's access to the unit at once, whatever the token says.

WebSocket handshakes cannot carry a header from a browser, and a long-lived token must never sit in a
URL: a client asks ``POST /api/v1/auth/ws-ticket`` with its bearer token and connects with
``?ticket=...``, a random single-use ticket valid :data:`TICKET_TTL_S`.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import jwt

from devices.clock import now_ms
from state.db import State

Role = Literal["nurse", "charge_nurse", "facilities", "biomed", "admin", "auditor"]
ROLES: Final[tuple[Role, ...]] = ("nurse", "charge_nurse", "facilities", "biomed", "admin", "auditor")
CLINICAL: Final[frozenset[str]] = frozenset({"nurse", "charge_nurse"})
"""Roles that see patient-linked data, within their units."""
SITE_WIDE: Final[frozenset[str]] = frozenset({"facilities", "biomed", "admin", "auditor"})
"""Roles whose scope is the whole site (each limited to its own kind of object by the endpoint rules)."""

LOCAL_ISSUER: Final = "wardlink-local"
AUDIENCE: Final = "wardlink-api"
LOCAL_TOKEN_TTL_S: Final = 15 * 60
TICKET_TTL_S: Final = 30
MAX_TICKETS: Final = 10_000
LEEWAY_S: Final = 30
ASYMMETRIC: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                               "EdDSA"})


class AuthError(Exception):
    """The request is not authenticated (HTTP 401); the message says why, for the log, not the client."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller with the scope they have right now."""

    subject: str  # the staff id (or a service's name)
    name: str
    role: str
    units: frozenset[str]  # the units of their current assignments (clinical roles)
    token_id: str = ""
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def site_wide(self) -> bool:
        """Whether the scope is the whole site (facilities, biomedical engineering, admin, audit)."""
        return self.role in SITE_WIDE

    def sees_unit(self, unit: str | None) -> bool:
        """Whether an object of ``unit`` is in scope (an object of no unit is, for site-wide roles only)."""
        if self.site_wide:
            return True
        return unit is not None and unit in self.units


class LocalTokens:
    """The embedded identity provider's tokens: HS256 with a key of the data directory's own."""

    def __init__(self, key: bytes, ttl_s: int = LOCAL_TOKEN_TTL_S) -> None:
        """Sign and verify with ``key`` (at least 32 bytes)."""
        if len(key) < 32:
            raise ValueError("the token key must have at least 32 bytes")
        self._key = key
        self.ttl_s = ttl_s

    @classmethod
    def from_data_dir(cls, data_dir: Path, ttl_s: int = LOCAL_TOKEN_TTL_S) -> LocalTokens:
        """Load ``token.key`` from the data directory, creating it (0600) on first use."""
        path = data_dir / "token.key"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_bytes(), ttl_s)
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return cls(key, ttl_s)

    def issue(self, subject: str, now: float | None = None) -> str:
        """A signed token for ``subject`` valid ``ttl_s`` from now."""
        issued = int(now if now is not None else time.time())
        claims = {"iss": LOCAL_ISSUER, "aud": AUDIENCE, "sub": subject, "iat": issued, "nbf": issued,
                  "exp": issued + self.ttl_s, "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; raise AuthError when it is not one of ours or not valid now."""
        try:
            return jwt.decode(token, self._key, algorithms=["HS256"], audience=AUDIENCE, issuer=LOCAL_ISSUER,
                              leeway=LEEWAY_S, options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            raise AuthError(f"local token refused: {exc}") from exc


class OidcTokens:
    """Tokens of the hospital's OIDC provider, checked against its published keys (JWKS)."""

    def __init__(self, issuer: str, audience: str, jwks_url: str, algorithms: Iterable[str] = ("RS256", "ES256"),
                 subject_claim: str = "preferred_username") -> None:
        """Trust ``issuer``'s keys at ``jwks_url`` for tokens meant for ``audience``."""
        allowed = list(algorithms)
        if not allowed or not set(allowed) <= ASYMMETRIC:
            raise ValueError(f"OIDC algorithms {allowed}: only asymmetric algorithms may be allowed "
                             f"({', '.join(sorted(ASYMMETRIC))})")
        self.issuer, self.audience, self.algorithms = issuer, audience, allowed
        self.subject_claim = subject_claim
        self._keys = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; raise AuthError for a wrong key, algorithm, issuer, audience or time."""
        try:
            key = self._keys.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=self.algorithms, audience=self.audience,
                                issuer=self.issuer, leeway=LEEWAY_S,
                                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except (jwt.PyJWTError, jwt.PyJWKClientError) as exc:
            raise AuthError(f"OIDC token refused: {exc}") from exc
        subject = claims.get(self.subject_claim) or claims["sub"]
        claims["sub"] = str(subject)
        return claims


class Tickets:
    """Single-use WebSocket tickets: random, short-lived, bounded in number (the oldest are dropped)."""

    def __init__(self, ttl_s: float = TICKET_TTL_S, max_open: int = MAX_TICKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Tickets valid ``ttl_s``; at most ``max_open`` outstanding."""
        self.ttl_s, self.max_open, self._clock = ttl_s, max_open, clock
        self._open: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.dropped = 0

    def issue(self, subject: str) -> str:
        """A new ticket for ``subject``."""
        now = self._clock()
        while self._open and (len(self._open) >= self.max_open or next(iter(self._open.values()))[1] < now):
            _, (_, expires) = self._open.popitem(last=False)
            self.dropped += expires >= now  # dropped while still valid: counted
        ticket = secrets.token_urlsafe(32)
        self._open[ticket] = (subject, now + self.ttl_s)
        return ticket

    def redeem(self, ticket: str) -> str | None:
        """The subject of a valid ticket, once; None for an unknown, used or expired one."""
        entry = self._open.pop(ticket, None)
        if entry is None or entry[1] < self._clock():
            return None
        return entry[0]


class Authenticator:
    """Bearer token -> :class:`Principal`, with the role and unit scope read from the state now."""

    def __init__(self, state: State, local: LocalTokens | None, oidc: OidcTokens | None = None,
                 clock: Callable[[], int] = now_ms) -> None:
        """Accept local tokens, OIDC tokens, or both."""
        if local is None and oidc is None:
            raise ValueError("an authenticator needs local tokens, OIDC tokens or both")
        self.state, self.local, self.oidc, self._clock = state, local, oidc, clock
        self.tickets = Tickets()

    def claims(self, token: str) -> dict[str, Any]:
        """Verify a bearer token with the provider its issuer names; raise AuthError."""
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError as exc:
            raise AuthError(f"not a token: {exc}") from exc
        if issuer == LOCAL_ISSUER and self.local is not None:
            return self.local.verify(token)
        if self.oidc is not None and issuer == self.oidc.issuer:
            return self.oidc.verify(token)
        raise AuthError(f"token issuer {issuer!r} is not trusted")

    def principal(self, subject: str, token_id: str = "") -> Principal:
        """The member of staff ``subject`` with their current scope; raise AuthError if unknown or inactive."""
        staff = self.state.assignments.staff(subject)
        if staff is None or not staff.active:
            raise AuthError(f"staff {subject!r} is unknown or inactive")
        if staff.role not in ROLES:
            raise AuthError(f"staff {subject!r} has role {staff.role!r}, which is none of {ROLES}")
        units = self.state.assignments.units_of(subject, self._clock()) if staff.role in CLINICAL else set()
        return Principal(staff.id, staff.name, staff.role, frozenset(units), token_id)

    def bearer(self, token: str) -> Principal:
        """Authenticate a bearer token."""
        claims = self.claims(token)
        return self.principal(str(claims["sub"]), str(claims.get("jti", "")))

    def sign_in(self, staff_id: str, password: str) -> str | None:
        """A local token for a correct password of an active member of staff; None otherwise."""
        if self.local is None:
            return None
        staff = self.state.credentials.verify(staff_id, password, at=self._clock())
        if staff is None or staff.role not in ROLES:
            return None
        return self.local.issue(staff.id)
