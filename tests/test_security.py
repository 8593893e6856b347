"""Identity: password hashes, local and OIDC tokens (against a real JWKS endpoint), tickets, scope at request time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api.security import (
    AUDIENCE,
    ROLES,
    Authenticator,
    AuthError,
    LocalTokens,
    OidcTokens,
    Tickets,
)
from devices.clock import now_ms
from state.db import State, default_url, open_state
from state.errors import StateError
from tests.test_state import T0, pg, pg_shared, state  # noqa: F401 (fixtures: SQLite and PostgreSQL)
from wardlink.cli import main
from wardlink.config import load
from wardlink.users import seed_demo_users

HOUR = 3_600_000
ISSUER = "https://idp.hospital.example/realms/wards"


def seeded(state: State) -> State:  # noqa: F811
    state.registry.seed_from_site(load(env={}).site, T0)
    for staff_id, name, role in [("n-ann", "Ann", "nurse"), ("f-fay", "Fay", "facilities"),
                                 ("x-old", "Old", "nurse"), ("x-odd", "Odd", "janitor")]:
        state.assignments.add_staff(staff_id, name, role)
    state.assignments.add_staff("x-old", "Old", "nurse", active=False)
    return state


# --- passwords ----------------------------------------------------------------------------------------------------


def test_passwords_are_hashed_and_checked(state: State) -> None:  # noqa: F811
    seeded(state)
    state.credentials.set_password("n-ann", "correct horse battery", at=T0)
    with state.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT password_hash FROM credentials").scalar_one()
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert state.credentials.verify("n-ann", "correct horse battery", at=T0) is not None
    assert state.credentials.verify("n-ann", "correct horse batterY", at=T0) is None
    assert state.credentials.verify("nobody", "correct horse battery", at=T0) is None
    with pytest.raises(StateError, match="at least 12"):
        state.credentials.set_password("n-ann", "short", at=T0)
    with pytest.raises(StateError, match="no such member"):
        state.credentials.set_password("nobody", "long enough password", at=T0)
    state.credentials.set_password("x-old", "long enough password", at=T0)
    assert state.credentials.verify("x-old", "long enough password", at=T0) is None  # inactive


# --- local tokens -------------------------------------------------------------------------------------------------


def test_local_tokens_round_trip_and_refuse_forgeries(tmp_path: Path) -> None:
    tokens = LocalTokens.from_data_dir(tmp_path, ttl_s=60)
    assert (tmp_path / "token.key").stat().st_mode & 0o077 == 0
    assert LocalTokens.from_data_dir(tmp_path).verify(tokens.issue("n-ann"))["sub"] == "n-ann"  # same key reloaded
    claims = tokens.verify(tokens.issue("n-ann"))
    assert claims["aud"] == AUDIENCE
    assert claims["exp"] - claims["iat"] == 60
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(tokens.issue("n-ann", now=time.time() - 3600))
    other = LocalTokens(b"k" * 32)
    with pytest.raises(AuthError, match="Signature"):
        tokens.verify(other.issue("n-ann"))
    header, payload, signature = tokens.issue("n-ann").split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["sub"] = "c-boss"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthError):
        tokens.verify(f"{header}.{forged}.{signature}")
    unsigned = jwt.encode({"sub": "n-ann", "iss": "wardlink-local", "aud": AUDIENCE, "iat": int(time.time()),
                           "exp": int(time.time()) + 60}, "", algorithm="none")
    with pytest.raises(AuthError, match="alg value is not allowed"):
        tokens.verify(unsigned)


# --- OIDC against a real JWKS endpoint ----------------------------------------------------------------------------


class Idp:
    """An identity provider's JWKS endpoint (a real HTTP server) and its signing keys."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        jwks = {"keys": [self._jwk(self.rsa.public_key(), "rsa-1", "RS256"),
                         self._jwk(self.ec.public_key(), "ec-1", "ES256")]}
        body = json.dumps(jwks).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.jwks_url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"

    @staticmethod
    def _jwk(public: Any, kid: str, alg: str) -> dict[str, Any]:
        algorithm = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(public))
        jwk.update(kid=kid, alg=alg, use="sig")
        return jwk

    def token(self, *, kid: str = "rsa-1", alg: str = "RS256", key: Any = None, **override: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "7f3c", "preferred_username": "n-ann", "iat": now,
                  "exp": now + 300, **override}
        signing = key if key is not None else (self.rsa if alg.startswith("RS") else self.ec)
        return jwt.encode(claims, signing, algorithm=alg, headers={"kid": kid})


