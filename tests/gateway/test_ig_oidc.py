"""Sign-in through an OpenID Connect provider: a real (small) provider on a local port issues
signed ID tokens; the platform validates them with Authlib and maps them to its own accounts."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from pydantic import SecretStr
from sqlalchemy import select

from gateway.app import create_app
from services.admin import accounts as people_admin
from services.audit.models import AuditEvent
from services.kit.settings import Settings
from services.platform import build_platform
from tests.fixtures.app import cli_context

CLIENT_ID, CLIENT_SECRET = "together-ig", "provider-issued-secret"


class Provider:
    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        self.codes: dict[str, dict[str, Any]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    self._json(
                        200,
                        {
                            "issuer": provider.url,
                            "authorization_endpoint": provider.url + "/authorize",
                            "token_endpoint": provider.url + "/token",
                            "jwks_uri": provider.url + "/jwks",
                            "response_types_supported": ["code"],
                            "id_token_signing_alg_values_supported": ["RS256"],
                        },
                    )
                elif self.path == "/jwks":
                    self._json(200, KeySet([provider.key]).as_dict(private=False))
                else:
                    self._json(404, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {basic}":
                    self._json(401, {"error": "invalid_client"})
                    return
                claims = provider.codes.pop(form.get("code", [""])[0], None)
                if claims is None:
                    self._json(400, {"error": "invalid_grant"})
                    return
                id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, provider.key)
                self._json(
                    200,
                    {"access_token": "at", "token_type": "Bearer", "id_token": id_token},
                )

        return Handler

    def issue(self, code: str, nonce: str, **claims: Any) -> None:
        now = int(time.time())
        self.codes[code] = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "sub": "subject-1",
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            **claims,
        }


@pytest.fixture
def provider() -> Iterator[Provider]:
    running = Provider()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture
def oidc_api(settings: Settings, provider: Provider) -> Iterator[TestClient]:
    configured = settings.model_copy(
        update={
            "ig_oidc_metadata_url": provider.url + "/.well-known/openid-configuration",
            "ig_oidc_client_id": CLIENT_ID,
            "ig_oidc_client_secret": SecretStr(CLIENT_SECRET),
            "ig_oidc_org_map": {"HIOWFRS": "hiwfrs"},
        }
    )
    platform = build_platform(configured)
    people_admin.create_user(
        platform.admin,
        cli_context(),
        username="fay@fire.example",
        organisation="hiwfrs",
        role="ig_lead",
        password=None,
    )
    people_admin.create_user(
        platform.admin,
        cli_context(),
        username="gus@fire.example",
        organisation="hiwfrs",
        role="ig_lead",
        password="a local password only",
    )
    with TestClient(create_app(configured, platform)) as client:
        client.platform = platform  # type: ignore[attr-defined]
        yield client
    platform.close()


def _start(api: TestClient, provider: Provider) -> dict[str, str]:
    response = api.get("/ig/oidc/start", follow_redirects=False)
    assert response.status_code == 302
    location = urlparse(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == provider.url + "/authorize"
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["client_id"] == CLIENT_ID and query["response_type"] == "code"
    assert query["redirect_uri"].endswith("/ig/oidc/callback")
    return query


def test_oidc_sign_in_maps_the_organisation_and_needs_an_account(
    oidc_api: TestClient, provider: Provider
) -> None:
    api = oidc_api
    assert "Sign in with your organisation" in api.get("/ig/sign-in").text

    query = _start(api, provider)
    provider.issue("good", query["nonce"], email="fay@fire.example", org="HIOWFRS")
    response = api.get(
        "/ig/oidc/callback",
        params={"code": "good", "state": query["state"]},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    page = api.get("/ig/events")
    assert page.status_code == 200 and "fay@fire.example (ig_lead, hiwfrs)" in page.text
    api.cookies.clear()

    refusals = [
        ("unmapped", {"email": "fay@fire.example", "org": "SOMEWHERE-ELSE"}),
        ("local", {"email": "gus@fire.example", "org": "HIOWFRS"}),
        ("unknown", {"email": "nobody@fire.example", "org": "HIOWFRS"}),
    ]
    for code, claims in refusals:
        query = _start(api, provider)
        provider.issue(code, query["nonce"], **claims)
        response = api.get(
            "/ig/oidc/callback",
            params={"code": code, "state": query["state"]},
            follow_redirects=False,
        )
        assert response.status_code == 401, code
        assert api.get("/ig/events", follow_redirects=False).status_code == 303

    # A replayed or forged state is refused too.
    query = _start(api, provider)
    provider.issue("forged", query["nonce"], email="fay@fire.example", org="HIOWFRS")
    response = api.get(
        "/ig/oidc/callback",
        params={"code": "forged", "state": "not-the-state"},
        follow_redirects=False,
    )
    assert response.status_code == 401

    platform = api.platform  # type: ignore[attr-defined]
    with platform.sessions() as session:
        events = [
            (e.action, e.reason, e.resource)
            for e in session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action.like("ig.sign%"))
                .order_by(AuditEvent.seq)
            )
        ]
    assert events[0] == ("ig.signed_in", None, "fay@fire.example")
    assert events[1] == ("ig.sign_in_failed", "oidc_organisation_not_mapped", "fay@fire.example")
    assert events[2] == ("ig.sign_in_failed", "oidc_no_matching_account", "gus@fire.example")
    assert events[3] == ("ig.sign_in_failed", "oidc_no_matching_account", "nobody@fire.example")
    assert events[4][0] == "ig.sign_in_failed" and events[4][1].startswith("oidc_")
