"""Access tokens: the only module that touches JOSE (joserfc, the Authlib project's JOSE library).

Tokens are JWTs signed with Ed25519 (RFC 8037/9864 "Ed25519"). Verification pins the algorithm
and the key; header-supplied keys (``jwk``, ``jku``, ``x5u``, ``x5c``), unknown ``crit``
extensions, other key ids and other algorithms are refused before any claim is read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from services.kit.clock import utcnow
from services.kit.ids import new_id

ALGORITHM = "Ed25519"
TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a secret)
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit"})


class TokenInvalid(Exception):
    """Raised with a short reason code; the reason goes to the audit trail, not to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenClaims:
    client_id: str
    organisation: str
    jti: str
    expires_at: int


# Verified tokens remembered per process (a token is about 600 bytes).
_VERIFIED_MAX = 10_000
# A token this platform issues is about 600 characters, its header segment about 100: anything
# longer is refused by its length, before any decoding, JSON parsing or signature check (T6).
MAX_TOKEN_CHARS = 4096
MAX_HEADER_CHARS = 1024


class TokenService:
    def __init__(
        self, private_key_pem: bytes, *, issuer: str, audience: str, lifetime: int, leeway: int
    ) -> None:
        self._key = OKPKey.import_key(private_key_pem)
        public = self._key.as_dict(private=False)
        thumb = hashlib.sha256(json.dumps(public, sort_keys=True).encode()).digest()
        self.kid = base64.urlsafe_b64encode(thumb[:12]).decode().rstrip("=")
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self.leeway = leeway
        # Tokens whose signature and claims were checked: token -> (claims, not before).
        self._verified: dict[str, tuple[TokenClaims, int]] = {}
        self._verified_lock = threading.Lock()

    def issue(self, *, client_id: str, organisation: str) -> tuple[str, int]:
        now = int(utcnow().timestamp())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": client_id,
            "client_id": client_id,
            "org": organisation,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "jti": new_id(),
        }
        header = {"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": self.kid}
        return jwt.encode(header, claims, self._key, algorithms=[ALGORITHM]), self.lifetime

    def known(self, token: str) -> TokenClaims | None:
        """The claims of a token verified before (time window checked now), or None if this
        token has not been verified yet. Raises TokenInvalid when it has expired."""
        found = self._verified.get(token)
        if found is None:
            return None
        claims, not_before = found
        now = int(utcnow().timestamp())
        if claims.expires_at + self.leeway < now:
            raise TokenInvalid("expired")
        if not_before - self.leeway > now:
            raise TokenInvalid("not_yet_valid")
        return claims

    def verify(self, token: str) -> TokenClaims:
        """The token's claims, or TokenInvalid. A token verified before is not verified again
        (its signature cannot change), but its time window is checked on every use."""
        known = self.known(token)
        if known is not None:
            return known
        claims, not_before = self._verify(token)
        with self._verified_lock:
            if len(self._verified) >= _VERIFIED_MAX:
                self._verified.clear()
            self._verified[token] = (claims, not_before)
        return claims

    def _verify(self, token: str) -> tuple[TokenClaims, int]:
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenInvalid("token_too_large")
        if len(token.partition(".")[0]) > MAX_HEADER_CHARS:
            raise TokenInvalid("header_too_large")
        header = _read_header(token)
        if header.get("alg") != ALGORITHM:
            raise TokenInvalid("algorithm_not_allowed")
        if _FORBIDDEN_HEADERS & header.keys():
            raise TokenInvalid("header_not_allowed")
        if header.get("kid") != self.kid:
            raise TokenInvalid("unknown_key")
        if header.get("typ") != TOKEN_TYPE:
            raise TokenInvalid("wrong_token_type")
        try:
            decoded = jwt.decode(token, self._key, algorithms=[ALGORITHM])
        except JoseError as exc:
            raise TokenInvalid("bad_signature") from exc
        except ValueError as exc:
            raise TokenInvalid("malformed") from exc
        claims = decoded.claims
        now = int(utcnow().timestamp())
        for name in ("iss", "aud", "exp", "iat", "nbf", "jti", "client_id", "org"):
            if name not in claims:
                raise TokenInvalid(f"missing_{name}")
        if claims["iss"] != self.issuer:
            raise TokenInvalid("wrong_issuer")
        audience = claims["aud"]
        if audience != self.audience and not (
            isinstance(audience, list) and self.audience in audience
        ):
            raise TokenInvalid("wrong_audience")
        for name in ("exp", "iat", "nbf"):
            if not isinstance(claims[name], int) or isinstance(claims[name], bool):
                raise TokenInvalid(f"malformed_{name}")
        if claims["exp"] + self.leeway < now:
            raise TokenInvalid("expired")
        if claims["nbf"] - self.leeway > now or claims["iat"] - self.leeway > now:
            raise TokenInvalid("not_yet_valid")
        if not isinstance(claims["client_id"], str) or not isinstance(claims["org"], str):
            raise TokenInvalid("malformed_subject")
        verified = TokenClaims(
            client_id=claims["client_id"],
            organisation=claims["org"],
            jti=str(claims["jti"]),
            expires_at=claims["exp"],
        )
        return verified, max(claims["nbf"], claims["iat"])


def _read_header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise TokenInvalid("malformed")
    try:
        padded = parts[0] + "=" * (-len(parts[0]) % 4)
        header = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError) as exc:
        raise TokenInvalid("malformed") from exc
    if not isinstance(header, dict):
        raise TokenInvalid("malformed")
    return header
