"""Client authentication with signed assertions: `private_key_jwt` (RFC 7523 s.2.2, OpenID
Connect Core s.9), as partners on Entra ID and other identity platforms use it.

A client registered with a public JWK proves itself with a short-lived JWT it signs: `iss` and
`sub` its client id, `aud` this token endpoint (its URL, or the platform's issuer), `exp` at most
five minutes ahead, and a `jti` used once (the caller stores it until `exp`, so a captured
assertion cannot be replayed). Keys named by the assertion itself (`jwk`, `jku`, `x5u`, `x5c`)
and `crit` extensions are refused, and the algorithm is pinned by the registered key's type.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from services.identity.tokens import MAX_HEADER_CHARS, MAX_TOKEN_CHARS, TokenInvalid

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_LIFETIME_SECONDS = 300
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit"})
# The algorithms each registered key type may sign with (never HMAC, never none).
_ALGORITHMS: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("OKP", "Ed25519"): ("Ed25519", "EdDSA"),
    ("EC", "P-256"): ("ES256",),
    ("EC", "P-384"): ("ES384",),
    ("RSA", None): ("RS256", "PS256"),
}


class KeyRejected(ValueError):
    """A JWK that cannot be registered: private, symmetric, or of an unsupported type."""


def _algorithms(jwk: dict[str, Any]) -> tuple[str, ...]:
    kty = jwk.get("kty")
    curve = jwk.get("crv") if kty in ("OKP", "EC") else None
    found = _ALGORITHMS.get((str(kty), curve))
    if found is None:
        raise KeyRejected("the key must be a public Ed25519, P-256, P-384 or RSA key")
    return found


def public_jwk(text: str) -> str:
    """A JWK (JSON) checked for registration: public only, a supported type; returns it as
    stored (canonical JSON of its public members)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise KeyRejected("the key file is not JSON") from exc
    if not isinstance(data, dict):
        raise KeyRejected("the key file must hold one JWK object")
    if "keys" in data:
        raise KeyRejected("give one key (a JWK), not a key set")
    if any(name in data for name in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise KeyRejected("that is a private or symmetric key: register the public key only")
    _algorithms(data)
    key = _import(data)
    if data.get("kty") == "RSA" and len(base64.urlsafe_b64decode(data["n"] + "==")) < 256:
        raise KeyRejected("an RSA key must have at least 2048 bits")
    public = key.as_dict(private=False)
    return json.dumps(public, sort_keys=True, separators=(",", ":"))


def _import(data: dict[str, Any]) -> OKPKey | ECKey | RSAKey:
    try:
        if data.get("kty") == "OKP":
            return OKPKey.import_key(data)
        if data.get("kty") == "EC":
            return ECKey.import_key(data)
        return RSAKey.import_key(data)
    except (JoseError, ValueError, KeyError, TypeError) as exc:
        raise KeyRejected("the key cannot be read") from exc


def _segment(part: str) -> dict[str, Any]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, UnicodeError) as exc:
        raise TokenInvalid("assertion_malformed") from exc
    if not isinstance(decoded, dict):
        raise TokenInvalid("assertion_malformed")
    return decoded


def claimed_client(assertion: str) -> str:
    """The client id an assertion claims (`sub`, unverified: only to find the key to verify it
    with). Bounded before anything is decoded."""
    if len(assertion) > MAX_TOKEN_CHARS:
        raise TokenInvalid("assertion_too_large")
    parts = assertion.split(".")
    if len(parts) != 3 or len(parts[0]) > MAX_HEADER_CHARS:
        raise TokenInvalid("assertion_malformed")
    subject = _segment(parts[1]).get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= 64:
        raise TokenInvalid("assertion_malformed")
    return subject


@dataclass(frozen=True)
class Verified:
    jti: str
    expires_at: int


def verify(
    assertion: str,
    *,
    client_id: str,
    registered_jwk: str,
    audiences: tuple[str, ...],
    now: int,
    leeway: int,
) -> Verified:
    """The assertion's `jti` and `exp` when it is a valid assertion of this client, signed by
    its registered key; TokenInvalid with a reason otherwise."""
    claimed_client(assertion)
    header = _segment(assertion.split(".")[0])
    jwk = json.loads(registered_jwk)
    allowed = _algorithms(jwk)
    if header.get("alg") not in allowed:
        raise TokenInvalid("assertion_algorithm_not_allowed")
    if _FORBIDDEN_HEADERS & header.keys():
        raise TokenInvalid("assertion_header_not_allowed")
    try:
        decoded = jwt.decode(assertion, _import(jwk), algorithms=list(allowed))
    except (JoseError, ValueError) as exc:
        raise TokenInvalid("assertion_bad_signature") from exc
    claims = decoded.claims
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise TokenInvalid("assertion_wrong_subject")
    audience = claims.get("aud")
    given = audience if isinstance(audience, list) else [audience]
    if not any(isinstance(a, str) and a in audiences for a in given):
        raise TokenInvalid("assertion_wrong_audience")
    expires = claims.get("exp")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise TokenInvalid("assertion_missing_exp")
    if expires + leeway < now:
        raise TokenInvalid("assertion_expired")
    if expires - now > MAX_LIFETIME_SECONDS + leeway:
        raise TokenInvalid("assertion_lifetime_too_long")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, int) or value - leeway > now):
            raise TokenInvalid("assertion_not_yet_valid")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= 200:
        raise TokenInvalid("assertion_missing_jti")
    return Verified(jti, expires)
