"""T1-T7: bearer tokens, client authentication, sign-in and sessions, against the real token
verifier and token endpoint through HTTP (the app over FastAPI's TestClient, or a real server
process where a test says so), a real database and real keys.

Every refused token must be accounted for in the audit trail: the first refusal of a kind from
an address in a minute is an event of its own, the rest are counted (attacker finding 9).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey
from sqlalchemy import select

from gateway.app import create_app
from gateway.web import session as web_session
from services.admin import accounts as people_admin
from services.admin import client_keys, principals, sign_in
from services.audit.catalogue import AuditAction
from services.audit.models import AuditEvent
from services.audit.service import RequestContext
from services.identity import counters, web_sessions
from services.identity import oauth as oauth_module
from services.kit.clock import utcnow
from services.kit.errors import BadRequest
from services.kit.settings import Settings
from services.platform import Platform, build_platform
from tests.fixtures.app import (
    ClientCredentials,
    MakeClient,
    TokenFor,
    cli_context,
    client_maker,
)
from tests.fixtures.cli import run_cli

# --- helpers ---------------------------------------------------------------------------------


def _authentication_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _authentication_unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return (
        _authentication_b64(json.dumps(header).encode())
        + "."
        + _authentication_b64(json.dumps(claims).encode())
        + "."
    )


def _authentication_claims(
    platform: Platform, credentials: ClientCredentials, **changes: Any
) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": platform.settings.issuer,
        "aud": platform.settings.audience,
        "sub": credentials.client_id,
        "client_id": credentials.client_id,
        "org": credentials.organisation,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "t-" + str(now),
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def _authentication_platform_signed(
    platform: Platform, claims: dict[str, Any], **header: Any
) -> str:
    """A token signed with the platform's own key: only its claims or header are wrong."""
    key = OKPKey.import_key(platform.tokens._key.as_pem(private=True))
    head = {"alg": "Ed25519", "typ": "at+jwt", "kid": platform.tokens.kid, **header}
    head = {k: v for k, v in head.items() if v is not None}
    return jwt.encode(head, claims, key, algorithms=["Ed25519"])


def _authentication_refusals(platform: Platform) -> list[AuditEvent]:
    with platform.sessions() as session:
        return list(
            session.execute(
                select(AuditEvent)
                .where(AuditEvent.action == "authentication.failed")
                .order_by(AuditEvent.occurred_at)
            ).scalars()
        )


