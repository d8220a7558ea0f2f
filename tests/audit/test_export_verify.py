"""The offline verifier finds each kind of tampering, at the right leaf (security-tests T26)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from services.audit import chain as audit_chain
from services.audit import checkpoints, merkle
from services.audit.canonical import canonical_bytes
from services.audit.export import HeldCheckpoint, Verification, verify_export, write_export
from services.kit.clock import utcnow
from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.fixtures.cli import run_cli, run_cli_bytes

EVENTS = 30
EVENT = b'{"type":"event","leaf":'


def _events(api: TestClient, count: int) -> None:
    for _ in range(count):
        assert api.get("/v1/contracts", headers={"Authorization": "Bearer x"}).status_code == 401


def _seal_and_sign(platform: Platform) -> checkpoints.AuditCheckpoint:
    audit_chain.seal_all(platform.sessions)
    with platform.sessions() as session:
        written = checkpoints.write_checkpoint(session, platform.audit_signer)
        session.commit()
    assert written is not None
    return written


def _export(platform: Platform, **options: object) -> list[bytes]:
    out = io.BytesIO()
    with platform.sessions() as session:
        write_export(session, out, platform.audit_signer.published_keys(), **options)  # type: ignore[arg-type]
    return out.getvalue().splitlines(keepends=True)


def _keys(platform: Platform) -> dict[str, bytes]:
    return {key.key_id: key.raw for key in platform.audit_signer.published_keys()}


def _verify(platform: Platform, lines: list[bytes], **options: object) -> Verification:
    return verify_export(lines, keys=_keys(platform), **options)  # type: ignore[arg-type]


def _line_of(lines: list[bytes], leaf: int) -> int:
    prefix = b'{"type":"event","leaf":%d,' % leaf
    return next(i for i, line in enumerate(lines) if line.startswith(prefix))


@pytest.fixture
def log(api: TestClient, platform: Platform) -> list[bytes]:
    """30 events under three checkpoints (after 10, 20 and 30 events)."""
    for _ in range(3):
        _events(api, EVENTS // 3)
        _seal_and_sign(platform)
    lines = _export(platform)
    assert sum(line.startswith(b'{"type":"event"') for line in lines) == EVENTS
    return lines


def test_T26_untouched_export_verifies(platform: Platform, log: list[bytes]) -> None:
    result = _verify(platform, log, strict=True)
    assert result.ok, result.failure
    assert (result.events, result.checkpoints, result.first_leaf) == (EVENTS, 3, 0)
    assert result.last_checkpoint is not None
    assert result.last_checkpoint["tree_size"] == EVENTS


def test_export_carries_the_exact_canonical_bytes(platform: Platform, log: list[bytes]) -> None:
    with platform.sessions() as session:
        stored = session.execute(
            text(
                "SELECT e.canonical FROM audit_events e JOIN audit_chain c ON c.event_seq = e.seq "
                "WHERE c.leaf_index = 4"
            )
        ).scalar_one()
    line = log[_line_of(log, 4)]
    assert line.endswith(b',"event":' + stored.encode() + b"}\n")
    assert orjson.loads(line)["event"]["action"] == "authentication.failed"


def test_T26_a_changed_byte_is_found_at_its_leaf(platform: Platform, log: list[bytes]) -> None:
    lines = list(log)
    index = _line_of(lines, 7)
    lines[index] = lines[index].replace(b'"denied"', b'"denieD"')
    result = _verify(platform, lines)
    assert not result.ok and result.failure is not None
    assert result.failure.leaf == 7
    assert "chain link" in result.failure.message


def test_T26_a_rewritten_link_still_fails_at_the_next_checkpoint(
    platform: Platform, log: list[bytes]
) -> None:
    """The forger fixes every chain link after the change: the signed root does not follow."""
    lines = list(log)
    prefix_len = len(b'{"type":"event","leaf":')
    chain = None
    for i, line in enumerate(lines):
        if not line.startswith(b'{"type":"event"'):
            continue
        document = orjson.loads(line)
        leaf = document["leaf"]
        canonical = line[line.index(b',"event":') + 9 : -2]
        if leaf == 12:
            canonical = canonical.replace(b'"denied"', b'"success"')
        if leaf >= 12:
            chain = hashlib.sha256(chain + b"\n" + canonical).hexdigest().encode()  # type: ignore[operator]
            lines[i] = b'%s%d,"chain":"%s","event":%s}\n' % (
                line[:prefix_len],
                leaf,
                chain,
                canonical,
            )
        else:
            chain = document["chain"].encode()
    result = _verify(platform, lines)
    assert not result.ok and result.failure is not None
    # Leaves 10 to 19 lie between two signed checkpoints: the change is in that stretch.
    assert result.failure.leaf == 10
    assert "Merkle root differs" in result.failure.message
    assert "leaf 19" in result.failure.message


def test_T26_a_deleted_event_is_found_at_its_leaf(platform: Platform, log: list[bytes]) -> None:
    lines = list(log)
    del lines[_line_of(lines, 5)]
    result = _verify(platform, lines)
    assert result.failure is not None and result.failure.leaf == 5
    assert "leaf 5 is missing" in result.failure.message

    # Renumbered after the deletion: the chain link of the next event breaks at leaf 5.
    renumbered = []
    for line in lines:
        if line.startswith(EVENT):
            leaf = int(line[len(EVENT) : line.index(b",", len(EVENT))])
            if leaf > 5:
                line = b"%s%d%s" % (EVENT, leaf - 1, line[line.index(b",", len(EVENT)) :])
        renumbered.append(line)
    result = _verify(platform, renumbered)
    assert result.failure is not None and result.failure.leaf == 5
    assert "chain link" in result.failure.message


def test_T26_a_reordered_pair_is_found_at_the_first(platform: Platform, log: list[bytes]) -> None:
    lines = list(log)
    a, b = _line_of(lines, 3), _line_of(lines, 4)
    lines[a], lines[b] = lines[b], lines[a]
    result = _verify(platform, lines)
    assert result.failure is not None and result.failure.leaf == 3
    assert "expected leaf 3 here, found leaf 4" in result.failure.message

    # The events swapped but the leaf numbers and links left in place.
    swapped = list(log)
    head_a, head_b = (swapped[i][: swapped[i].index(b',"event":')] for i in (a, b))
    body_a, body_b = (swapped[i][swapped[i].index(b',"event":') :] for i in (a, b))
    swapped[a], swapped[b] = head_a + body_b, head_b + body_a
    result = _verify(platform, swapped)
    assert result.failure is not None and result.failure.leaf == 3


def test_T26_a_cut_tail_is_found(platform: Platform, log: list[bytes]) -> None:
    lines = log[: _line_of(log, 25)]
    result = _verify(platform, lines)
    assert result.failure is not None and result.failure.leaf == 25
    assert "tail was cut" in result.failure.message


def test_T26_truncation_resigned_by_the_operator_fails_against_a_held_checkpoint(
    api: TestClient,
    platform: Platform,
    log: list[bytes],
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
) -> None:
    """The operator deletes the last 8 events (and the checkpoint covering them) behind the
    triggers; the sealer signs the shorter log with the right key. The export verifies on its
    own, but not against the checkpoint a partner fetched before."""
    token = token_for(make_client(org="vru", roles=("l1_reader",)))
    published = api.get("/v1/audit/checkpoints", headers={"Authorization": f"Bearer {token}"})
    assert published.status_code == 200
    held = [HeldCheckpoint(c["body"], c["signature"]) for c in published.json()["checkpoints"]]
    assert [c.body["tree_size"] for c in held] == [10, 20, 30]

    _owner_truncate(platform, keep=22)
    _events(api, 12)  # life goes on: new events, a new checkpoint, signed with the right key
    _seal_and_sign(platform)
    lines = _export(platform)
    alone = _verify(platform, lines)
    assert alone.ok, alone.failure  # a consistent log: the truncation needs a witness
    result = _verify(platform, lines, held=held)
    assert result.failure is not None
    assert result.failure.leaf == 20  # leaves 0..19 still match checkpoint 1; 20..29 do not
    assert "held checkpoint 2" in result.failure.message

    # Without the new events the log simply ends before the held checkpoint's size.
    shorter = _export_until(platform, lines, 22)
    assert _verify(platform, shorter).ok
    result = _verify(platform, shorter, held=held)
    assert result.failure is not None and result.failure.leaf == 22
    assert "truncated" in result.failure.message


def _export_until(platform: Platform, lines: list[bytes], size: int) -> list[bytes]:
    """An export cut at `size` and signed afresh with the right key, as the operator's own
    sealer would after deleting the tail in the database."""
    events = [line for line in lines if line.startswith(EVENT)][:size]
    compact = merkle.CompactRange()
    for line in events:
        compact.append(merkle.leaf_hash(line[line.index(b',"event":') + 9 : -2]))
    body = checkpoints.checkpoint_body(
        seq=2,
        tree_size=size,
        root=compact.root(),
        chain_hash=orjson.loads(events[-1])["chain"],
        issued_at=utcnow(),
        kid=platform.audit_signer.key_id,
    )
    signature = base64.b64encode(platform.audit_signer.sign(canonical_bytes(body))).decode()
    header = orjson.loads(lines[0])
    header["tree_size"] = size
    checkpoint = {"type": "checkpoint", "body": body, "signature": signature}
    # The events and the checkpoints before the cut stay (checkpoints 0 and 1 at 10 and 20).
    kept = lines[1 : _line_of(lines, size - 1) + 1]
    return [orjson.dumps(header) + b"\n", *kept, orjson.dumps(checkpoint) + b"\n"]


def _owner_truncate(platform: Platform, keep: int) -> None:
    sqlite = platform.engine.dialect.name == "sqlite"
    tables = ("audit_checkpoints", "audit_chain", "audit_subjects", "audit_events")
    with platform.engine.begin() as connection:
        for table in tables:
            if sqlite:
                connection.execute(text(f"DROP TRIGGER {table}_no_delete"))
            else:
                connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {table}_no_change"))
        connection.execute(text("DELETE FROM audit_checkpoints WHERE tree_size > :k"), {"k": keep})
        seqs = list(
            connection.execute(
                text("SELECT event_seq FROM audit_chain WHERE leaf_index >= :k"), {"k": keep}
            ).scalars()
        )
        connection.execute(text("DELETE FROM audit_chain WHERE leaf_index >= :k"), {"k": keep})
        for seq in seqs:
            connection.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": seq})


def test_a_partial_export_verifies_and_still_finds_tampering(
    api: TestClient, platform: Platform, log: list[bytes]
) -> None:
    since = utcnow()
    _events(api, 7)
    _seal_and_sign(platform)
    lines = _export(platform, since=since)
    header = orjson.loads(lines[0])
    assert header["first_leaf"] == EVENTS and header["tree_size"] == EVENTS + 7
    assert len(header["compact_range"]) == bin(EVENTS).count("1")
    result = _verify(platform, lines)
    assert result.ok, result.failure
    # The checkpoint at size 30 anchors the compact range; the one at 37 the new events.
    assert (result.first_leaf, result.events, result.checkpoints) == (EVENTS, 7, 2)

    # A forged prefix (the compact range of the leaves before) cannot pass either.
    forged = dict(header, compact_range=[("0" * 64)] * len(header["compact_range"]))
    result = _verify(platform, [orjson.dumps(forged) + b"\n", *lines[1:]])
    assert result.failure is not None and "Merkle root differs" in result.failure.message

    tampered = list(lines)
    index = _line_of(tampered, EVENTS + 2)
    tampered[index] = tampered[index].replace(b"authentication.failed", b"authentication.faileD")
    result = _verify(platform, tampered)
    assert result.failure is not None and result.failure.leaf == EVENTS + 2

    # Nothing since a moment in the future: no events, still anchored by the last checkpoint.
    empty = _export(platform, since=utcnow() + timedelta(days=1))
    assert _verify(platform, empty).ok


def test_a_wrong_key_fails(platform: Platform, log: list[bytes], tmp_path: Path) -> None:
    other = checkpoints.write_signing_key(tmp_path / "other.pem")
    result = verify_export(log, keys={other.key_id: other.public.raw})
    assert result.failure is not None
    assert "unknown key" in result.failure.message
    # The right key id with the wrong key material: the signature itself fails.
    result = verify_export(log, keys={platform.audit_signer.key_id: other.public.raw})
    assert result.failure is not None and "bad signature" in result.failure.message


def test_T28_a_deleted_checkpoint_is_found(platform: Platform, log: list[bytes]) -> None:
    lines = [line for line in log if b'"seq":1,' not in line or b'"type":"checkpoint"' not in line]
    assert len(lines) == len(log) - 1
    result = _verify(platform, lines)
    assert result.failure is not None and "checkpoints are missing" in result.failure.message


def test_T26_changed_stored_event_shows_in_the_export(api: TestClient, platform: Platform) -> None:
    """A DBA edits a stored event behind the triggers; the next export shows the leaf."""
    _events(api, 12)
    _seal_and_sign(platform)
    with platform.engine.begin() as connection:
        if platform.engine.dialect.name == "sqlite":
            connection.execute(text("DROP TRIGGER audit_events_no_update"))
        else:
            connection.execute(
                text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change")
            )
        connection.execute(
            text(
                "UPDATE audit_events SET canonical = replace(canonical, 'denied', 'success') "
                "WHERE seq = (SELECT event_seq FROM audit_chain WHERE leaf_index = 9)"
            )
        )
    result = _verify(platform, _export(platform))
    assert result.failure is not None and result.failure.leaf == 9


def test_T26_cli_export_and_verify(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
    tmp_path: Path,
) -> None:
    """The IG lead's path: fetch the published keys and checkpoints, export, verify offline."""
    _events(api, 5)
    export = tmp_path / "audit.ndjson"
    done = run_cli_bytes(platform.settings, "audit", "export")
    export.write_bytes(done.stdout)
    assert done.returncode == 0, done.stderr
    assert b"exported" in done.stderr

    token = token_for(make_client(org="vru", roles=("ig_lead",)))
    published = api.get("/v1/audit/checkpoints", headers={"Authorization": f"Bearer {token}"})
    saved = tmp_path / "checkpoints.json"
    saved.write_text(published.text)

    def verify(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(platform.settings, "audit", "verify", *args)

    ok = verify(str(export), "--key", str(saved), "--checkpoints", str(saved))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK:")
    raw_key = published.json()["keys"][0]["public_key"]
    assert verify(str(export), "--key", raw_key).returncode == 0

    lines = export.read_bytes().splitlines(keepends=True)
    index = _line_of(lines, 3)
    lines[index] = lines[index].replace(b"authentication.failed", b"authentication.fa1led")
    tampered = tmp_path / "tampered.ndjson"
    tampered.write_bytes(b"".join(lines))
    bad = verify(str(tampered), "--key", raw_key)
    assert bad.returncode == 1
    assert "FAILED at leaf 3" in bad.stdout

    other = base64.b64encode(checkpoints.write_signing_key(tmp_path / "o.pem").public.raw)
    assert verify(str(export), "--key", other.decode()).returncode == 1
    assert verify(str(tmp_path / "missing.ndjson")).returncode == 2
    # The export is itself audited.
    with platform.sessions() as session:
        exported = session.execute(
            text("SELECT count(*) FROM audit_events WHERE action = 'audit.exported'")
        ).scalar_one()
    assert exported == 1
    assert json.loads(saved.read_text())["checkpoints"]
