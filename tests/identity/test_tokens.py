"""Token endpoint and bearer-token checks (security-tests T1-T4, T7)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import OKPKey
from sqlalchemy import select

from services.audit.models import AuditEvent
from services.identity import service as identity_service
from services.platform import Platform
from tests.fixtures.app import ClientCredentials


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unsigned(header: dict[str, object], claims: dict[str, object]) -> str:
    return b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())


def good_claims(platform: Platform, credentials: ClientCredentials) -> dict[str, object]:
    now = int(time.time())
    return {
        "iss": platform.settings.issuer,
        "aud": platform.settings.audience,
        "sub": credentials.client_id,
        "client_id": credentials.client_id,
        "org": credentials.organisation,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "x",
    }


def sign_with_platform_key(platform: Platform, claims: dict[str, object], **header: object) -> str:
    key = OKPKey.import_key(platform.tokens._key.as_pem(private=True))
    head = {"alg": "Ed25519", "typ": "at+jwt", "kid": platform.tokens.kid, **header}
    return jwt.encode(head, claims, key, algorithms=["Ed25519"])


def auth_events(platform: Platform) -> list[AuditEvent]:
    with platform.sessions() as session:
        return list(
            session.execute(
                select(AuditEvent).where(AuditEvent.action == "authentication.failed")
            ).scalars()
        )


def test_token_issued_by_form_and_basic(
    api: TestClient, make_client: Callable[..., ClientCredentials], platform: Platform
) -> None:
    credentials = make_client()
    form = api.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
        },
    )
    assert form.status_code == 200
    body = form.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == platform.settings.token_lifetime_seconds
    assert form.headers["cache-control"] == "no-store"
    basic = api.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(credentials.client_id, credentials.client_secret),
    )
    assert basic.status_code == 200
    token = basic.json()["access_token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "Ed25519" and header["typ"] == "at+jwt"
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    for name in ("iss", "aud", "exp", "iat", "jti", "client_id", "org"):
        assert name in claims
    assert claims["org"] == "hampshire-constabulary"
    assert claims["exp"] - claims["iat"] == platform.settings.token_lifetime_seconds


def test_secret_is_stored_hashed(
    platform: Platform, make_client: Callable[..., ClientCredentials]
) -> None:
    credentials = make_client()
    with platform.sessions() as session:
        client = identity_service.repository.get_by_client_id(session, credentials.client_id)
        assert client is not None
        assert credentials.client_secret not in client.secret_hash
        assert client.secret_hash.startswith("$argon2id$")


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        (
            {"grant_type": "password", "client_id": "a", "client_secret": "b"},
            400,
            "unsupported_grant_type",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "b"},
            401,
            "invalid_client",
        ),
        ({"grant_type": "client_credentials"}, 401, "invalid_client"),
    ],
)
def test_token_endpoint_errors(
    api: TestClient, data: dict[str, str], status: int, error: str
) -> None:
    response = api.post("/oauth/token", data=data)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert "access_token" not in response.text


def test_wrong_secret_and_disabled_client_refused_and_audited(
    api: TestClient, make_client: Callable[..., ClientCredentials], platform: Platform
) -> None:
    credentials = make_client()
    wrong = api.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": credentials.client_id,
            "client_secret": "nope",
        },
    )
    assert wrong.status_code == 401
    with platform.sessions() as session:
        refused = (
            session.execute(select(AuditEvent).where(AuditEvent.action == "token.refused"))
            .scalars()
            .all()
        )
    assert len(refused) == 1
    assert refused[0].actor is None
    assert refused[0].details["claimed_client_id"] == credentials.client_id
    assert "nope" not in refused[0].canonical


def test_valid_token_reaches_v1(api: TestClient, police_token: str) -> None:
    response = api.get("/v1/contracts", headers={"Authorization": f"Bearer {police_token}"})
    assert response.status_code == 200


def test_every_v1_route_needs_a_token(api: TestClient, platform: Platform) -> None:
    for path in ("/v1/contracts", "/v1/contracts/police.occurrences", "/v1/uploads/x"):
        response = api.get(path)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "NOT_AUTHENTICATED"
    assert {e.reason for e in auth_events(platform)} == {"missing_token"}


def test_disabled_client_token_stops_working(
    api: TestClient,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
    platform: Platform,
) -> None:
    credentials = make_client()
    token = token_for(credentials)
    headers = {"Authorization": f"Bearer {token}"}
    assert api.get("/v1/contracts", headers=headers).status_code == 200
    with platform.sessions() as session:
        identity_service.disable_client(session, credentials.client_id)
        session.commit()
    assert api.get("/v1/contracts", headers=headers).status_code == 401
    assert auth_events(platform)[-1].reason == "client_unknown_or_disabled"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_rejected(
    api: TestClient, platform: Platform, make_client: Callable[..., ClientCredentials], alg: str
) -> None:
    credentials = make_client()
    token = (
        unsigned(
            {"alg": alg, "typ": "at+jwt", "kid": platform.tokens.kid},
            good_claims(platform, credentials),
        )
        + "."
    )
    response = api.get("/v1/contracts", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    event = auth_events(platform)[-1]
    assert event.actor is None and event.actor_org is None
    assert event.reason == "algorithm_not_allowed"


def test_hs256_with_public_key_rejected(
    api: TestClient, platform: Platform, make_client: Callable[..., ClientCredentials]
) -> None:
    credentials = make_client()
    public_pem = platform.tokens._key.as_pem(private=False)
    signing_input = unsigned(
        {"alg": "HS256", "typ": "at+jwt", "kid": platform.tokens.kid},
        good_claims(platform, credentials),
    )
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + b64(signature)
    response = api.get("/v1/contracts", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert auth_events(platform)[-1].reason == "algorithm_not_allowed"


def test_other_key_and_header_keys_rejected(
    api: TestClient, platform: Platform, make_client: Callable[..., ClientCredentials]
) -> None:
    credentials = make_client()
    attacker = OKPKey.import_key(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    claims = good_claims(platform, credentials)
    same_kid = jwt.encode(
        {"alg": "Ed25519", "typ": "at+jwt", "kid": platform.tokens.kid},
        claims,
        attacker,
        algorithms=["Ed25519"],
    )
    embedded = jwt.encode(
        {
            "alg": "Ed25519",
            "typ": "at+jwt",
            "kid": platform.tokens.kid,
            "jwk": attacker.as_dict(private=False),
        },
        claims,
        attacker,
        algorithms=["Ed25519"],
    )
    traversal = sign_with_platform_key(platform, claims, kid="../../keys/other")
    jku = sign_with_platform_key(platform, claims, jku="http://attacker.invalid/jwks")
    reasons = []
    for token in (same_kid, embedded, traversal, jku):
        assert (
            api.get("/v1/contracts", headers={"Authorization": f"Bearer {token}"}).status_code
            == 401
        )
        reasons.append(auth_events(platform)[-1].reason)
    assert reasons == ["bad_signature", "header_not_allowed", "unknown_key", "header_not_allowed"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aud": "another-service"}, "wrong_audience"),
        ({"iss": "another-issuer"}, "wrong_issuer"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not_yet_valid"),
        ({"exp": None}, "missing_exp"),
    ],
)
def test_bad_claims_rejected(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    change: dict[str, object],
    reason: str,
) -> None:
    credentials = make_client()
    claims = good_claims(platform, credentials)
    for name, value in change.items():
        if value is None:
            claims.pop(name)
        else:
            claims[name] = value
    token = sign_with_platform_key(platform, claims)
    assert api.get("/v1/contracts", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert auth_events(platform)[-1].reason == reason


def test_tampered_token_rejected(api: TestClient, police_token: str, platform: Platform) -> None:
    header, payload, signature = police_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["org"] = "vru"
    forged = header + "." + b64(json.dumps(claims).encode()) + "." + signature
    assert (
        api.get("/v1/contracts", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    )
    assert auth_events(platform)[-1].reason == "bad_signature"


def test_oversized_token_rejected(api: TestClient, platform: Platform) -> None:
    token = "a" * 10_000
    assert api.get("/v1/contracts", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert auth_events(platform)[-1].reason == "token_too_large"