def _authentication_get(api: TestClient, token: str) -> int:
    response = api.get("/v1/contracts", headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 401:
        assert response.headers["content-type"].startswith("application/problem+json")
    return response.status_code


def _authentication_refused_with(
    api: TestClient, platform: Platform, token: str, reason: str
) -> None:
    assert _authentication_get(api, token) == 401
    reasons = [e.reason for e in _authentication_refusals(platform)]
    assert reason in reasons, reasons


class _AuthenticationListener:
    """A local HTTP listener that records every connection made to it (none is expected)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def _authentication_listener() -> Iterator[_AuthenticationListener]:
    listener = _AuthenticationListener()
    yield listener
    listener.close()


@pytest.fixture
def _authentication_reader(make_client: MakeClient) -> ClientCredentials:
    return make_client(org="vru", roles=("l1_reader",))


# --- T1: algorithm confusion -------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_T1_alg_none_is_refused_and_audited(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials, alg: str
) -> None:
    claims = _authentication_claims(platform, _authentication_reader)
    header = {"alg": alg, "typ": "at+jwt", "kid": platform.tokens.kid}
    _authentication_refused_with(
        api, platform, _authentication_unsigned(header, claims), "algorithm_not_allowed"
    )


def test_T1_hs256_signed_with_the_public_key_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    claims = _authentication_claims(platform, _authentication_reader)
    public_pem = platform.tokens._key.as_pem(private=False)
    public_raw = platform.tokens._key.as_dict(private=False)["x"].encode()
    header = {"alg": "HS256", "typ": "at+jwt", "kid": platform.tokens.kid}
    for secret in (public_pem, public_raw):
        # Signed by hand: JOSE libraries (rightly) refuse a public key as an HMAC secret.
        signing_input = _authentication_unsigned(header, claims)[:-1]
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        token = signing_input + "." + _authentication_b64(mac)
        _authentication_refused_with(api, platform, token, "algorithm_not_allowed")


def test_T1_rs_and_es_tokens_signed_by_an_unknown_key_are_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    claims = _authentication_claims(platform, _authentication_reader)
    rsa_key = RSAKey.import_key(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ec_key = ECKey.import_key(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for alg, key in (("RS256", rsa_key), ("PS256", rsa_key), ("ES256", ec_key)):
        header = {"alg": alg, "typ": "at+jwt", "kid": platform.tokens.kid}
        token = jwt.encode(header, claims, key, algorithms=[alg])
        _authentication_refused_with(api, platform, token, "algorithm_not_allowed")


def test_T1_ed25519_signed_by_an_unknown_key_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    claims = _authentication_claims(platform, _authentication_reader)
    stranger = OKPKey.generate_key("Ed25519")
    header = {"alg": "Ed25519", "typ": "at+jwt", "kid": platform.tokens.kid}
    token = jwt.encode(header, claims, stranger, algorithms=["Ed25519"])
    _authentication_refused_with(api, platform, token, "bad_signature")


# --- T2: keys named by the token ---------------------------------------------------------------


def test_T2_embedded_jwk_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    """A token carrying its own (attacker's) public key, signed by that key."""
    claims = _authentication_claims(platform, _authentication_reader)
    stranger = OKPKey.generate_key("Ed25519")
    header = {
        "alg": "Ed25519",
        "typ": "at+jwt",
        "kid": platform.tokens.kid,
        "jwk": stranger.as_dict(private=False),
    }
    token = jwt.encode(header, claims, stranger, algorithms=["Ed25519"])
    _authentication_refused_with(api, platform, token, "header_not_allowed")


@pytest.mark.parametrize("name", ["jku", "x5u"])
def test_T2_jku_and_x5u_are_refused_without_any_outbound_request(
    api: TestClient,
    platform: Platform,
    _authentication_reader: ClientCredentials,
    _authentication_listener: _AuthenticationListener,
    name: str,
) -> None:
    claims = _authentication_claims(platform, _authentication_reader)
    url = f"http://127.0.0.1:{_authentication_listener.port}/keys.json"
    stranger = OKPKey.generate_key("Ed25519")
    token = jwt.encode(
        {"alg": "Ed25519", "typ": "at+jwt", "kid": platform.tokens.kid, name: url},
        claims,
        stranger,
        algorithms=["Ed25519"],
    )
    _authentication_refused_with(api, platform, token, "header_not_allowed")
    # Even signed by the platform's own key, a key URL in the header is refused.
    own = _authentication_platform_signed(platform, claims, **{name: url})
    _authentication_refused_with(api, platform, own, "header_not_allowed")
    time.sleep(0.3)
    assert _authentication_listener.connections == 0


@pytest.mark.parametrize(
    "kid",
    ["../../../../etc/passwd", "' OR '1'='1", "x' UNION SELECT secret_hash FROM clients --", "k1"],
)
def test_T2_unknown_or_hostile_kid_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials, kid: str
) -> None:
    claims = _authentication_claims(platform, _authentication_reader)
    token = _authentication_platform_signed(platform, claims, kid=kid)
    _authentication_refused_with(api, platform, token, "unknown_key")


def test_T2_unknown_crit_extension_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    claims = _authentication_claims(platform, _authentication_reader)
    header = {"alg": "Ed25519", "typ": "at+jwt", "kid": platform.tokens.kid}
    header.update({"crit": ["exp-ext"], "exp-ext": 1})
    token = _authentication_unsigned(header, claims) + "AAAA"
    _authentication_refused_with(api, platform, token, "header_not_allowed")


# --- T3: time claims ---------------------------------------------------------------------------


def test_T3_expired_beyond_the_leeway_is_refused_within_it_accepted(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    now = int(time.time())
    leeway = platform.settings.token_leeway_seconds
    inside = _authentication_claims(platform, _authentication_reader, exp=now - leeway + 5)
    assert _authentication_get(api, _authentication_platform_signed(platform, inside)) == 200
    past = _authentication_claims(platform, _authentication_reader, exp=now - leeway - 5)
    _authentication_refused_with(
        api, platform, _authentication_platform_signed(platform, past), "expired"
    )


def test_T3_not_before_in_the_future_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    later = int(time.time()) + platform.settings.token_leeway_seconds + 60
    claims = _authentication_claims(platform, _authentication_reader, nbf=later)
    _authentication_refused_with(
        api, platform, _authentication_platform_signed(platform, claims), "not_yet_valid"
    )


@pytest.mark.parametrize("name", ["exp", "nbf", "iat", "jti"])
def test_T3_a_token_without_a_time_claim_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials, name: str
) -> None:
    claims = _authentication_claims(platform, _authentication_reader, **{name: None})
    _authentication_refused_with(
        api, platform, _authentication_platform_signed(platform, claims), f"missing_{name}"
    )


# --- T4: audience, issuer, type, permissions ---------------------------------------------------


def test_T4_wrong_audience_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    for audience in ("another-api", ["another-api"], ""):
        claims = _authentication_claims(platform, _authentication_reader, aud=audience)
        _authentication_refused_with(
            api, platform, _authentication_platform_signed(platform, claims), "wrong_audience"
        )


def test_T4_wrong_issuer_with_the_same_subject_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    claims = _authentication_claims(platform, _authentication_reader, iss="https://idp.example")
    assert claims["sub"] == _authentication_reader.client_id
    _authentication_refused_with(
        api, platform, _authentication_platform_signed(platform, claims), "wrong_issuer"
    )


@pytest.mark.parametrize("typ", ["JWT", "id_token+jwt", None])
def test_T4_wrong_token_type_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials, typ: str | None
) -> None:
    claims = _authentication_claims(platform, _authentication_reader)
    token = _authentication_platform_signed(platform, claims, typ=typ)
    _authentication_refused_with(api, platform, token, "wrong_token_type")


