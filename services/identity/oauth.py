"""The OAuth 2.0 client-credentials grant (RFC 6749 s.4.4), with Authlib's error vocabulary.

Client authentication by ``private_key_jwt`` (a signed assertion, RFC 7523; for clients
registered with a public key: services/identity/assertions.py), ``client_secret_post`` (form
body) or ``client_secret_basic`` (HTTP Basic); secrets can be switched off altogether
(``TOGETHER_CLIENT_SECRETS_ALLOWED=false``). Errors are the RFC's: ``invalid_request``,
``invalid_client`` (401 with ``WWW-Authenticate`` when Basic was used),
``unsupported_grant_type``; and 429 with ``Retry-After`` when a client or an address has failed
too often in the last minute, or a client is locked out.

The request is taken apart in steps so that the costly check (Argon2, about 150 ms, or a
signature) runs outside any database transaction and only after the limits allow it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidRequestError,
    OAuth2Error,
    UnsupportedGrantTypeError,
)
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.identity import assertions, counters
from services.identity import service as identity_service
from services.identity.models import ClientAssertionJti
from services.identity.schemas import Principal
from services.identity.secrets import verify_secret
from services.identity.tokens import TokenInvalid, TokenService

MAX_FORM_BYTES = 4096


@dataclass
class TokenResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    principal: Principal | None = None
    client_id: str | None = None
    reason: str | None = None
    method: str | None = None


@dataclass(frozen=True)
class TokenPolicy:
    """What the token endpoint allows (from the settings; these defaults are theirs)."""

    client_failures_per_minute: int = 5
    address_failures_per_minute: int = 20
    lockout_failures: int = 20
    lockout_seconds: int = 900
    secrets_allowed: bool = True
    # Accepted as a client assertion's `aud`: the issuer and the token endpoint's URL.
    assertion_audiences: tuple[str, ...] = ("together",)
    leeway_seconds: int = 30
    window_seconds: int = 60


@dataclass(frozen=True)
class TokenRequest:
    """A well-formed client-credentials request, its client not authenticated yet."""

    client_id: str
    basic: bool
    secret: str | None = None
    assertion: str | None = None

    @property
    def method(self) -> str:
        if self.assertion is not None:
            return "private_key_jwt"
        return "client_secret_basic" if self.basic else "client_secret_post"


def _error(error: OAuth2Error, *, basic: bool, client_id: str | None, reason: str) -> TokenResponse:
    body = dict(error.get_body())
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    status = error.status_code
    if isinstance(error, InvalidClientError):
        status = 401
        if basic:
            headers["WWW-Authenticate"] = 'Basic realm="together"'
    return TokenResponse(status, body, headers, None, client_id, reason)


def _parse_basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    return unquote(client_id), unquote(secret)


def _invalid_client(request: TokenRequest, reason: str) -> TokenResponse:
    return _error(
        InvalidClientError(description="client authentication failed"),
        basic=request.basic,
        client_id=request.client_id,
        reason=reason,
    )


def parse_request(
    content_type: str, body: bytes, authorization: str | None, policy: TokenPolicy
) -> TokenRequest | TokenResponse:
    """The request taken apart (no database, no key): a TokenRequest, or the RFC's error."""
    basic = authorization is not None and authorization.lower().startswith("basic ")
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return _error(
            InvalidRequestError("the body must be application/x-www-form-urlencoded"),
            basic=basic,
            client_id=None,
            reason="bad_content_type",
        )
    if len(body) > MAX_FORM_BYTES:
        return _error(
            InvalidRequestError("request too large"),
            basic=basic,
            client_id=None,
            reason="too_large",
        )
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        pairs = []
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            return _error(
                InvalidRequestError("a form parameter is repeated"),
                basic=basic,
                client_id=None,
                reason="repeated_parameter",
            )
        form[name] = value
    grant_type = form.get("grant_type")
    if grant_type != "client_credentials":
        return _error(
            UnsupportedGrantTypeError(grant_type or ""),
            basic=basic,
            client_id=None,
            reason="unsupported_grant_type",
        )
    methods = sum(
        (
            basic,
            "client_secret" in form,
            "client_assertion" in form or "client_assertion_type" in form,
        )
    )
    if methods > 1:
        return _error(
            InvalidRequestError("use one client authentication method, not two"),
            basic=basic,
            client_id=None,
            reason="two_auth_methods",
        )
    if "client_assertion" in form or "client_assertion_type" in form:
        return _parse_assertion(form, basic)
    credentials: tuple[str, str] | None
    if basic:
        assert authorization is not None
        credentials = _parse_basic(authorization)
        if credentials is not None and (
            "client_id" in form and form["client_id"] != credentials[0]
        ):
            credentials = None
    else:
        credentials = (
            (form["client_id"], form["client_secret"])
            if "client_id" in form and "client_secret" in form
            else None
        )
    if credentials is None:
        return _error(
            InvalidClientError(description="client authentication failed"),
            basic=basic,
            client_id=None,
            reason="no_credentials",
        )
    client_id, secret = credentials
    if len(client_id) > 64 or len(secret) > 256:
        return _error(
            InvalidClientError(description="client authentication failed"),
            basic=basic,
            client_id=None,
            reason="credentials_too_long",
        )
    if not policy.secrets_allowed:
        return _error(
            InvalidClientError(description="client secrets are not accepted: use private_key_jwt"),
            basic=basic,
            client_id=client_id,
            reason="client_secrets_not_accepted",
        )
    return TokenRequest(client_id=client_id, basic=basic, secret=secret)


