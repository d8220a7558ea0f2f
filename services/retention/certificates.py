"""Deletion certificates: what a deletion removed, signed with the audit checkpoint key.

A certificate is a JSON body in RFC 8785 canonical form and an Ed25519 signature over it, by the
key that signs the audit log's checkpoints (its public key is published at
`/v1/audit/checkpoints` and can be pinned). Its `type` keeps it from being read as a checkpoint
(a checkpoint body has none), and its audit sequence numbers tie it to the run's events in the
signed, verifiable audit log. `together deletions verify` checks one offline.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from services.audit.canonical import canonical_bytes, canonical_json
from services.audit.checkpoints import CheckpointSigner, verify_signature

CERTIFICATE_TYPE = "together.deletion-certificate/v1"

# What every certificate states, whatever the deletion's kind.
REQUIRED_FIELDS = (
    "type",
    "certificate_id",
    "kind",
    "dataset",
    "owner",
    "rows_removed",
    "versions_deleted",
    "files_deleted",
    "audit_seq_start",
    "audit_seq_end",
    "certified_at",
    "key_id",
)


def sign(body: dict[str, Any], signer: CheckpointSigner) -> tuple[str, str]:
    """The body's canonical text and its signature (base64); sets `type` and `key_id`."""
    body["type"] = CERTIFICATE_TYPE
    body["key_id"] = signer.key_id
    signature = base64.b64encode(signer.sign(canonical_bytes(body))).decode()
    return canonical_json(body), signature


def published(body: str, signature: str) -> dict[str, Any]:
    """A certificate as served and saved: the signed body and its signature."""
    return {"certificate": json.loads(body), "signature": signature}


def verify(document: Any, keys: dict[str, bytes]) -> list[str]:
    """What is wrong with a saved certificate (empty when it is intact and signed by a trusted
    key). Needs nothing but the document and the published keys."""
    if not isinstance(document, dict):
        return ["not a certificate: expected an object with `certificate` and `signature`"]
    body, signature = document.get("certificate"), document.get("signature")
    if not isinstance(body, dict) or not isinstance(signature, str):
        return ["not a certificate: expected an object with `certificate` and `signature`"]
    problems: list[str] = []
    if body.get("type") != CERTIFICATE_TYPE:
        problems.append(f"not a deletion certificate (type {body.get('type')!r})")
    missing = [name for name in REQUIRED_FIELDS if name not in body]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if str(body.get("key_id")) not in keys:
        problems.append(f"signed by key {body.get('key_id')!r}, which is not among the given keys")
    elif not verify_signature(body, signature, keys):
        problems.append("the signature does not match the certificate: it was altered")
    return problems