def test_T4_a_valid_token_without_the_permission_is_403_and_audited(
    api: TestClient,
    platform: Platform,
    _authentication_reader: ClientCredentials,
    token_for: TokenFor,
) -> None:
    """Permissions come from roles, not token scopes: a reader's valid token cannot upload."""
    token = token_for(_authentication_reader)
    response = api.post(
        "/v1/datasets/police.occurrences/uploads?mode=replace",
        content=b"a,b\n1,2\n",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": "t4-no-permission",
        },
    )
    assert response.status_code == 403, response.text
    with platform.sessions() as session:
        denied = (
            session.execute(
                select(AuditEvent).where(
                    AuditEvent.action == "access.denied",
                    AuditEvent.actor == _authentication_reader.client_id,
                )
            )
            .scalars()
            .all()
        )
    assert denied


def test_T4_a_token_of_another_organisation_claim_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    claims = _authentication_claims(platform, _authentication_reader, org="hampshire-constabulary")
    _authentication_refused_with(
        api, platform, _authentication_platform_signed(platform, claims), "organisation_changed"
    )


# --- T6: token size ----------------------------------------------------------------------------


def test_T6_a_bearer_over_the_bound_is_401_before_parsing(
    api: TestClient, platform: Platform
) -> None:
    token = "a" * (8 * 1024 + 1)
    _authentication_refused_with(api, platform, token, "token_too_large")