def _parse_assertion(form: dict[str, str], basic: bool) -> TokenRequest | TokenResponse:
    if form.get("client_assertion_type") != assertions.ASSERTION_TYPE or not form.get(
        "client_assertion"
    ):
        return _error(
            InvalidRequestError(
                f"client_assertion_type must be {assertions.ASSERTION_TYPE} with a client_assertion"
            ),
            basic=basic,
            client_id=None,
            reason="bad_assertion_type",
        )
    assertion = form["client_assertion"]
    try:
        client_id = assertions.claimed_client(assertion)
    except TokenInvalid as exc:
        return _error(
            InvalidClientError(description="client authentication failed"),
            basic=basic,
            client_id=None,
            reason=exc.reason,
        )
    if "client_id" in form and form["client_id"] != client_id:
        return _error(
            InvalidClientError(description="client authentication failed"),
            basic=basic,
            client_id=None,
            reason="assertion_client_mismatch",
        )
    return TokenRequest(client_id=client_id, basic=basic, assertion=assertion)


def _retry_after(status: TokenResponse, seconds: int) -> TokenResponse:
    status.status = 429
    status.body = {
        "error": "slow_down",
        "error_description": "too many failed attempts: try again later",
    }
    status.headers["Retry-After"] = str(max(1, seconds))
    return status


def limited(
    session: Session, policy: TokenPolicy, request: TokenRequest, address: str, now: datetime
) -> TokenResponse | None:
    """A 429 when this client is locked out, or it or this address failed too often in the
    current minute; checked before any costly check. None when the request may go on."""
    window = counters.window_start(now, policy.window_seconds)
    window_end = window + timedelta(seconds=policy.window_seconds)
    since = now - timedelta(seconds=policy.lockout_seconds)
    span = counters.count_since(session, counters.CLIENT_FAILURE, request.client_id, since)
    if span.total >= policy.lockout_failures and span.latest_window is not None:
        lifts = span.latest_window + timedelta(seconds=policy.lockout_seconds)
        refusal = _invalid_client(request, "client_locked_out")
        return _retry_after(refusal, int((lifts - now).total_seconds()) + 1)
    wait = int((window_end - now).total_seconds()) + 1
    if (
        counters.count_in(session, counters.CLIENT_FAILURE, request.client_id, window)
        >= policy.client_failures_per_minute
    ):
        return _retry_after(_invalid_client(request, "client_rate_limited"), wait)
    if (
        counters.count_in(session, counters.ADDRESS_FAILURE, address, window)
        >= policy.address_failures_per_minute
    ):
        return _retry_after(_invalid_client(request, "address_rate_limited"), wait)
    return None


