"""File URL tokens: opaque, authenticated, short-lived references to one file for one recipient.

A token is AES-256-GCM over ``{"f": file id, "r": recipient client id, "x": expiry}`` with a
random nonce, under a key derived from the platform's HMAC key for this purpose only. Nothing
in it can be read without the key (not the recipient, not the file, not the table), and any
changed byte fails authentication. The file id is random, so even the server learns the table
only from its own records.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# The default lifetime of a file URL (settings: TOGETHER_SHARING_URL_LIFETIME_SECONDS).
URL_LIFETIME_SECONDS = 5 * 60
_PURPOSE = b"together/sharing/file-url/v1"
_AAD = b"together-sharing-file-url"
_MAX_TOKEN_LENGTH = 400


class UrlRefused(Exception):
    """Raised with a short reason for the audit trail; the caller only ever sees 403."""

    def __init__(self, reason: str, grant: FileGrant | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.grant = grant


@dataclass(frozen=True)
class FileGrant:
    file_id: str
    recipient: str
    expires_at: int  # unix seconds


def derive_key(hmac_key: bytes) -> bytes:
    return hmac.new(hmac_key, _PURPOSE, hashlib.sha256).digest()


def seal(key: bytes, grant: FileGrant) -> str:
    payload = json.dumps(
        {"f": grant.file_id, "r": grant.recipient, "x": grant.expires_at}, separators=(",", ":")
    ).encode()
    nonce = secrets.token_bytes(12)
    sealed = nonce + AESGCM(key).encrypt(nonce, payload, _AAD)
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def open_token(key: bytes, token: str, now: int) -> FileGrant:
    """The grant in ``token``; ``UrlRefused`` when it is malformed, altered or expired."""
    if not token or len(token) > _MAX_TOKEN_LENGTH:
        raise UrlRefused("url_malformed")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise UrlRefused("url_malformed") from None
    # One spelling per token: base64 would otherwise ignore changed padding bits.
    if len(raw) < 12 + 16 or base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
        raise UrlRefused("url_malformed")
    try:
        payload = AESGCM(key).decrypt(raw[:12], raw[12:], _AAD)
    except InvalidTag:
        raise UrlRefused("url_tampered") from None
    document = json.loads(payload)
    grant = FileGrant(
        file_id=str(document["f"]), recipient=str(document["r"]), expires_at=int(document["x"])
    )
    if grant.expires_at < now:
        raise UrlRefused("url_expired", grant)
    return grant