def test_T6_a_300_kb_jws_header_is_refused_fast(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    claims = _authentication_claims(platform, _authentication_reader)
    header = {"alg": "Ed25519", "typ": "at+jwt", "kid": platform.tokens.kid, "pad": "x" * 300_000}
    token = _authentication_unsigned(header, claims) + "AAAA"
    started = time.monotonic()
    _authentication_refused_with(api, platform, token, "token_too_large")
    assert time.monotonic() - started < 5.0  # bounded, not hung


def test_T6_a_large_header_segment_within_the_token_bound_is_refused(
    api: TestClient, platform: Platform, _authentication_reader: ClientCredentials
) -> None:
    """The header segment has a bound of its own, below the token's: no JSON parsing of it."""
    claims = _authentication_claims(platform, _authentication_reader)
    header = {"alg": "Ed25519", "typ": "at+jwt", "kid": platform.tokens.kid, "pad": "x" * 2000}
    token = _authentication_unsigned(header, claims) + "AAAA"
    _authentication_refused_with(api, platform, token, "header_too_large")


# --- T7: revocation ----------------------------------------------------------------------------


@pytest.fixture
def _authentication_watching(platform: Platform) -> Iterator[Platform]:
    """The platform with its cache-epoch watcher running, as in a server process."""
    platform.epochs.start()
    try:
        yield platform
    finally:
        platform.epochs.stop()


def test_T7_a_client_disabled_through_the_api_is_refused_by_the_next_request(
    api: TestClient,
    _authentication_watching: Platform,
    make_client: MakeClient,
    token_for: TokenFor,
) -> None:
    """On the replica that made the change there is no window: the 200 of the disable is
    followed by a 401 on the very next request (before, a cached reading served ~50 ms more)."""
    admin = make_client(org="vru", roles=("admin",))
    admin_headers = {"Authorization": f"Bearer {token_for(admin)}"}
    for _ in range(8):
        reader = make_client(org="vru", roles=("l1_reader",))
        headers = {"Authorization": f"Bearer {token_for(reader)}"}
        for _ in range(5):  # verified, cached, and the watcher's reading in use
            assert api.get("/v1/products", headers=headers).status_code == 200
        assert _authentication_watching.epochs.recent() is not None
        disabled = api.post(f"/v1/admin/clients/{reader.client_id}/disable", headers=admin_headers)
        assert disabled.status_code == 200, disabled.text
        assert api.get("/v1/products", headers=headers).status_code == 401


def test_T7_a_client_disabled_by_another_replica_is_refused_within_the_bound(
    api: TestClient,
    settings: Settings,
    _authentication_watching: Platform,
    make_client: MakeClient,
    token_for: TokenFor,
) -> None:
    """Another process (a second platform on the same database) disables the client: this one
    refuses it within the epoch window (max_age, 0.25 s; 2 s allowed for a busy machine)."""
    reader = make_client(org="vru", roles=("l1_reader",))
    headers = {"Authorization": f"Bearer {token_for(reader)}"}
    for _ in range(5):
        assert api.get("/v1/products", headers=headers).status_code == 200
    other = build_platform(settings)
    try:
        principals.disable_client(other.admin, cli_context(), reader.client_id)
    finally:
        other.close()
    started = time.monotonic()
    while api.get("/v1/products", headers=headers).status_code != 401:
        assert time.monotonic() - started < 2.0, "not refused within the bound"
        time.sleep(0.01)
    assert all(api.get("/v1/products", headers=headers).status_code == 401 for _ in range(10))


def test_T7_a_token_after_the_client_is_disabled_is_not_issued(
    api: TestClient, platform: Platform, make_client: MakeClient
) -> None:
    reader = make_client(org="vru", roles=("l1_reader",))
    principals.disable_client(platform.admin, cli_context(), reader.client_id)
    response = api.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": reader.client_id,
            "client_secret": reader.client_secret,
        },
    )
    assert response.status_code == 401
    assert "access_token" not in response.text


# --- T7: page sessions end on the server (attacker finding 7) ----------------------------------

_AUTHENTICATION_PASSWORD = "correct horse battery"