@dataclass(frozen=True)
class Checked:
    """The outcome of the costly check: the principal, or the refusal; and for an assertion,
    the `jti` to claim with the token."""

    principal: Principal | None
    refusal: TokenResponse | None
    jti: str | None = None
    jti_expires: int | None = None


def check_credentials(
    sessions: sessionmaker[Session], request: TokenRequest, policy: TokenPolicy, now: datetime
) -> Checked:
    """Authenticate the client. The registry is read in a short session of its own, and the
    Argon2 hash or the signature is checked after it has closed: no transaction (on SQLite no
    write lock) is held for the 150 ms the check takes."""
    with sessions() as session:
        found = identity_service.client_for_authentication(session, request.client_id)
    if request.assertion is not None:
        if found is None or found.public_jwk is None or found.principal is None:
            return Checked(None, _invalid_client(request, "assertion_client_has_no_key"))
        try:
            verified = assertions.verify(
                request.assertion,
                client_id=request.client_id,
                registered_jwk=found.public_jwk,
                audiences=policy.assertion_audiences,
                now=int(now.timestamp()),
                leeway=policy.leeway_seconds,
            )
        except TokenInvalid as exc:
            return Checked(None, _invalid_client(request, exc.reason))
        return Checked(found.principal, None, verified.jti, verified.expires_at)
    assert request.secret is not None
    if found is not None and found.public_jwk is not None:
        # A key-registered client has no secret: refused without an Argon2 check.
        return Checked(None, _invalid_client(request, "secret_for_key_client"))
    ok = verify_secret(found.secret_hash if found else None, request.secret)
    if not ok or found is None or found.principal is None:
        return Checked(None, _invalid_client(request, "bad_credentials_or_disabled"))
    return Checked(found.principal, None)


def claim_jti(session: Session, client_id: str, jti: str, expires_at: int, now: datetime) -> bool:
    """Record an assertion's `jti` until it expires; False when it was used before (a replay).
    Expired ids are deleted as new ones arrive."""
    session.execute(delete(ClientAssertionJti).where(ClientAssertionJti.expires_at < now))
    expires = datetime.fromtimestamp(expires_at, tz=now.tzinfo) + timedelta(minutes=5)
    try:
        with session.begin_nested():
            session.add(ClientAssertionJti(client_id=client_id, jti=jti, expires_at=expires))
    except IntegrityError:
        return False
    return True


def count_failure(
    session: Session, policy: TokenPolicy, request: TokenRequest, address: str, now: datetime
) -> int | None:
    """Count a failed authentication against the client and the address; returns the client's
    failures over the lockout period when this one locked it out (the lockout starts), else
    None."""
    window = counters.window_start(now, policy.window_seconds)
    counters.increment(session, counters.CLIENT_FAILURE, request.client_id, window)
    counters.increment(session, counters.ADDRESS_FAILURE, address, window)
    since = now - timedelta(seconds=policy.lockout_seconds)
    total = counters.count_since(session, counters.CLIENT_FAILURE, request.client_id, since).total
    return total if total == policy.lockout_failures else None


def issued(tokens: TokenService, request: TokenRequest, principal: Principal) -> TokenResponse:
    token, lifetime = tokens.issue(
        client_id=principal.client_id, organisation=principal.organisation
    )
    return TokenResponse(
        200,
        {"access_token": token, "token_type": "Bearer", "expires_in": lifetime},
        {"Cache-Control": "no-store", "Pragma": "no-cache"},
        principal,
        principal.client_id,
        method=request.method,
    )


def replayed(request: TokenRequest) -> TokenResponse:
    return _invalid_client(request, "assertion_replayed")
