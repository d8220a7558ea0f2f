"""The OAuth 2.0 client-credentials grant (RFC 6749 s.4.4), with Authlib's error vocabulary.

Client authentication by ``client_secret_post`` (form body) or ``client_secret_basic`` (HTTP
Basic). Errors are the RFC's: ``invalid_request``, ``invalid_client`` (401 with
``WWW-Authenticate`` when Basic was used), ``unsupported_grant_type``, ``invalid_scope``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidRequestError,
    OAuth2Error,
    UnsupportedGrantTypeError,
)
from sqlalchemy.orm import Session

from services.identity import service as identity_service
from services.identity.schemas import Principal
from services.identity.tokens import TokenService

MAX_FORM_BYTES = 4096


@dataclass
class TokenResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    principal: Principal | None = None
    client_id: str | None = None
    reason: str | None = None


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


def client_credentials(
    session: Session,
    tokens: TokenService,
    *,
    content_type: str,
    body: bytes,
    authorization: str | None,
) -> TokenResponse:
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
                InvalidRequestError(f"parameter {name!r} repeated"),
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
    credentials: tuple[str, str] | None
    if basic:
        assert authorization is not None
        credentials = _parse_basic(authorization)
        if credentials is not None and (
            "client_id" in form and form["client_id"] != credentials[0]
        ):
            credentials = None
        if "client_secret" in form:
            return _error(
                InvalidRequestError("use one client authentication method, not two"),
                basic=basic,
                client_id=None,
                reason="two_auth_methods",
            )
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
    principal = identity_service.authenticate(session, client_id, secret)
    if principal is None:
        return _error(
            InvalidClientError(description="client authentication failed"),
            basic=basic,
            client_id=client_id,
            reason="bad_credentials_or_disabled",
        )
    if form.get("scope"):
        # Scopes are not used: what a client may do comes from its roles, checked per request.
        pass
    token, lifetime = tokens.issue(
        client_id=principal.client_id, organisation=principal.organisation
    )
    return TokenResponse(
        200,
        {"access_token": token, "token_type": "Bearer", "expires_in": lifetime},
        {"Cache-Control": "no-store", "Pragma": "no-cache"},
        principal,
        principal.client_id,
    )
