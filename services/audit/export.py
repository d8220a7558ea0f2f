"""Export the audit log as NDJSON, and verify an export offline.

An export is one JSON document per line:

1. a header: `{"type":"header","format":"together-audit-export/1","first_leaf":k,
   "tree_size":n,"compact_range":[...],"chain_hash":"...","keys":[...],...}`: the leaves
   [k, n) follow; `compact_range` (the RFC 6962 subtree roots covering leaves [0, k)) and
   `chain_hash` (the chain link of leaf k-1) let a partial export (`--since`) continue the tree
   and the chain; `keys` are the public keys the platform publishes;
2. one line per event, in leaf order: `{"type":"event","leaf":i,"chain":"<link hash>",
   "event":<canonical JSON>}`, where the bytes after `"event":` up to the final `}` are the
   event's canonical form byte for byte (what the leaf hash and the chain link cover);
3. each signed checkpoint of size s >= k right after the event of leaf s-1:
   `{"type":"checkpoint","body":{...},"signature":"<base64 Ed25519>"}`.

The verifier needs no database. It recomputes, for every event, the chain link (SHA-256 of
the previous link and the canonical bytes) and the Merkle leaf, and, at every checkpoint, the
Merkle root and the chain head, and checks the checkpoint's signature. A changed byte shows at
its leaf (the link no longer matches); a deleted or moved event shows at its leaf (the leaf
numbers break, or the link does when they were rewritten); a rewritten stretch that recomputes
every link still fails at the next signed checkpoint; a cut tail fails against the header, or,
when the operator truncated the log itself and signed afresh, against a checkpoint a partner
kept from before (`held`): the log cannot have shrunk, and a root of the same size must agree.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.audit import checkpoints as cp
from services.audit import merkle
from services.audit.canonical import is_canonical
from services.audit.models import AuditChainLink, AuditCheckpoint, AuditEvent

FORMAT = "together-audit-export/1"
EVENT_PREFIX = b'{"type":"event","leaf":'
_CHAIN_KEY = b',"chain":"'
_EVENT_KEY = b'","event":'
_BATCH = 5000


class ExportUnavailable(Exception):
    """Nothing can be exported yet (no checkpoint has been signed)."""


# ---------------------------------------------------------------------------------------------
# Export


@dataclass
class ExportSummary:
    first_leaf: int
    tree_size: int
    events: int
    checkpoints: int


def first_leaf_since(session: Session, since: datetime, size: int) -> int:
    leaf = session.execute(
        select(AuditChainLink.leaf_index)
        .join(AuditEvent, AuditEvent.seq == AuditChainLink.event_seq)
        .where(AuditEvent.occurred_at >= since, AuditChainLink.leaf_index < size)
        .order_by(AuditChainLink.leaf_index)
        .limit(1)
    ).scalar_one_or_none()
    return size if leaf is None else int(leaf)


def _line(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document) + b"\n"


def write_export(
    session: Session,
    out: IO[bytes],
    keys: list[cp.PublicKey],
    *,
    since: datetime | None = None,
    exported_at: datetime | None = None,
) -> ExportSummary:
    """Write every sealed event up to the latest checkpoint (from `since`, by event time)."""
    checkpoints = list(
        session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)).scalars()
    )
    if not checkpoints:
        raise ExportUnavailable("no signed checkpoint yet: run `together audit seal` first")
    size = checkpoints[-1].tree_size
    first = 0 if since is None else first_leaf_since(session, since, size)
    compact = cp.compact_range_at(session, first)
    covered = [c for c in checkpoints if c.tree_size >= first]
    before = [c for c in checkpoints if c.tree_size < first]
    header: dict[str, Any] = {
        "type": "header",
        "format": FORMAT,
        "log": cp.LOG_NAME,
        "first_leaf": first,
        "tree_size": size,
        "since": since.isoformat() if since else None,
        "exported_at": exported_at.isoformat() if exported_at else None,
        "compact_range": [h.hex() for h in compact.hashes],
        "chain_hash": cp.chain_head(session, first),
        "keys": [key.jwk() for key in keys],
        # The last checkpoint before the export's first leaf: the verifier expects the first
        # checkpoint inside to follow it (or to be checkpoint 0 when there is none).
        "anchor": cp.published(before[-1]) if before else None,
    }
    out.write(_line(header))
    pending = iter(covered)
    upcoming = next(pending, None)

    def flush_checkpoints(at_size: int) -> None:
        nonlocal upcoming
        while upcoming is not None and upcoming.tree_size == at_size:
            out.write(_line({"type": "checkpoint", **cp.published(upcoming)}))
            upcoming = next(pending, None)

    flush_checkpoints(first)
    position = first
    while position < size:
        rows = session.execute(
            select(AuditChainLink.leaf_index, AuditChainLink.hash, AuditEvent.canonical)
            .join(AuditEvent, AuditEvent.seq == AuditChainLink.event_seq)
            .where(AuditChainLink.leaf_index >= position, AuditChainLink.leaf_index < size)
            .order_by(AuditChainLink.leaf_index)
            .limit(_BATCH)
        ).all()
        if not rows:
            raise RuntimeError(f"audit leaf {position} is missing from the database")
        chunk = []
        for leaf, link, canonical in rows:
            chunk.append(
                b"%s%d%s%s%s%s}\n"
                % (
                    EVENT_PREFIX,
                    leaf,
                    _CHAIN_KEY,
                    link.encode("ascii"),
                    _EVENT_KEY,
                    canonical.encode("utf-8"),
                )
            )
            position = leaf + 1
            if upcoming is not None and upcoming.tree_size == position:
                out.write(b"".join(chunk))
                chunk = []
                flush_checkpoints(position)
        out.write(b"".join(chunk))
    return ExportSummary(first, size, size - first, len(covered))


# ---------------------------------------------------------------------------------------------
# Offline verification


@dataclass
class Failure:
    leaf: int | None  # the first bad leaf, when one can be named
    line: int | None
    message: str

    def __str__(self) -> str:
        where = [f"leaf {self.leaf}"] if self.leaf is not None else []
        if self.line is not None:
            where.append(f"line {self.line}")
        return f"{', '.join(where) or 'export'}: {self.message}"


@dataclass
class Verification:
    ok: bool
    first_leaf: int = 0
    events: int = 0
    checkpoints: int = 0
    held_checked: int = 0
    last_checkpoint: dict[str, Any] | None = None
    failure: Failure | None = None
    # Every verified checkpoint body by seq (the anchor's too): what a witness's cosignatures
    # are matched against (services/audit/witness.py).
    bodies: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class HeldCheckpoint:
    """A checkpoint the verifier trusts from elsewhere (a partner's copy of an earlier one)."""

    body: dict[str, Any]
    signature: str


def load_held(document: Any) -> list[HeldCheckpoint]:
    """Checkpoints from `GET /v1/audit/checkpoints` output, a list of them, or one."""
    if isinstance(document, dict) and "checkpoints" in document:
        document = document["checkpoints"]
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        raise ValueError("expected checkpoints")
    held = []
    for item in document:
        if not isinstance(item, dict) or not isinstance(item.get("body"), dict):
            raise ValueError("a checkpoint needs a body and a signature")
        held.append(HeldCheckpoint(item["body"], str(item.get("signature", ""))))
    return held


def keys_from_jwks(document: Any) -> dict[str, bytes]:
    """Public keys from a `keys` list (as published) or a JWK set."""
    items = document.get("keys", []) if isinstance(document, dict) else document
    keys: dict[str, bytes] = {}
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        raw_text = item.get("public_key") or item.get("x")
        if isinstance(raw_text, str):
            raw = cp.parse_public_key(raw_text)
            keys[cp.key_id(raw)] = raw
    return keys


class _Stop(Exception):
    def __init__(self, failure: Failure) -> None:
        self.failure = failure


def cadence_allowance(cadence_seconds: float) -> timedelta:
    """The longest silence between two checkpoints that still keeps a promised cadence: the
    sealer looks every few seconds, so a checkpoint may come a little after the cadence."""
    return timedelta(seconds=cadence_seconds * 1.1 + 10)


def verify_export(
    lines: Iterable[bytes],
    *,
    keys: dict[str, bytes] | None = None,
    held: list[HeldCheckpoint] | None = None,
    strict: bool = False,
    allow_gaps: bool = False,
) -> Verification:
    """Verify an export. `keys` (key id -> raw public key) are the trusted signing keys; without
    them the keys in the export's own header are used, which proves the export consistent but
    not who signed it (a note says so). `held`: checkpoints kept from before. `strict`: also
    check every event is exactly RFC 8785 canonical (slower: pure Python). A silence between
    two checkpoints longer than their signed cadence fails (checkpoints removed and the rest
    re-signed, or the platform down: the verifier cannot tell which); `allow_gaps` makes such
    silences notes instead, for a known outage."""
    result = Verification(ok=False)
    try:
        _verify(iter(lines), keys, held or [], strict, result, allow_gaps)
    except _Stop as stop:
        result.failure = stop.failure
        return result
    result.ok = True
    return result


def _verify(
    lines: Iterator[bytes],
    trusted: dict[str, bytes] | None,
    held: list[HeldCheckpoint],
    strict: bool,
    result: Verification,
    allow_gaps: bool = False,
) -> None:
    sha256 = hashlib.sha256
    loads = orjson.loads
    first_line = next(lines, b"")
    try:
        header = json.loads(first_line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("type") != "header":
        raise _Stop(Failure(None, 1, "the first line is not an export header"))
    if header.get("format") != FORMAT:
        raise _Stop(Failure(None, 1, f"unknown export format {header.get('format')!r}"))
    try:
        first = int(header["first_leaf"])
        declared_size = int(header["tree_size"])
        compact = merkle.CompactRange(first, [bytes.fromhex(h) for h in header["compact_range"]])
        chain = str(header["chain_hash"]).encode("ascii")
        header_keys = keys_from_jwks(header.get("keys", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise _Stop(Failure(None, 1, f"malformed header ({exc})")) from exc
    if trusted is None:
        keys = header_keys
        result.notes.append(
            "signatures checked against the keys inside the export; pass --key with the "
            "platform's published key to know who signed"
        )
    else:
        keys = trusted
    result.first_leaf = first

    # Held checkpoints: signatures first, then compared when the tree reaches their size.
    held_at: dict[int, list[HeldCheckpoint]] = {}
    for item in held:
        if not cp.verify_signature(item.body, item.signature, keys):
            raise _Stop(
                Failure(None, None, f"held checkpoint {item.body.get('seq')} has a bad signature")
            )
        size = int(item.body["tree_size"])
        if size < first:
            result.notes.append(
                f"held checkpoint {item.body.get('seq')} (size {size}) precedes this export"
            )
            continue
        held_at.setdefault(size, []).append(item)
    largest_held = max(held_at, default=-1)

    leaf = first
    hashes = compact.hashes
    size = first
    last_seq: int | None = None
    last_time: str | None = None
    anchor = header.get("anchor")
    if anchor is not None:
        if not isinstance(anchor, dict) or not isinstance(anchor.get("body"), dict):
            raise _Stop(Failure(None, 1, "malformed anchor checkpoint in the header"))
        anchor_body = anchor["body"]
        if not cp.verify_signature(anchor_body, str(anchor.get("signature", "")), keys):
            raise _Stop(Failure(None, 1, "the header's anchor checkpoint has a bad signature"))
        if not isinstance(anchor_body.get("tree_size"), int) or anchor_body["tree_size"] >= first:
            raise _Stop(Failure(None, 1, "the header's anchor checkpoint is not before the export"))
        last_seq = anchor_body.get("seq") if isinstance(anchor_body.get("seq"), int) else None
        last_time = str(anchor_body.get("issued_at"))
        if last_seq is not None:
            result.bodies[last_seq] = anchor_body
    verified_size = first  # leaves below this are covered by a verified checkpoint
    line_no = 1

    def check_held(at: int, line: int) -> None:
        root = merkle.CompactRange(at, hashes).root().hex()
        for item in held_at.pop(at, []):
            if item.body.get("root_hash") != root:
                raise _Stop(
                    Failure(
                        verified_size,
                        line,
                        f"the first {at} leaves differ from held checkpoint "
                        f"{item.body.get('seq')} (root mismatch: rewritten between leaf "
                        f"{verified_size} and leaf {at - 1})",
                    )
                )
            result.held_checked += 1

    if first in held_at:
        check_held(first, 1)
    for raw in lines:
        line_no += 1
        expected = b'{"type":"event","leaf":%d,"chain":"' % leaf
        if (
            raw.startswith(expected)
            and raw.endswith(b"}\n")
            and raw[(at := len(expected)) + 64 : at + 74] == _EVENT_KEY
        ):
            link = raw[at : at + 64]
            canonical = raw[at + 74 : -2]
        elif raw.startswith(EVENT_PREFIX):
            link, canonical = _diagnose_event(raw, leaf, line_no)
        else:
            link = b""
        if link:
            if sha256(chain + b"\n" + canonical).hexdigest().encode() != link:
                raise _Stop(
                    Failure(
                        leaf,
                        line_no,
                        "the event does not match its chain link (content changed, or an "
                        "event removed or reordered here)",
                    )
                )
            if strict and not is_canonical(canonical):
                raise _Stop(Failure(leaf, line_no, "the event is not in canonical form"))
            chain = link
            node = sha256(b"\x00" + canonical).digest()
            bits = size
            while bits & 1:
                node = sha256(b"\x01" + hashes.pop() + node).digest()
                bits >>= 1
            hashes.append(node)
            size += 1
            leaf += 1
            if size <= largest_held and size in held_at:
                check_held(size, line_no)
            continue
        try:
            document = loads(raw)
        except orjson.JSONDecodeError:
            raise _Stop(Failure(leaf, line_no, "unreadable line")) from None
        if not isinstance(document, dict) or document.get("type") != "checkpoint":
            raise _Stop(Failure(leaf, line_no, "unexpected line"))
        body = document.get("body")
        if not isinstance(body, dict):
            raise _Stop(Failure(leaf, line_no, "malformed checkpoint"))
        seq = body.get("seq")
        label = f"checkpoint {seq}"
        if not cp.verify_signature(body, str(document.get("signature", "")), keys):
            known = str(body.get("key_id")) in keys
            why = "bad signature" if known else f"signed by unknown key {body.get('key_id')}"
            raise _Stop(Failure(leaf, line_no, f"{label}: {why}"))
        if body.get("log") != cp.LOG_NAME:
            raise _Stop(Failure(leaf, line_no, f"{label}: another log ({body.get('log')!r})"))
        claimed = body.get("tree_size")
        if claimed != size:
            if isinstance(claimed, int) and claimed > size:
                message = f"{label} covers {claimed} leaves but only {size} precede it"
                raise _Stop(Failure(size, line_no, message + ": events are missing"))
            raise _Stop(
                Failure(
                    claimed if isinstance(claimed, int) else None,
                    line_no,
                    f"{label} (size {claimed}) is out of place after leaf {size - 1}",
                )
            )
        if last_seq is None and seq != 0:
            raise _Stop(
                Failure(
                    leaf,
                    line_no,
                    f"{label} is the first checkpoint of the log here, but the log's first "
                    f"checkpoint is 0: earlier checkpoints are missing",
                )
            )
        if last_seq is not None and seq != last_seq + 1:
            gap = isinstance(seq, int) and seq > last_seq
            why = "checkpoints are missing" if gap else "out of order"
            raise _Stop(Failure(leaf, line_no, f"{label} follows checkpoint {last_seq}: {why}"))
        issued = str(body.get("issued_at"))
        if last_time is not None and issued <= last_time:
            raise _Stop(Failure(leaf, line_no, f"{label} is not later than the one before"))
        silence = _silence(body, last_time)
        if silence is not None:
            if not allow_gaps:
                raise _Stop(Failure(leaf, line_no, f"{label}: {silence}"))
            result.notes.append(f"{label}: {silence}")
        root = merkle.CompactRange(size, hashes).root().hex()
        if body.get("root_hash") != root:
            raise _Stop(
                Failure(
                    verified_size,
                    line_no,
                    f"{label}: Merkle root differs: an event between leaf {verified_size} and "
                    f"leaf {size - 1} was changed, removed or reordered",
                )
            )
        if str(body.get("chain_hash")).encode() != chain:
            raise _Stop(
                Failure(verified_size, line_no, f"{label}: chain head differs from the events")
            )
        last_seq, last_time = seq if isinstance(seq, int) else None, issued
        verified_size = size
        result.checkpoints += 1
        result.last_checkpoint = body
        if isinstance(seq, int):
            result.bodies[seq] = body
    result.events = size - first
    if size != declared_size:
        raise _Stop(
            Failure(
                size,
                line_no,
                f"the export ends after leaf {size - 1} but its header declares {declared_size} "
                "leaves: the tail was cut",
            )
        )
    for at, items in sorted(held_at.items()):
        for item in items:
            raise _Stop(
                Failure(
                    size,
                    line_no,
                    f"held checkpoint {item.body.get('seq')} covers {at} leaves but the log "
                    f"ends after leaf {size - 1}: the log was truncated",
                )
            )
    if result.checkpoints == 0 or verified_size != size:
        raise _Stop(
            Failure(
                verified_size,
                line_no,
                f"leaves from {verified_size} on are not covered by a signed checkpoint",
            )
        )


def _silence(body: dict[str, Any], last_time: str | None) -> str | None:
    """What is wrong with the time since the previous checkpoint, when it exceeds the signed
    cadence of this one; None when it keeps it (or promises none)."""
    cadence = body.get("cadence_seconds")
    if last_time is None or not isinstance(cadence, int | float) or isinstance(cadence, bool):
        return None
    try:
        silence = datetime.fromisoformat(str(body.get("issued_at"))) - datetime.fromisoformat(
            last_time
        )
    except ValueError:
        return "unreadable issue time"
    if silence <= cadence_allowance(float(cadence)):
        return None
    return (
        f"no checkpoint for {silence.total_seconds():.0f} s before it (cadence {cadence:g} s): "
        "checkpoints are missing, or the platform was down"
    )


def _diagnose_event(raw: bytes, leaf: int, line_no: int) -> tuple[bytes, bytes]:
    """An event line off the fast path: the last line without a newline, or a fault."""
    start = len(EVENT_PREFIX)
    comma = raw.find(_CHAIN_KEY, start)
    try:
        number = int(raw[start:comma])
    except ValueError:
        number = -1
    if number != leaf and number >= 0:
        if number > leaf:
            what = f"found leaf {number}: leaf {leaf} is missing or moved"
        else:
            what = f"found leaf {number} again or out of order"
        raise _Stop(Failure(leaf, line_no, f"expected leaf {leaf} here, {what}"))
    end = len(raw) - 2 if raw.endswith(b"}\n") else len(raw) - 1
    if comma < 0 or number < 0 or raw[comma + 74 : comma + 84] != _EVENT_KEY or raw[end] != 125:
        raise _Stop(Failure(leaf, line_no, "malformed event line"))
    return raw[comma + 10 : comma + 74], raw[comma + 84 : end]


def verify_database(session: Session, signer: cp.CheckpointSigner) -> Verification:
    """Export the whole log to a temporary file and verify it with the published keys."""
    keys = signer.published_keys()
    with tempfile.TemporaryFile() as buffer:
        try:
            write_export(session, buffer, keys)
        except ExportUnavailable as exc:
            return Verification(ok=False, failure=Failure(None, None, str(exc)))
        buffer.seek(0)
        return verify_export(buffer, keys={key.key_id: key.raw for key in keys})