@pytest.fixture
def idp() -> Iterator[Idp]:
    provider = Idp()
    yield provider
    provider.server.shutdown()
    provider.server.server_close()


def test_oidc_tokens_are_checked_against_the_providers_keys(idp: Idp) -> None:
    oidc = OidcTokens(ISSUER, AUDIENCE, idp.jwks_url)
    assert oidc.verify(idp.token())["sub"] == "n-ann"  # the subject claim: preferred_username
    assert oidc.verify(idp.token(kid="ec-1", alg="ES256"))["sub"] == "n-ann"
    refusals = {
        "wrong audience": idp.token(aud="another-app"),
        "wrong issuer": idp.token(iss="https://evil.example"),
        "expired": idp.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "not yet valid": idp.token(nbf=int(time.time()) + 3600),
        "unknown key": idp.token(kid="rsa-2"),
        "signed by another key": idp.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    }
    def refused(token: str) -> bool:
        try:
            oidc.verify(token)
        except AuthError:
            return True
        return False

    assert [why for why, token in refusals.items() if not refused(token)] == []
    # Algorithm confusion: an HS256 token whose HMAC secret is the provider's public key (built by hand:
    # PyJWT itself refuses to HMAC-sign with a PEM key).
    public_pem = idp.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    now = int(time.time())
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode()) + b"." + b64(
        json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 60}).encode())
    confused = signing_input + b"." + b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    with pytest.raises(AuthError):
        oidc.verify(confused.decode())
    with pytest.raises(ValueError, match="asymmetric"):
        OidcTokens(ISSUER, AUDIENCE, idp.jwks_url, algorithms=["RS256", "HS256"])
    es_only = OidcTokens(ISSUER, AUDIENCE, idp.jwks_url, algorithms=["ES256"])
    with pytest.raises(AuthError):
        es_only.verify(idp.token())  # RS256 is not on this allow-list


# --- tickets ------------------------------------------------------------------------------------------------------


def test_tickets_are_single_use_short_lived_and_bounded() -> None:
    now = [0.0]
    tickets = Tickets(ttl_s=30, max_open=3, clock=lambda: now[0])
    first = tickets.issue("n-ann")
    assert tickets.redeem(first) == "n-ann"
    assert tickets.redeem(first) is None  # used
    late = tickets.issue("n-ann")
    now[0] = 31
    assert tickets.redeem(late) is None  # expired
    kept = [tickets.issue(f"s{i}") for i in range(4)]
    assert tickets.redeem(kept[0]) is None  # the oldest went when the fourth came
    assert tickets.dropped == 1
    assert [tickets.redeem(t) for t in kept[1:]] == ["s1", "s2", "s3"]
    assert tickets.redeem("guessed") is None


# --- the authenticator: scope from the state, now ------------------------------------------------------------------


def test_scope_comes_from_assignments_at_request_time(state: State, tmp_path: Path, idp: Idp) -> None:  # noqa: F811
    seeded(state)
    clock = [T0]
    local = LocalTokens.from_data_dir(tmp_path)
    auth = Authenticator(state, local, OidcTokens(ISSUER, AUDIENCE, idp.jwks_url), clock=lambda: clock[0])
    state.credentials.set_password("n-ann", "correct horse battery", at=T0)
    assert auth.sign_in("n-ann", "wrong password!!") is None
    token = auth.sign_in("n-ann", "correct horse battery")
    assert token is not None
    assert auth.bearer(token).units == frozenset()  # not on shift: no unit
    state.assignments.assign("n-ann", "ICU", "primary", T0, T0 + 12 * HOUR, bed="ICU-03")
    ann = auth.bearer(token)
    assert (ann.role, ann.units, ann.site_wide) == ("nurse", frozenset({"ICU"}), False)
    assert ann.sees_unit("ICU")
    assert not ann.sees_unit("W3")
    assert not ann.sees_unit(None)
    assert auth.bearer(idp.token()).units == frozenset({"ICU"})  # the same person through OIDC
    clock[0] = T0 + 12 * HOUR  # the shift ended: the same token no longer reaches the unit
    assert auth.bearer(token).units == frozenset()
    fay = auth.principal("f-fay")
    assert fay.site_wide
    assert fay.sees_unit("W3")
    for refused in ("x-old", "x-odd", "nobody"):  # inactive, a role Wardlink does not know, unknown
        with pytest.raises(AuthError):
            auth.principal(refused)
    with pytest.raises(AuthError, match="not trusted"):
        auth.bearer(idp.token(iss="https://evil.example"))
    with pytest.raises(AuthError, match="not a token"):
        auth.bearer("garbage")


