"""Authorisation on every object: FastAPI dependencies that authenticate, check the role and the unit.

Every route of the API declares who may call it with ``Depends(access.allow(*roles))``; the test
``tests/test_api_access.py`` walks the OpenAPI document and fails for a route it has no rule for.
An object outside the caller's units answers exactly like a missing one (404, the same text), so
ids of other units cannot be probed. Reads of patient-linked data are appended to the audit trail with
who, role, unit, object, action, result, time and request id (:meth:`Access.audited`).
"""

# No `from __future__ import annotations` here: FastAPI reads the Depends(...) of local names in
# parameter annotations, which only works when annotations are evaluated where the route is defined.
import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

from fastapi import Depends, HTTPException, Request, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.limits import VerifiedTokens
from api.security import ROLES, Authenticator, AuthError, Principal
from devices.clock import now_ms
from devices.contract import Alert
from devices.site import Site
from state.db import State

LOGIN_WINDOW_S: Final = 300.0
LOGIN_MAX_FAILURES: Final = 5
MAX_LOGIN_TRACKED: Final = 10_000

_bearer = HTTPBearer(auto_error=False, description="A token from POST /api/v1/auth/token or the hospital's OIDC "
                                                   "provider")


def not_found(what: str) -> HTTPException:
    """The one answer for a missing object and for an object outside the caller's scope."""
    return HTTPException(404, f"{what} not found")


class LoginThrottle:
    """Failed sign-ins per (user name, client address): after too many in the window, refuse for a while."""

    def __init__(self, window_s: float = LOGIN_WINDOW_S, max_failures: int = LOGIN_MAX_FAILURES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """At most ``max_failures`` per ``window_s``; bounded memory (the oldest keys are forgotten)."""
        self.window_s, self.max_failures, self._clock = window_s, max_failures, clock
        self._failures: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def blocked(self, key: tuple[str, str]) -> bool:
        """Whether sign-in is refused for ``key`` right now."""
        recent = [t for t in self._failures.get(key, []) if t > self._clock() - self.window_s]
        return len(recent) >= self.max_failures

    def failed(self, key: tuple[str, str]) -> None:
        """Count one failure."""
        now = self._clock()
        kept = [t for t in self._failures.pop(key, []) if t > now - self.window_s] + [now]
        self._failures[key] = kept[-self.max_failures:]
        while len(self._failures) > MAX_LOGIN_TRACKED:
            self._failures.popitem(last=False)

    def succeeded(self, key: tuple[str, str]) -> None:
        """Forget the failures of ``key``."""
        self._failures.pop(key, None)


class Access:
    """Authentication, roles and unit scope for one application."""

    def __init__(self, site: Site, state: State, auth: Authenticator) -> None:
        """Check callers with ``auth``; units of beds and gateways come from ``site``."""
        self.site, self.state, self.auth = site, state, auth
        self.bed_units = {bed: unit.id for unit in site.units for bed in unit.beds}
        self.gateway_units = {g.id: g.unit for g in site.gateways}
        self.throttle = LoginThrottle()
        self.verified = VerifiedTokens(self._local_subject)  # the rate limiter's key: a verified token's owner

    def _local_subject(self, token: str) -> str | None:
        """The subject of a valid token of the embedded provider (no I/O: its own key); None for any other."""
        if self.auth.local is None:
            return None
        try:
            return str(self.auth.local.verify(token)["sub"])
        except AuthError:
            return None

    async def _principal(self, request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "sign in: send Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            principal = await asyncio.to_thread(self.auth.bearer, credentials.credentials)
        except AuthError:
            raise HTTPException(401, "the token is not valid (expired, not ours, or the account is inactive)",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
        self.verified.remember(credentials.credentials, principal.subject)
        request.state.principal = principal
        return principal

    def allow(self, *roles: str) -> Callable[..., Awaitable[Principal]]:
        """A dependency: the authenticated caller if their role is one of ``roles`` (else 403)."""
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}")
        allowed = frozenset(roles)

        async def dependency(principal: Annotated[Principal, Depends(self._principal)]) -> Principal:
            if principal.role not in allowed:
                raise HTTPException(403, f"role {principal.role} may not do this")
            return principal

        dependency.roles = allowed  # type: ignore[attr-defined]  # read by the access-matrix test
        return dependency

    def unit_of_bed(self, principal: Principal, bed: str) -> str:
        """The bed's unit, if the caller may see it; 404 otherwise (missing or out of scope alike)."""
        unit = self.bed_units.get(bed)
        if unit is None or not principal.sees_unit(unit):
            raise not_found(f"bed {bed!r}")
        return unit

    def unit_of_alert(self, alert: Alert) -> str | None:
        """An alert's unit: its own, else (a gateway's or a device's technical alarm) its source gateway's."""
        return alert.unit or self.gateway_units.get(alert.source)

    def check_unit(self, principal: Principal, unit: str | None, what: str) -> None:
        """404 unless an object of ``unit`` is in the caller's scope."""
        if not principal.sees_unit(unit):
            raise not_found(what)

    def units(self, principal: Principal) -> set[str]:
        """Every unit the caller may see (for list filters)."""
        return {u.id for u in self.site.units if principal.sees_unit(u.id)}

    async def audited(self, principal: Principal, *, object: str, action: str, unit: str | None,
                      result: str = "ok", detail: dict[str, object] | None = None) -> None:
        """Append one audit record for this request."""
        await asyncio.to_thread(self.state.audit.append, actor=principal.subject, role=principal.role,
                                object=object, action=action, result=result, at=now_ms(), unit=unit,
                                request_id=principal.request_id, detail=detail)

    async def websocket_principal(self, websocket: WebSocket) -> Principal | None:
        """The caller of a WebSocket handshake, from its single-use ``ticket``; None (refuse) otherwise."""
        ticket = websocket.query_params.get("ticket", "")
        subject = self.auth.tickets.redeem(ticket) if ticket else None
        if subject is None:
            return None
        try:
            return await asyncio.to_thread(self.auth.principal, subject)
        except AuthError:
            return None