def _authentication_csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def _authentication_page_session(api: TestClient, platform: Platform, name: str) -> str:
    """Create an IG lead, sign in through the form; returns the session cookie's value."""
    people_admin.create_user(
        platform.admin,
        cli_context(),
        username=name,
        organisation="hampshire-constabulary",
        role="ig_lead",
        password=_AUTHENTICATION_PASSWORD,
    )
    form = api.get("/ig/sign-in")
    response = api.post(
        "/ig/sign-in",
        data={
            "username": name,
            "password": _AUTHENTICATION_PASSWORD,
            "csrf": _authentication_csrf(form.text),
        },
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    cookie = api.cookies.get(web_session.COOKIE)
    assert cookie
    return cookie


def _authentication_replay(settings: Settings, platform: Platform, cookie: str) -> int:
    """A fresh client (an attacker's browser) presenting a copied cookie."""
    with TestClient(create_app(settings, platform)) as other:
        other.cookies.set(web_session.COOKIE, cookie, path="/ig/")
        return other.get("/ig/events", follow_redirects=False).status_code


def test_T7_a_page_cookie_replayed_after_sign_out_is_refused(
    api: TestClient, settings: Settings, platform: Platform
) -> None:
    cookie = _authentication_page_session(api, platform, "carol")
    assert _authentication_replay(settings, platform, cookie) == 200  # the copy works before
    page = api.get("/ig/events")
    signed_out = api.post(
        "/ig/sign-out", data={"csrf": _authentication_csrf(page.text)}, follow_redirects=False
    )
    assert signed_out.status_code == 303
    # The copy taken before sign-out: validly signed, within its lifetime, and worthless.
    assert _authentication_replay(settings, platform, cookie) == 303
    with platform.sessions() as session:
        assert web_sessions.open_sessions(session, "carol") == 0


def test_T7_disabling_a_user_ends_their_page_sessions(
    api: TestClient, settings: Settings, platform: Platform
) -> None:
    cookie = _authentication_page_session(api, platform, "dave")
    assert _authentication_replay(settings, platform, cookie) == 200
    people_admin.disable_user(platform.admin, cli_context(), "dave")
    with platform.sessions() as session:
        assert web_sessions.open_sessions(session, "dave") == 0
    assert _authentication_replay(settings, platform, cookie) == 303
    assert api.get("/ig/events", follow_redirects=False).status_code == 303


def test_T7_a_signed_cookie_naming_no_open_session_is_refused(
    api: TestClient, settings: Settings, platform: Platform
) -> None:
    """A cookie signed with the platform's key (as if the key leaked, or from before this
    control) but naming no session opened on the server is not a session."""
    _authentication_page_session(api, platform, "erin")
    now = int(time.time())
    key = web_session.session_key(settings)
    for document in (
        {"user": "erin", "started": now, "seen": now},
        {"user": "erin", "sid": "x" * 43, "started": now, "seen": now},
    ):
        assert _authentication_replay(settings, platform, web_session.encode(key, document)) == 303


# --- T5: private_key_jwt client authentication -------------------------------------------------


def _authentication_key_client(
    platform: Platform, make_client: MakeClient
) -> tuple[ClientCredentials, OKPKey]:
    """A reader registered with a public key (its secret revoked by the registration)."""
    credentials = make_client(org="vru", roles=("l1_reader",))
    key = OKPKey.generate_key("Ed25519")
    client_keys.register_key(
        platform.admin, cli_context(), credentials.client_id, json.dumps(key.as_dict(private=False))
    )
    return credentials, key


def _authentication_assertion(
    key: OKPKey, client_id: str, audience: str = "together", **changes: Any
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(changes)
    return jwt.encode({"alg": "Ed25519", "typ": "JWT"}, claims, key, algorithms=["Ed25519"])


def _authentication_assert(api: TestClient, assertion: str, **extra: str) -> Any:
    return api.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
            **extra,
        },
    )


def _authentication_token_refusals(platform: Platform) -> list[AuditEvent]:
    with platform.sessions() as session:
        return list(
            session.execute(
                select(AuditEvent)
                .where(AuditEvent.action == "token.refused")
                .order_by(AuditEvent.occurred_at)
            ).scalars()
        )


def test_T5_a_signed_assertion_gets_a_token_that_works(
    api: TestClient, platform: Platform, make_client: MakeClient
) -> None:
    credentials, key = _authentication_key_client(platform, make_client)
    response = _authentication_assert(
        api, _authentication_assertion(key, credentials.client_id), client_id=credentials.client_id
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert api.get("/v1/products", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with platform.sessions() as session:
        issued = (
            session.execute(select(AuditEvent).where(AuditEvent.action == "token.issued"))
            .scalars()
            .all()
        )
    assert [e.details["method"] for e in issued] == ["private_key_jwt"]


def test_T5_a_replayed_assertion_is_refused(
    api: TestClient, platform: Platform, make_client: MakeClient
) -> None:
    credentials, key = _authentication_key_client(platform, make_client)
    assertion = _authentication_assertion(key, credentials.client_id)
    assert _authentication_assert(api, assertion).status_code == 200
    replay = _authentication_assert(api, assertion)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    assert "access_token" not in replay.text
    assert [e.reason for e in _authentication_token_refusals(platform)] == ["assertion_replayed"]


def test_T5_a_secret_for_a_key_registered_client_is_refused(
    api: TestClient, platform: Platform, make_client: MakeClient
) -> None:
    credentials, _key = _authentication_key_client(platform, make_client)
    response = api.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,  # its secret from before the key
        },
    )
    assert response.status_code == 401
    assert [e.reason for e in _authentication_token_refusals(platform)] == ["secret_for_key_client"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aud": "https://elsewhere.example/token"}, "assertion_wrong_audience"),
        ({"exp": int(time.time()) - 600}, "assertion_expired"),
        ({"exp": int(time.time()) + 3600}, "assertion_lifetime_too_long"),
        ({"iss": "tgc_someone_else"}, "assertion_wrong_subject"),
        ({"jti": None}, "assertion_missing_jti"),
    ],
)
def test_T5_assertions_with_bad_claims_are_refused(
    api: TestClient,
    platform: Platform,
    make_client: MakeClient,
    change: dict[str, Any],
    reason: str,
) -> None:
    credentials, key = _authentication_key_client(platform, make_client)
    assertion = _authentication_assertion(key, credentials.client_id, **change)
    if change.get("jti", "") is None:
        assertion = _authentication_assertion(key, credentials.client_id)
        _head, body, _sig = assertion.split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=="))
        claims.pop("jti")
        assertion = jwt.encode({"alg": "Ed25519"}, claims, key, algorithms=["Ed25519"])
    response = _authentication_assert(api, assertion)
    assert response.status_code == 401, response.text
    assert [e.reason for e in _authentication_token_refusals(platform)] == [reason]