# --- demo users and the CLI ---------------------------------------------------------------------------------------


def test_demo_seeds_one_user_per_role_once(state: State, tmp_path: Path) -> None:  # noqa: F811
    site = load(env={}).site
    state.registry.seed_from_site(site, T0)
    users = seed_demo_users(state, tmp_path, site)
    assert sorted({u.role for u in users}) == sorted(ROLES)
    assert (tmp_path / "demo-users.toml").stat().st_mode & 0o077 == 0
    again = seed_demo_users(state, tmp_path, site)
    assert [u.password for u in again] == [u.password for u in users]  # passwords kept across restarts
    auth = Authenticator(state, LocalTokens.from_data_dir(tmp_path))
    scopes = {}
    for user in users:
        token = auth.sign_in(user.staff_id, user.password)
        assert token is not None, user.staff_id
        scopes[user.staff_id] = auth.bearer(token).units
    assert scopes["n-icu"] == frozenset({"ICU"})
    assert scopes["n-w3"] == frozenset({"W3"})
    assert scopes["c-icu"] == frozenset({"ICU"})
    assert scopes["b-biomed"] == frozenset()  # site-wide by role, not by assignment
    assert len(state.assignments.current("ICU", now_ms())) == 9  # 8 beds of n-icu + the charge nurse, once


def test_cli_adds_a_user_and_prints_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["user", "add", "n-zed", "--name", "Zed", "--role", "nurse", "--password-stdin", *data]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["user", "add", "n-q", "--name", "Q", "--role", "boss", "--password-stdin", *data]) == 2
    capsys.readouterr()
    assert main(["token", "n-zed", *data]) == 0
    token = capsys.readouterr().out.strip()
    opened = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        assert Authenticator(opened, LocalTokens.from_data_dir(tmp_path)).bearer(token).subject == "n-zed"
        assert opened.credentials.verify("n-zed", "a long enough password", at=now_ms()) is not None
        assert opened.assignments.staff("n-q") is None
        assert opened.audit.records()[-1].action == "token.cli"
    finally:
        opened.close()
    assert main(["token", "nobody", *data]) == 2


# --- the embedded default's files ----------------------------------------------------------------------------------


def test_the_embedded_state_and_its_directory_are_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the usual umask: files 0644, directories 0755 unless made otherwise
    try:
        data = tmp_path / "data"
        opened = open_state(default_url(data))
        try:
            seeded(opened)
            opened.credentials.set_password("n-ann", "correct horse battery", at=T0)  # a hash, via the WAL
            files = [data / name for name in ("state.db", "state.db-wal", "state.db-shm")]
            assert [f.exists() for f in files] == [True, True, True]
            assert {f.name: f.stat().st_mode & 0o777 for f in files} == dict.fromkeys((f.name for f in files), 0o600)
        finally:
            opened.close()
        assert data.stat().st_mode & 0o777 == 0o700
        older = tmp_path / "older"  # made by an earlier version: 0755 and 0644
        older.mkdir()
        (older / "state.db").touch()
        open_state(default_url(older)).close()
        assert (older.stat().st_mode & 0o777, (older / "state.db").stat().st_mode & 0o777) == (0o700, 0o600)
    finally:
        os.umask(old_umask)
