"""Signed checkpoints of the audit log, and the key that signs them.

A checkpoint states the log's size (leaves sealed), the RFC 6962 Merkle root over those leaves,
the hash chain's head and the time, signed with Ed25519. The signing key lives outside the
database (a PEM file or a secret-store variable; generated in development, required elsewhere),
so the application's database user, or anyone who can only write the database, cannot make a
checkpoint. The public keys, current and retired, are published with the checkpoints.

The sealer writes a checkpoint whenever the last one is `audit_checkpoint_interval_seconds`
old, whether or not anything happened (a partner seeing none for longer knows something is
wrong), and `together audit seal` writes one at once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from services.audit import merkle
from services.audit import service as audit_service
from services.audit.canonical import canonical_bytes, canonical_json
from services.audit.catalogue import AuditAction, Outcome
from services.audit.chain import CHAIN_LOCK_ID, CHAIN_LOCK_SQL, GENESIS_HASH
from services.audit.models import AuditChainLink, AuditCheckpoint, AuditEvent
from services.audit.service import AuditRecord, RequestContext
from services.kit.clock import utcnow
from services.kit.errors import BadRequest, ConfigurationError
from services.kit.files import write_secret
from services.kit.settings import Settings
from services.kit.uow import audited

LOG_NAME = "together-audit"
_BATCH = 5000


def key_id(public_raw: bytes) -> str:
    """The first 16 hex digits of SHA-256 of the raw public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def public_raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    raw: bytes
    status: str  # "current" or "retired"

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(self.raw).rstrip(b"=").decode(),
            "kid": self.key_id,
            "alg": "EdDSA",
            "use": "sig",
            "status": self.status,
            "public_key": base64.b64encode(self.raw).decode(),
        }


class CheckpointSigner:
    def __init__(self, private: Ed25519PrivateKey, retired: list[bytes] | None = None) -> None:
        self._private = private
        self.public = PublicKey(
            key_id(public_raw(private.public_key())), public_raw(private.public_key()), "current"
        )
        self.retired = [PublicKey(key_id(raw), raw, "retired") for raw in retired or []]

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def published_keys(self) -> list[PublicKey]:
        return [self.public, *self.retired]

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


def generate_private_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_signing_key(path: Path) -> CheckpointSigner:
    """Write a new signing key (PEM, mode 0600); refuses to overwrite an existing file."""
    pem = generate_private_pem()
    write_secret(path, pem)
    return CheckpointSigner(_private_from_pem(pem, path.name))


