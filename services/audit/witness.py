"""An independent witness of the audit log's checkpoints (security-tests T27).

The platform signs its checkpoints with a key the server process holds, so whoever controls the
server could sign a second history: a log with events removed, re-signed with the right key. A
witness closes that door. It runs elsewhere (a partner's machine: `together audit witness`),
with its own Ed25519 key and its own state in a folder the server never reads, and it cosigns a
checkpoint only if

- the platform's key (as the witness was told it, not as the log claims) signed it;
- it is consistent with the last checkpoint the witness cosigned: the same root at the same
  size, or a larger tree whose RFC 6962 consistency proof shows the old one is its prefix;
- it is not a second, different checkpoint for a sequence number or a tree size already seen
  (equivocation), nor a smaller tree (a rollback).

Partners then accept a checkpoint only with the witness's cosignature (`together audit verify
--witness-key ... --cosignatures ...`); an operator who forks the log can no longer get one.
The state is one JSON file, replaced atomically after each cosignature; cosignatures are also
appended to `cosignatures.ndjson` in the folder, which is what partners are given.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from services.audit import merkle
from services.audit.canonical import canonical_bytes
from services.audit.checkpoints import LOG_NAME, key_id, public_raw, verify_signature
from services.kit.clock import utcnow
from services.kit.files import write_secret

# What a cosignature signs: this prefix, then the checkpoint body's canonical bytes. The prefix
# keeps a cosignature from ever being mistaken for the log's own signature.
COSIGNATURE_CONTEXT = b"together-witness-cosignature/1\n"
_KEY = "witness-key.pem"
_STATE = "state.json"
_COSIGNATURES = "cosignatures.ndjson"


class WitnessRefused(Exception):
    """The witness will not cosign this checkpoint; the message says why."""


def body_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


@dataclass(frozen=True)
class WitnessPublic:
    name: str
    key_id: str
    raw: bytes

    def document(self) -> dict[str, str]:
        return {
            "witness": self.name,
            "key_id": self.key_id,
            "public_key": base64.b64encode(self.raw).decode(),
        }


class Witness:
    """A witness's key and state, in its own folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            pem = (folder / _KEY).read_bytes()
            state: dict[str, Any] = json.loads((folder / _STATE).read_text())
        except (OSError, ValueError) as exc:
            raise WitnessRefused(
                f"no witness in {folder} (`together audit witness init` makes one)"
            ) from exc
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise WitnessRefused("the witness key is not an Ed25519 key")
        self._private = key
        self._state = state
        raw = public_raw(key.public_key())
        self.public = WitnessPublic(str(state["name"]), key_id(raw), raw)

    @staticmethod
    def create(folder: Path, name: str) -> Witness:
        """A new witness: a key (mode 0600) and an empty state. Refuses an existing one."""
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / _STATE).exists():
            raise FileExistsError(folder / _STATE)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_secret(folder / _KEY, pem)
        _write_state(folder, {"name": name, "log": LOG_NAME, "last": None, "seen": {}})
        return Witness(folder)

    @property
    def last(self) -> dict[str, Any] | None:
        """The body of the last checkpoint cosigned."""
        last: dict[str, Any] | None = self._state.get("last")
        return last

    def cosign(
        self,
        checkpoint: dict[str, Any],
        log_keys: dict[str, bytes],
        proof: Sequence[bytes] | None = None,
    ) -> dict[str, Any]:
        """Cosign `checkpoint` ({"body", "signature"}) or raise `WitnessRefused`."""
        body = checkpoint.get("body")
        if not isinstance(body, dict):
            raise WitnessRefused("not a checkpoint (no body)")
        if not verify_signature(body, str(checkpoint.get("signature", "")), log_keys):
            raise WitnessRefused(
                f"checkpoint {body.get('seq')} is not signed by a key of the log the witness trusts"
            )
        if body.get("log") != self._state["log"]:
            raise WitnessRefused(f"checkpoint of another log ({body.get('log')!r})")
        seq, size, root = body.get("seq"), body.get("tree_size"), body.get("root_hash")
        if not isinstance(seq, int) or not isinstance(size, int) or not isinstance(root, str):
            raise WitnessRefused("malformed checkpoint body")
        digest = body_digest(body)
        seen: dict[str, str] = self._state.setdefault("seen", {})
        if seen.get(str(seq), digest) != digest:
            raise WitnessRefused(
                f"equivocation: the witness already cosigned a different checkpoint {seq}"
            )
        last = self.last
        if last is not None and seen.get(str(seq)) != digest:
            self._check_consistent(last, seq, size, root, proof)
        signature = self._private.sign(COSIGNATURE_CONTEXT + canonical_bytes(body))
        cosignature = {
            "type": "cosignature",
            "witness": self.public.name,
            "key_id": self.public.key_id,
            "seq": seq,
            "tree_size": size,
            "body_sha256": digest,
            "cosigned_at": utcnow().isoformat(timespec="seconds"),
            "signature": base64.b64encode(signature).decode(),
        }
        if seen.get(str(seq)) != digest:
            seen[str(seq)] = digest
            if last is None or seq > int(last["seq"]):
                self._state["last"] = body
            _write_state(self.folder, self._state)
            with (self.folder / _COSIGNATURES).open("ab") as out:
                out.write(json.dumps(cosignature, sort_keys=True).encode() + b"\n")
        return cosignature

    def _check_consistent(
        self,
        last: dict[str, Any],
        seq: int,
        size: int,
        root: str,
        proof: Sequence[bytes] | None,
    ) -> None:
        last_seq, last_size, last_root = int(last["seq"]), int(last["tree_size"]), last["root_hash"]
        if seq <= last_seq:
            raise WitnessRefused(
                f"checkpoint {seq} is not after checkpoint {last_seq}, the last one cosigned"
            )
        if size < last_size:
            raise WitnessRefused(
                f"rollback: checkpoint {seq} has {size} leaves, fewer than the {last_size} of "
                f"checkpoint {last_seq} already cosigned"
            )
        if size == last_size:
            if root != last_root:
                raise WitnessRefused(
                    f"equivocation: checkpoint {seq} states another root for the {size} "
                    f"leaves of checkpoint {last_seq}"
                )
            return
        if last_size == 0:
            return  # the empty tree is a prefix of every tree
        if proof is None:
            raise WitnessRefused(
                f"a consistency proof from {last_size} to {size} leaves is needed "
                "(GET /v1/audit/checkpoints/consistency)"
            )
        if not merkle.verify_consistency(
            last_size, size, proof, bytes.fromhex(last_root), bytes.fromhex(root)
        ):
            raise WitnessRefused(
                f"checkpoint {seq} is not consistent with checkpoint {last_seq}: the first "
                f"{last_size} leaves were changed (the consistency proof fails)"
            )


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically: a crash leaves the old state or the new, never half."""
    temporary = folder / (_STATE + ".tmp")
    with temporary.open("w") as out:
        json.dump(state, out, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, folder / _STATE)


def verify_cosignature(body: dict[str, Any], cosignature: dict[str, Any], raw: bytes) -> bool:
    """Whether `cosignature` is the witness key `raw`'s signature of exactly this body."""
    try:
        signature = base64.b64decode(str(cosignature.get("signature", "")), validate=True)
        Ed25519PublicKey.from_public_bytes(raw).verify(
            signature, COSIGNATURE_CONTEXT + canonical_bytes(body)
        )
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def check_cosignatures(
    bodies: dict[int, dict[str, Any]],
    cosignatures: list[dict[str, Any]],
    witness_keys: dict[str, bytes],
) -> tuple[int, str | None]:
    """Match a witness's cosignatures to the checkpoints of a verified export (`bodies` by
    seq): how many are cosigned, and the first problem. A cosignature of a checkpoint the export
    states differently is a fork shown to the witness: the export is not the witnessed log."""
    matched = 0
    for item in cosignatures:
        raw = witness_keys.get(str(item.get("key_id")))
        if raw is None:
            continue
        seq = item.get("seq")
        body = bodies.get(seq) if isinstance(seq, int) else None
        if body is None:
            continue
        if item.get("body_sha256") != body_digest(body) or not verify_cosignature(body, item, raw):
            return matched, (
                f"checkpoint {seq} differs from the one the witness {item.get('witness')!r} "
                "cosigned: the log was forked"
            )
        matched += 1
    if matched == 0:
        return 0, "no checkpoint of the export is cosigned by the witness"
    return matched, None