def test_T5_assertions_signed_by_another_key_or_unsigned_are_refused(
    api: TestClient, platform: Platform, make_client: MakeClient
) -> None:
    credentials, _key = _authentication_key_client(platform, make_client)
    stranger = OKPKey.generate_key("Ed25519")
    forged = _authentication_assertion(stranger, credentials.client_id)
    assert _authentication_assert(api, forged).status_code == 401
    now = int(time.time())
    unsigned = _authentication_unsigned(
        {"alg": "none"},
        {
            "iss": credentials.client_id,
            "sub": credentials.client_id,
            "aud": "together",
            "exp": now + 60,
            "jti": "n-1",
        },
    )
    assert _authentication_assert(api, unsigned).status_code == 401
    embedded = jwt.encode(
        {"alg": "Ed25519", "jwk": stranger.as_dict(private=False)},
        {
            "iss": credentials.client_id,
            "sub": credentials.client_id,
            "aud": "together",
            "exp": now + 60,
            "jti": "n-2",
        },
        stranger,
        algorithms=["Ed25519"],
    )
    assert _authentication_assert(api, embedded).status_code == 401
    reasons = [e.reason for e in _authentication_token_refusals(platform)]
    assert reasons == [
        "assertion_bad_signature",
        "assertion_algorithm_not_allowed",
        "assertion_header_not_allowed",
    ]


def test_T5_a_private_or_symmetric_key_cannot_be_registered(
    platform: Platform, make_client: MakeClient
) -> None:
    credentials = make_client(org="vru", roles=("l1_reader",))
    private = OKPKey.generate_key("Ed25519").as_dict(private=True)
    for text in (json.dumps(private), json.dumps({"kty": "oct", "k": "c2VjcmV0"}), "not json"):
        with pytest.raises(BadRequest):
            client_keys.register_key(platform.admin, cli_context(), credentials.client_id, text)


def test_T5_production_can_refuse_client_secrets_altogether(
    settings: Settings, platform: Platform, make_client: MakeClient
) -> None:
    strict_settings = settings.model_copy(update={"client_secrets_allowed": False})
    strict = build_platform(strict_settings)
    # The limits count per clock minute: a test that crossed a minute's end would see two
    # windows. Start where the rest of the minute is long enough for any test here.
    second = time.time() % 60
    if second > 40:
        time.sleep(60.2 - second)
    try:
        with TestClient(create_app(strict_settings, strict)) as api:
            secret_client = make_client(org="vru", roles=("l1_reader",))
            refused = api.post(
                "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": secret_client.client_id,
                    "client_secret": secret_client.client_secret,
                },
            )
            assert refused.status_code == 401
            assert "private_key_jwt" in refused.json()["error_description"]
            credentials, key = _authentication_key_client(platform, make_client)
            ok = _authentication_assert(api, _authentication_assertion(key, credentials.client_id))
            assert ok.status_code == 200, ok.text
    finally:
        strict.close()