def _private_from_pem(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"the audit signing key ({where}) is not a PEM key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"the audit signing key ({where}) is not an Ed25519 key")
    return key


def parse_public_key(value: str) -> bytes:
    """A raw Ed25519 public key from base64 (standard or URL-safe) or a PEM public key."""
    value = value.strip()
    if value.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(value.encode())
        except ValueError as exc:
            raise ValueError("not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return public_raw(key)
    padded = value + "=" * (-len(value) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except ValueError as exc:
        raise ValueError("not base64") from exc
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this is {len(raw)}")
    return raw


def load_signer(settings: Settings) -> CheckpointSigner:
    pem: bytes | None = None
    where = "TOGETHER_AUDIT_SIGNING_KEY"
    if settings.audit_signing_key:
        pem = settings.audit_signing_key.get_secret_value().encode()
    else:
        path = settings.audit_key_file
        if path is None and settings.is_development:
            path = settings.data_dir / "keys" / "audit-signing-key.pem"
            if not path.exists():
                # Another process may create it first: then read theirs.
                with contextlib.suppress(FileExistsError):
                    write_signing_key(path)
        if path is not None:
            where = path.name
            try:
                pem = path.read_bytes()
            except OSError as exc:
                raise ConfigurationError(f"cannot read audit key file {path.name}") from exc
    if pem is None:
        raise ConfigurationError(
            "missing the audit checkpoint signing key (set TOGETHER_AUDIT_KEY_FILE or "
            "TOGETHER_AUDIT_SIGNING_KEY; `together audit keygen PATH` makes one)"
        )
    retired = []
    for item in (settings.audit_retired_public_keys or "").split(","):
        if item.strip():
            try:
                retired.append(parse_public_key(item))
            except ValueError as exc:
                raise ConfigurationError(f"TOGETHER_AUDIT_RETIRED_PUBLIC_KEYS: {exc}") from exc
    return CheckpointSigner(_private_from_pem(pem, where), retired)


# ---------------------------------------------------------------------------------------------
# Signed statements


def checkpoint_body(
    *,
    seq: int,
    tree_size: int,
    root: bytes,
    chain_hash: str,
    issued_at: datetime,
    kid: str,
    cadence_seconds: float | None = None,
) -> dict[str, Any]:
    """The signed statement. `cadence_seconds`, when given, is the most seconds the signer
    promises between two checkpoints: signed, so a verifier can name a silence longer than it
    (the platform was down, or checkpoints were removed and the rest renumbered and re-signed)."""
    body: dict[str, Any] = {
        "log": LOG_NAME,
        "seq": seq,
        "tree_size": tree_size,
        "root_hash": root.hex(),
        "chain_hash": chain_hash,
        "issued_at": issued_at.isoformat(timespec="microseconds"),
        "key_id": kid,
    }
    if cadence_seconds is not None:
        body["cadence_seconds"] = cadence_seconds
    return body


def verify_signature(body: dict[str, Any], signature_b64: str, keys: dict[str, bytes]) -> bool:
    """Whether `signature_b64` is a valid signature of the body's canonical form by its key."""
    raw = keys.get(str(body.get("key_id")))
    if raw is None:
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, canonical_bytes(body))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def published(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    """A checkpoint as published and exported: the signed body and its signature."""
    return {"body": _loads(checkpoint.body), "signature": checkpoint.signature}


def _loads(body: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(body)
    return document


# ---------------------------------------------------------------------------------------------
# Writing checkpoints


def leaf_hashes(session: Session, start: int, stop: int) -> Any:
    """Leaf hashes for leaves [start, stop), in order, read in batches."""
    position = start
    while position < stop:
        rows = session.execute(
            select(AuditChainLink.leaf_index, AuditEvent.canonical)
            .join(AuditEvent, AuditEvent.seq == AuditChainLink.event_seq)
            .where(AuditChainLink.leaf_index >= position, AuditChainLink.leaf_index < stop)
            .order_by(AuditChainLink.leaf_index)
            .limit(_BATCH)
        ).all()
        if not rows:
            raise RuntimeError(f"audit leaf {position} is missing")
        for leaf, canonical in rows:
            if leaf != position:
                raise RuntimeError(f"audit leaf {position} is missing")
            yield merkle.leaf_hash(canonical.encode("utf-8"))
            position += 1


def compact_range_at(session: Session, size: int) -> merkle.CompactRange:
    """The tree's compact range at `size`, from the nearest checkpoint at or below it."""
    base = session.execute(
        select(AuditCheckpoint.tree_size, AuditCheckpoint.frontier)
        .where(AuditCheckpoint.tree_size <= size)
        .order_by(AuditCheckpoint.tree_size.desc(), AuditCheckpoint.seq.desc())
        .limit(1)
    ).one_or_none()
    if base is None:
        compact = merkle.CompactRange()
    else:
        compact = merkle.CompactRange(base.tree_size, [bytes.fromhex(h) for h in base.frontier])
    compact.extend(leaf_hashes(session, compact.size, size))
    return compact


def chain_head(session: Session, size: int) -> str:
    if size == 0:
        return GENESIS_HASH
    value: str = session.execute(
        select(AuditChainLink.hash).where(AuditChainLink.leaf_index == size - 1)
    ).scalar_one()
    return value


def latest(session: Session) -> AuditCheckpoint | None:
    return session.execute(
        select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)
    ).scalar_one_or_none()


def write_checkpoint(
    session: Session,
    signer: CheckpointSigner,
    *,
    interval_seconds: float | None = None,
    cadence_seconds: float | None = None,
) -> AuditCheckpoint | None:
    """Sign the sealed log's state, if the last checkpoint is older than the interval (or
    always, when no interval is given). `cadence_seconds` (the configured interval) is signed
    into the body. The caller commits."""
    if session.get_bind().dialect.name == "postgresql":
        locked = session.execute(text(CHAIN_LOCK_SQL), {"k": CHAIN_LOCK_ID}).scalar_one()
        if not locked:
            return None
    last = latest(session)
    now = utcnow()
    if (
        interval_seconds is not None
        and last is not None
        and now - last.issued_at < timedelta(seconds=interval_seconds)
    ):
        return None
    size = session.execute(select(func.count()).select_from(AuditChainLink)).scalar_one()
    compact = compact_range_at(session, size)
    seq = 0 if last is None else last.seq + 1
    if last is not None and now <= last.issued_at:
        now = last.issued_at + timedelta(microseconds=1)  # issued times strictly increase
    body = checkpoint_body(
        seq=seq,
        tree_size=size,
        root=compact.root(),
        chain_hash=chain_head(session, size),
        issued_at=now,
        kid=signer.key_id,
        cadence_seconds=cadence_seconds if cadence_seconds is not None else interval_seconds,
    )
    signature = base64.b64encode(signer.sign(canonical_bytes(body))).decode()
    row = {
        "seq": seq,
        "tree_size": size,
        "root_hash": body["root_hash"],
        "chain_hash": body["chain_hash"],
        "issued_at": now,
        "key_id": signer.key_id,
        "body": canonical_json(body),
        "signature": signature,
        "frontier": [h.hex() for h in compact.hashes],
    }
    session.execute(insert(AuditCheckpoint), [row])
    return session.get(AuditCheckpoint, seq)


def listing(session: Session, *, after: int | None, limit: int) -> list[AuditCheckpoint]:
    statement = select(AuditCheckpoint).order_by(AuditCheckpoint.seq).limit(limit)
    if after is not None:
        statement = statement.where(AuditCheckpoint.seq > after)
    return list(session.execute(statement).scalars())


def read_published(
    sessions: sessionmaker[Session],
    ctx: RequestContext,
    signer: CheckpointSigner,
    *,
    after: int | None,
    limit: int,
) -> dict[str, Any]:
    """The checkpoints and public keys as published, the read itself audited first."""
    with audited(sessions, "the checkpoint listing") as uow:
        rows = listing(uow.session, after=after, limit=limit)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.AUDIT_CHECKPOINTS_LISTED,
                    outcome=Outcome.SUCCESS,
                    resource_type="audit_checkpoints",
                    parameters={"after": after, "limit": limit},
                    rows=len(rows),
                ),
            )
        )
    return {
        "log": LOG_NAME,
        "keys": [key.jwk() for key in signer.published_keys()],
        "checkpoints": [published(row) for row in rows],
        "next_after": rows[-1].seq if len(rows) == limit else None,
    }