def test_T5_the_cli_creates_a_key_client(
    settings: Settings, platform: Platform, api: TestClient, tmp_path: Path
) -> None:
    key = OKPKey.generate_key("Ed25519")
    jwk_file = tmp_path / "client.jwk"
    jwk_file.write_text(json.dumps(key.as_dict(private=False)))
    result = run_cli(
        settings,
        "clients",
        "create-with-key",
        "rms",
        "--org",
        "vru",
        "--role",
        "l1_reader",
        "--jwk",
        str(jwk_file),
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["token_endpoint_auth_method"] == "private_key_jwt"
    assert "client_secret" not in created
    response = _authentication_assert(api, _authentication_assertion(key, created["client_id"]))
    assert response.status_code == 200, response.text


# --- T5 / attacker finding 8: limits and lockout at the token endpoint -------------------------


@pytest.fixture
def _authentication_argon2_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the Argon2 checks the token endpoint makes: a counting wrapper around the real
    check (it still runs), to prove a limited request is refused before it."""
    calls: list[str] = []
    real = oauth_module.verify_secret

    def counting(secret_hash: str | None, secret: str) -> bool:
        calls.append(secret)
        return real(secret_hash, secret)

    monkeypatch.setattr(oauth_module, "verify_secret", counting)
    return calls


def _authentication_secret_request(api: TestClient, client_id: str, secret: str) -> Any:
    return api.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )


@pytest.fixture
def _authentication_strict(settings: Settings) -> Iterator[tuple[Settings, Platform, TestClient]]:
    strict_settings = settings.model_copy(
        update={
            "token_client_failures_per_minute": 3,
            "token_address_failures_per_minute": 6,
            "token_lockout_failures": 5,
        }
    )
    strict = build_platform(strict_settings)
    # The limits count per clock minute: a test that crossed a minute's end would see two
    # windows. Start where the rest of the minute is long enough for any test here.
    second = time.time() % 60
    if second > 40:
        time.sleep(60.2 - second)
    try:
        with TestClient(create_app(strict_settings, strict)) as api:
            yield strict_settings, strict, api
    finally:
        strict.close()


def test_T5_wrong_secrets_for_one_client_are_limited_before_argon2(
    _authentication_strict: tuple[Settings, Platform, TestClient],
    _authentication_argon2_calls: list[str],
) -> None:
    _settings, strict, api = _authentication_strict
    victim = client_maker(strict)(org="vru", roles=("l1_reader",))
    for _ in range(3):
        assert _authentication_secret_request(api, victim.client_id, "guess").status_code == 401
    assert len(_authentication_argon2_calls) == 3
    limited = _authentication_secret_request(api, victim.client_id, victim.client_secret)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 61
    assert len(_authentication_argon2_calls) == 3  # refused before any Argon2 check
    reasons = [e.reason for e in _authentication_token_refusals(strict)]
    assert reasons == ["bad_credentials_or_disabled"] * 3 + ["client_rate_limited"]


def test_T5_wrong_secrets_from_one_address_are_limited(
    _authentication_strict: tuple[Settings, Platform, TestClient],
    _authentication_argon2_calls: list[str],
) -> None:
    """Guessing across many client ids from one address (the TestClient's) is limited too."""
    _settings, strict, api = _authentication_strict
    for n in range(6):
        assert _authentication_secret_request(api, f"tgc_guess{n}", "x").status_code == 401
    good = client_maker(strict)(org="vru", roles=("l1_reader",))
    limited = _authentication_secret_request(api, good.client_id, good.client_secret)
    assert limited.status_code == 429 and "retry-after" in limited.headers
    assert len(_authentication_argon2_calls) == 6
    assert _authentication_token_refusals(strict)[-1].reason == "address_rate_limited"


def test_T5_a_client_is_locked_out_across_replicas_audited_and_unlocked_by_an_admin(
    _authentication_strict: tuple[Settings, Platform, TestClient],
) -> None:
    strict_settings, strict, api = _authentication_strict
    victim = client_maker(strict)(org="vru", roles=("l1_reader",))
    now = utcnow()
    # Five failures spread over earlier minutes (under the per-minute limit of 3), recorded by
    # "another replica": the counters are in the database.
    with strict.sessions() as session:
        for minutes in (5, 5, 3, 3):
            window = counters.window_start(now - timedelta(minutes=minutes), 60)
            counters.increment(session, counters.CLIENT_FAILURE, victim.client_id, window)
        session.commit()
    assert _authentication_secret_request(api, victim.client_id, "guess").status_code == 401
    locked = _authentication_secret_request(api, victim.client_id, victim.client_secret)
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 60
    refusals = _authentication_token_refusals(strict)
    assert [e.reason for e in refusals] == ["client_locked_out"]
    with strict.sessions() as session:
        lockout = session.execute(
            select(AuditEvent).where(AuditEvent.action == "client.locked_out")
        ).scalar_one()
    assert lockout.details["lockout"]["failures"] == 5
    assert (lockout.resource, lockout.resource_org, lockout.actor) == (
        victim.client_id,
        "vru",
        None,
    )
    # A second replica of the same installation refuses it too.
    other = build_platform(strict_settings)
    try:
        with TestClient(create_app(strict_settings, other)) as other_api:
            again = _authentication_secret_request(
                other_api, victim.client_id, victim.client_secret
            )
            assert again.status_code == 429
        client_keys.lift_lockout(other.admin, cli_context(), victim.client_id)
    finally:
        other.close()
    ok = _authentication_secret_request(api, victim.client_id, victim.client_secret)
    assert ok.status_code == 200, ok.text


# --- T1-T4 / attacker finding 9: refusals accounted for, not one audit row each ----------------


def test_T4_a_flood_of_refusals_is_counted_not_one_audit_row_each(
    settings: Settings,
) -> None:
    fast_settings = settings.model_copy(update={"auth_rejection_window_seconds": 1})
    fast = build_platform(fast_settings)
    try:
        with TestClient(create_app(fast_settings, fast)) as api:
            # Wait for the start of a fresh one-second window, then flood within it.
            time.sleep(1 - (time.time() % 1) + 0.01)
            started = time.time()
            for _ in range(30):
                api.post("/oauth/token", data={"grant_type": "password"})
            assert time.time() - started < 1, "the flood must fit in one window for this test"
            refusals = _authentication_token_refusals(fast)
            assert [e.reason for e in refusals] == ["unsupported_grant_type"]
            assert refusals[0].details["aggregation"]["window_seconds"] == 1
            time.sleep(1.1)
            api.post("/oauth/token", data={"grant_type": "password"})
            refusals = _authentication_token_refusals(fast)
        with fast.sessions() as session:
            summaries = list(
                session.execute(
                    select(AuditEvent).where(
                        AuditEvent.action == "authentication.refusals_summarised"
                    )
                ).scalars()
            )
    finally:
        fast.close()
    assert [e.reason for e in refusals] == ["unsupported_grant_type", "unsupported_grant_type"]
    assert [e.reason for e in summaries] == ["token.refused"]
    summary = summaries[0].details
    assert summary["refusals_not_audited_individually"] == 29
    assert summary["windows"][0]["refusals"] == 30


def test_T4_bearer_refusals_are_aggregated_by_address_and_reason(
    api: TestClient, platform: Platform
) -> None:
    """The API's bearer check accounts for refusals per address and reason: the first hundred in
    the window are events of their own, the rest counted (and summarised when it closes)."""
    individually = sign_in.INDIVIDUALLY[AuditAction.AUTHENTICATION_FAILED.value]
    for _ in range(individually + 5):
        assert (
            api.get("/v1/contracts", headers={"Authorization": "Bearer x.y.z"}).status_code == 401
        )
    ctx = RequestContext(client_address="10.0.0.2")
    for _ in range(3):
        sign_in.note_rejection(
            platform.admin, ctx, AuditAction.AUTHENTICATION_FAILED, "expired", {}, 3600
        )
    events = _authentication_refusals(platform)
    by_source = Counter((e.client_address, e.reason) for e in events)
    assert by_source[("10.0.0.2", "expired")] == 3
    flooded = [key for key in by_source if key[0] != "10.0.0.2"]
    assert len(flooded) == 1 and by_source[flooded[0]] == individually
    address, reason = flooded[0]
    window = counters.window_start(utcnow(), platform.settings.auth_rejection_window_seconds)
    with platform.sessions() as session:
        counted = counters.count_in(
            session, counters.REJECTION, f"authentication.failed|{address}|{reason}", window
        )
    assert counted == individually + 5