def consistency(session: Session, old_size: int, new_size: int) -> list[bytes]:
    """The RFC 6962 consistency proof that the tree of `old_size` leaves is a prefix of the
    tree of `new_size` (both at most the sealed size), from the stored leaves."""
    sealed = session.execute(select(func.count()).select_from(AuditChainLink)).scalar_one()
    if not 0 < old_size <= new_size <= sealed:
        raise BadRequest(
            f"sizes must satisfy 0 < from_size <= to_size <= {sealed} (the sealed leaves)"
        )
    return merkle.consistency_proof(list(leaf_hashes(session, 0, new_size)), old_size)


def read_consistency(
    sessions: sessionmaker[Session], ctx: RequestContext, old_size: int, new_size: int
) -> dict[str, Any]:
    """A consistency proof as published (for a witness or a partner's verifier), the read
    itself audited first."""
    with audited(sessions, "the consistency proof") as uow:
        proof = consistency(uow.session, old_size, new_size)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.AUDIT_CONSISTENCY_PROVED,
                    outcome=Outcome.SUCCESS,
                    resource_type="audit_checkpoints",
                    parameters={"from_size": old_size, "to_size": new_size},
                ),
            )
        )
    return {
        "log": LOG_NAME,
        "from_size": old_size,
        "to_size": new_size,
        "proof": [node.hex() for node in proof],
    }
