"""The audit trail under attack and faults (security-tests T25, T26, T28, T36, T45).

No audit, no data: a Level 2 or 3 read whose event cannot be written, or that arrives while the
sealer is stalled beyond the policy window, answers 503 with no rows; readiness says why. The
offline verifier finds a missing first checkpoint and a silence between checkpoints. The app
refuses a database at another schema revision. Person ids never travel in URLs.
"""

from __future__ import annotations

import base64
import io
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from gateway.app import create_app
from services.audit import chain as audit_chain
from services.audit import checkpoints as audit_checkpoints
from services.audit import merkle
from services.audit.canonical import canonical_bytes
from services.audit.export import FORMAT, verify_export, write_export
from services.audit.models import AuditEvent
from services.demo.generate import write_dataset_csv
from services.kit.clock import utcnow
from services.kit.errors import ConfigurationError
from services.kit.migrate import current_heads
from services.platform import Platform, build_platform
from tests.fixtures.audit_events import refuse_audit_inserts
from tests.fixtures.snapshots import Loading, Snapshot, Snapshots, starting_from
from tests.ingestion.helpers import police_rows, to_csv

_AUDIT_L1 = ("/v1/products/sv-counts", {"from": "2023-01-01", "to": "2024-01-01", "by": "csp"})
_AUDIT_L2 = ("/v1/products/hotspots", {"from": "2023-01-01", "to": "2024-01-01"})
_AUDIT_L3 = ("/v1/products/repeat-suspects", {"as_of": "2024-01-01"})
_AUDIT_JUSTIFIED = {"X-Purpose": "high-intensity-programme", "X-Case-Reference": "HIP-2024/0042"}


def _audit_load(loading: Loading) -> dict[str, str]:
    """Police, population and IMD data through the API; a token per reading role."""
    api, make_client, token_for = loading.api, loading.make_client, loading.token_for
    police = token_for(make_client())
    uploads = [("police.occurrences", police, to_csv(police_rows(600, seed=17)))]
    vru = token_for(make_client(org="vru"))
    for dataset in ("reference.population", "la.imd"):
        path = loading.folder / f"{dataset}.csv"
        write_dataset_csv(dataset, path)
        uploads.append((dataset, vru, path.read_bytes()))
    for dataset, token, body in uploads:
        response = api.post(
            f"/v1/datasets/{dataset}/uploads",
            params={"mode": "replace"},
            content=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "text/csv",
                "Idempotency-Key": str(uuid.uuid4()),
            },
        )
        assert response.status_code == 201, response.text
    areas = ("Southampton", "Portsmouth")
    return {
        "l1": token_for(make_client(org="vru", roles=("l1_reader",))),
        "l2": token_for(make_client(org="vru", roles=("l2_reader",), areas=areas)),
        "l3": token_for(make_client(org="vru", roles=("l3_practitioner",), areas=areas)),
        "ig": token_for(make_client(org="vru", roles=("ig_lead",))),
    }


@pytest.fixture(scope="session")
def audit_trail_data(snapshots: Snapshots) -> Snapshot[dict[str, str]]:
    return snapshots.take("audit-trail", _audit_load)


initial_state = starting_from("audit_trail_data", when="audit_loaded")


@pytest.fixture
def audit_loaded(audit_trail_data: Snapshot[dict[str, str]], loading: Loading) -> dict[str, str]:
    return audit_trail_data.value_in(loading)


def _audit_get(api: TestClient, token: str, read: tuple[str, dict[str, str]], **headers: str):  # type: ignore[no-untyped-def]
    path, params = read
    return api.get(path, params=params, headers={"Authorization": f"Bearer {token}", **headers})


def _audit_count(platform: Platform, action: str, level: int | None = None) -> int:
    statement = select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
    if level is not None:
        statement = statement.where(AuditEvent.level == level)
    with platform.sessions() as session:
        return int(session.execute(statement).scalar_one())


# ---------------------------------------------------------------------------------------------
# T25: no audit, no data


def test_T25_level2_and_level3_reads_whose_event_fails_answer_503_without_rows(
    api: TestClient, platform: Platform, audit_loaded: dict[str, str]
) -> None:
    assert _audit_get(api, audit_loaded["l2"], _AUDIT_L2).status_code == 200
    refuse_audit_inserts(platform.engine, "product.read")
    for token, read, headers in (
        (audit_loaded["l2"], _AUDIT_L2, {}),
        (audit_loaded["l3"], _AUDIT_L3, _AUDIT_JUSTIFIED),
        (audit_loaded["l1"], _AUDIT_L1, {}),
    ):
        response = _audit_get(api, token, read, **headers)
        assert response.status_code == 503, (read, response.text)
        assert response.json()["code"] == "AUDIT_UNAVAILABLE"
        assert "rows" not in response.json()
        assert response.headers["content-type"].startswith("application/problem+json")


def test_T25_level2_read_with_the_insert_privilege_revoked_answers_503(
    platform: Platform, audit_loaded: dict[str, str]
) -> None:
    """PostgreSQL: the app's own role loses INSERT on the audit table (what a DBA's mistake or
    an attacker with DDL would do): reads that cannot be audited are not answered."""
    if platform.engine.dialect.name != "postgresql":
        pytest.skip("database roles and privileges are PostgreSQL's (SQLite: see the trigger test)")
    from services.kit.app_role import grant_app_role

    role = "together_audit_" + uuid.uuid4().hex[:10]
    password = uuid.uuid4().hex
    with platform.engine.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
    try:
        grant_app_role(platform.engine, role)
        url = platform.engine.url.set(username=role, password=password)
        settings = platform.settings.model_copy(
            update={"database_url": _audit_secret(url.render_as_string(hide_password=False))}
        )
        as_app = build_platform(settings)
        try:
            with TestClient(create_app(settings, as_app)) as api:
                assert _audit_get(api, audit_loaded["l2"], _AUDIT_L2).status_code == 200
                with platform.engine.begin() as connection:
                    connection.execute(text(f"REVOKE INSERT ON audit_events FROM {role}"))
                response = _audit_get(api, audit_loaded["l2"], _AUDIT_L2)
                assert response.status_code == 503, response.text
                assert response.json()["code"] == "AUDIT_UNAVAILABLE"
                assert "rows" not in response.json()
        finally:
            as_app.close()
    finally:
        with platform.engine.begin() as connection:
            connection.execute(text(f"DROP OWNED BY {role}"))
            connection.execute(text(f"DROP ROLE {role}"))


def _audit_secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


@pytest.fixture
def audit_served(platform: Platform) -> Iterator[tuple[Platform, TestClient]]:
    """A platform that runs its background threads as a server process does, with a short
    policy window: sealer every 0.1 s, checkpoints every second, stalled after one second."""
    settings = platform.settings.model_copy(
        update={
            "audit_seal_interval_seconds": 0.1,
            "audit_checkpoint_interval_seconds": 1.0,
            "audit_stall_window_seconds": 1.0,
        }
    )
    served = build_platform(settings)
    served.start_background()
    try:
        with TestClient(create_app(settings, served)) as api:
            yield served, api
    finally:
        served.stop_background()
        served.close()


def _audit_wait(predicate: Any, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_T25_a_stalled_sealer_stops_level2_and_level3_reads_and_readiness_says_why(
    audit_served: tuple[Platform, TestClient], audit_loaded: dict[str, str]
) -> None:
    served, api = audit_served
    assert _audit_wait(lambda: api.get("/readyz").status_code == 200)
    assert _audit_get(api, audit_loaded["l2"], _AUDIT_L2).status_code == 200

    sealer = served.background.sealer
    assert sealer is not None
    sealer.stop()  # the sealer thread stops: nothing is chained or checkpointed any more
    assert _audit_get(api, audit_loaded["l1"], _AUDIT_L1).status_code == 200  # an unsealed event
    reads_before = _audit_count(served, "product.read", level=2)
    assert _audit_wait(lambda: api.get("/readyz").status_code == 503)
    ready = api.get("/readyz")
    assert ready.json()["code"] == "NOT_READY"
    assert "stalled" in ready.json()["detail"]

    for token, read, headers in (
        (audit_loaded["l2"], _AUDIT_L2, {}),
        (audit_loaded["l3"], _AUDIT_L3, _AUDIT_JUSTIFIED),
    ):
        refused = _audit_get(api, token, read, **headers)
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "AUDIT_UNAVAILABLE"
        assert "rows" not in refused.json()
    assert _audit_count(served, "product.read", level=2) == reads_before
    # Level 1 (aggregated, suppressed) keeps being served, and audited.
    l1_before = _audit_count(served, "product.read", level=1)
    assert _audit_get(api, audit_loaded["l1"], _AUDIT_L1).status_code == 200
    assert _audit_count(served, "product.read", level=1) == l1_before + 1

    sealer.start()  # the sealer comes back: reads resume with no restart
    assert _audit_wait(lambda: api.get("/readyz").status_code == 200)
    assert _audit_get(api, audit_loaded["l2"], _AUDIT_L2).status_code == 200


def test_T25_served_level2_answers_equal_read_events_over_a_burst(
    api: TestClient, platform: Platform, audit_loaded: dict[str, str]
) -> None:
    """Eight threads, each alternating an allowed Level 2 read and a refused one (an L1
    reader): every 200 has exactly one `product.read` event, every 403 one denial."""
    reads_before = _audit_count(platform, "product.read", level=2)
    denials_before = _audit_count(platform, "access.denied")
    outcomes: Counter[int] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        local: Counter[int] = Counter()
        for i in range(10):
            token = audit_loaded["l2"] if i % 2 == 0 else audit_loaded["l1"]
            local[_audit_get(api, token, _AUDIT_L2).status_code] += 1
        with lock:
            outcomes.update(local)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == Counter({200: 40, 403: 40})
    assert _audit_count(platform, "product.read", level=2) - reads_before == outcomes[200]
    assert _audit_count(platform, "access.denied") - denials_before == outcomes[403]


# ---------------------------------------------------------------------------------------------
# T28: gaps in the checkpoints


def _audit_seal(platform: Platform, count: int = 1) -> None:
    audit_chain.seal_all(platform.sessions)
    with platform.sessions() as session:
        for _ in range(count):
            audit_checkpoints.write_checkpoint(session, platform.audit_signer)
        session.commit()


def _audit_export(platform: Platform, **options: Any) -> list[bytes]:
    out = io.BytesIO()
    with platform.sessions() as session:
        write_export(session, out, platform.audit_signer.published_keys(), **options)
    return out.getvalue().splitlines(keepends=True)


def _audit_keys(platform: Platform) -> dict[str, bytes]:
    return {key.key_id: key.raw for key in platform.audit_signer.published_keys()}


def _audit_some_events(api: TestClient, count: int) -> None:
    for _ in range(count):
        assert api.get("/v1/contracts", headers={"Authorization": "Bearer x"}).status_code == 401


def _audit_is_checkpoint(line: bytes, seq: int) -> bool:
    return line.startswith(b'{"type":"checkpoint"') and orjson.loads(line)["body"]["seq"] == seq


def test_T28_a_deleted_first_checkpoint_is_detected(api: TestClient, platform: Platform) -> None:
    for _ in range(3):
        _audit_some_events(api, 4)
        _audit_seal(platform)
    lines = _audit_export(platform)
    assert verify_export(lines, keys=_audit_keys(platform)).ok
    without_first = [line for line in lines if not _audit_is_checkpoint(line, 0)]
    assert len(without_first) == len(lines) - 1
    result = verify_export(without_first, keys=_audit_keys(platform))
    assert result.failure is not None
    assert "earlier checkpoints are missing" in result.failure.message


def test_T28_a_partial_export_is_anchored_to_the_checkpoint_before_it(
    api: TestClient, platform: Platform
) -> None:
    _audit_some_events(api, 4)
    _audit_seal(platform)  # checkpoint 0 covers leaves 0..3
    _audit_some_events(api, 4)
    since = utcnow()  # the export starts at leaf 8
    time.sleep(0.01)
    for _ in range(2):
        _audit_some_events(api, 4)
        _audit_seal(platform)
    lines = _audit_export(platform, since=since)
    header = orjson.loads(lines[0])
    assert header["first_leaf"] == 8 and header["anchor"]["body"]["seq"] == 0
    keys = _audit_keys(platform)
    assert verify_export(lines, keys=keys).ok
    # The first checkpoint inside removed: it no longer follows the anchor.
    cut = [line for line in lines if not _audit_is_checkpoint(line, 1)]
    result = verify_export(cut, keys=keys)
    assert result.failure is not None and "checkpoints are missing" in result.failure.message
    # ...and the anchor removed as well: the first inside must then be checkpoint 0.
    header_without_anchor = orjson.dumps({**header, "anchor": None}) + b"\n"
    result = verify_export([header_without_anchor, *cut[1:]], keys=keys)
    assert (
        result.failure is not None and "earlier checkpoints are missing" in result.failure.message
    )
    # A forged anchor (changed after signing) is refused.
    forged = {
        **header,
        "anchor": {**header["anchor"], "body": {**header["anchor"]["body"], "seq": 1}},
    }
    result = verify_export([orjson.dumps(forged) + b"\n", *lines[1:]], keys=keys)
    assert result.failure is not None and "anchor" in result.failure.message


def _audit_idle_export(platform: Platform, minutes: list[int], cadence: float) -> list[bytes]:
    """An export of an empty log whose checkpoints were issued at the given minutes, each
    signed with the platform's key and promising `cadence` seconds: what an operator holding
    the key could produce after removing some and renumbering the rest."""
    start = utcnow() - timedelta(hours=3)
    header = {
        "type": "header",
        "format": FORMAT,
        "log": audit_checkpoints.LOG_NAME,
        "first_leaf": 0,
        "tree_size": 0,
        "since": None,
        "exported_at": None,
        "compact_range": [],
        "chain_hash": audit_chain.GENESIS_HASH,
        "keys": [key.jwk() for key in platform.audit_signer.published_keys()],
        "anchor": None,
    }
    lines = [orjson.dumps(header) + b"\n"]
    for seq, minute in enumerate(minutes):
        body = audit_checkpoints.checkpoint_body(
            seq=seq,
            tree_size=0,
            root=merkle.CompactRange().root(),
            chain_hash=audit_chain.GENESIS_HASH,
            issued_at=start + timedelta(minutes=minute),
            kid=platform.audit_signer.key_id,
            cadence_seconds=cadence,
        )
        signature = base64.b64encode(platform.audit_signer.sign(canonical_bytes(body))).decode()
        lines.append(
            orjson.dumps({"type": "checkpoint", "body": body, "signature": signature}) + b"\n"
        )
    return lines


def test_T28_an_hour_of_checkpoints_removed_and_re_signed_is_a_time_gap(
    platform: Platform,
) -> None:
    every_ten_minutes = list(range(0, 180, 10))
    keys = _audit_keys(platform)
    intact = verify_export(_audit_idle_export(platform, every_ten_minutes, 600), keys=keys)
    assert intact.ok, intact.failure
    # Minutes 60..110 removed, the rest renumbered and signed again with the right key.
    gap = [minute for minute in every_ten_minutes if not 60 <= minute < 120]
    result = verify_export(_audit_idle_export(platform, gap, 600), keys=keys)
    assert result.failure is not None
    assert "no checkpoint for 4200 s" in result.failure.message
    assert "cadence 600 s" in result.failure.message
    # A known outage: reported, not failed, when the verifier is told so.
    allowed = verify_export(_audit_idle_export(platform, gap, 600), keys=keys, allow_gaps=True)
    assert allowed.ok and any("4200 s" in note for note in allowed.notes)


def test_T28_idle_checkpoints_keep_the_signed_cadence(platform: Platform) -> None:
    """With no traffic at all the sealer still signs checkpoints at the cadence, each stating
    it, all of the same size; the export of them verifies."""
    from services.audit.sealer import Sealer

    sealer = Sealer(platform.sessions, 0.05, platform.audit_signer, 0.3)
    sealer.start()
    try:
        _audit_wait(lambda: _audit_count_checkpoints(platform) >= 4)
    finally:
        sealer.stop()
    lines = _audit_export(platform)
    bodies = [orjson.loads(line)["body"] for line in lines if b'"type":"checkpoint"' in line]
    assert len(bodies) >= 4
    assert {body["tree_size"] for body in bodies} == {0}
    assert {body["cadence_seconds"] for body in bodies} == {0.3}
    assert verify_export(lines, keys=_audit_keys(platform)).ok


def _audit_count_checkpoints(platform: Platform) -> int:
    with platform.sessions() as session:
        return int(session.execute(text("SELECT count(*) FROM audit_checkpoints")).scalar_one())


# ---------------------------------------------------------------------------------------------
# T36: the schema revision, at start and in readiness


def _audit_set_revision(platform: Platform, revision: str | None) -> None:
    with platform.engine.begin() as connection:
        connection.execute(text("DELETE FROM alembic_version"))
        if revision is not None:
            connection.execute(
                text("INSERT INTO alembic_version (version_num) VALUES (:r)"), {"r": revision}
            )


def test_T36_readiness_and_start_refuse_a_database_at_another_revision(
    api: TestClient, platform: Platform
) -> None:
    assert api.get("/readyz").status_code == 200
    (head,) = current_heads()
    _audit_set_revision(platform, "0006")
    ready = api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["code"] == "NOT_READY"
    assert "0006" in ready.json()["detail"] and head in ready.json()["detail"]
    with pytest.raises(ConfigurationError, match="together db upgrade"):
        build_platform(platform.settings)

    _audit_set_revision(platform, None)
    ready = api.get("/readyz")
    assert ready.status_code == 503 and "not migrated" in ready.json()["detail"]
    with pytest.raises(ConfigurationError, match="not migrated"):
        build_platform(platform.settings)

    _audit_set_revision(platform, head)
    assert api.get("/readyz").status_code == 200


# ---------------------------------------------------------------------------------------------
# T45: person ids in bodies, never in URLs


def test_T45_a_persons_audit_history_takes_the_id_in_the_body(
    api: TestClient, platform: Platform, audit_loaded: dict[str, str]
) -> None:
    person = "f" * 32
    headers = {"Authorization": f"Bearer {audit_loaded['ig']}"}
    answer = api.post("/v1/audit/people", json={"person_id": person}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["events"] == []
    assert api.get(f"/v1/audit/people/{person}", headers=headers).status_code in (404, 405)
    with platform.sessions() as session:
        event = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "audit.person_history")
            .order_by(AuditEvent.seq.desc())
        ).first()
    assert event is not None and event.outcome == "success"
    # No API path carries a person (or any subject) identifier.
    paths = [getattr(route, "path", "") for route in api.app.routes]  # type: ignore[attr-defined]
    assert not [p for p in paths if p.startswith("/v1/") and "{person" in p]


# ---------------------------------------------------------------------------------------------
# T27: an independent witness cosigns only a consistent history


def _audit_bearer(api: TestClient, token: str, path: str, **params: Any) -> Any:
    response = api.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def _audit_forged(platform: Platform, body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A checkpoint the operator signs with the platform's real key (the threat a witness
    answers: the key is on the server)."""
    forged = {**body, **changes}
    signature = platform.audit_signer.sign(canonical_bytes(forged))
    return {"body": forged, "signature": base64.b64encode(signature).decode()}


def test_T27_the_witness_cosigns_a_consistent_log_and_refuses_forks(
    api: TestClient, platform: Platform, make_client: Any, token_for: Any, tmp_path: Any
) -> None:
    from services.audit.witness import Witness, WitnessRefused
    from tests.fixtures.cli import run_cli

    partner = token_for(make_client(org="vru", roles=("l1_reader",)))
    folder = tmp_path / "witness"  # the witness's own folder: the server never reads it
    init = run_cli(platform.settings, "audit", "witness", "init", str(folder), "--name", "vru")
    assert init.returncode == 0, init.stderr
    witness_public = orjson.loads(init.stdout)
    assert not str(folder).startswith(str(platform.settings.data_dir))

    def cosign(*extra: str) -> Any:
        listing = tmp_path / "checkpoints.json"
        listing.write_bytes(orjson.dumps(_audit_bearer(api, partner, "/v1/audit/checkpoints")))
        return run_cli(
            platform.settings,
            "audit", "witness", "cosign", str(folder),
            "--checkpoints", str(listing), "--log-key", str(listing), *extra,
        )  # fmt: skip

    _audit_some_events(api, 5)
    _audit_seal(platform)
    first = cosign()
    assert first.returncode == 0, first.stdout + first.stderr
    assert orjson.loads(first.stdout)["tree_size"] >= 5

    _audit_some_events(api, 6)
    _audit_seal(platform)
    refused = cosign()
    assert refused.returncode == 1 and "consistency proof from" in refused.stdout
    witness = Witness(folder)
    assert witness.last is not None
    old_size = witness.last["tree_size"]
    listing = _audit_bearer(api, partner, "/v1/audit/checkpoints")
    new_size = listing["checkpoints"][-1]["body"]["tree_size"]
    proof = _audit_bearer(
        api, partner, "/v1/audit/checkpoints/consistency", from_size=old_size, to_size=new_size
    )
    proof_file = tmp_path / "proof.json"
    proof_file.write_bytes(orjson.dumps(proof))
    second = cosign("--proof", str(proof_file))
    assert second.returncode == 0, second.stdout + second.stderr

    # The operator, holding the signing key, forks the log: each fork is refused.
    keys = _audit_keys(platform)
    last = Witness(folder).last
    assert last is not None
    forks = {
        "equivocation": _audit_forged(platform, last, root_hash="00" * 32),
        "rollback": _audit_forged(platform, last, seq=last["seq"] + 1, tree_size=3),
        "not consistent": _audit_forged(
            platform, last, seq=last["seq"] + 1, tree_size=last["tree_size"] + 1,
            root_hash="11" * 32,
        ),
    }  # fmt: skip
    for why, forged in forks.items():
        with pytest.raises(WitnessRefused, match=why):
            Witness(folder).cosign(forged, keys, proof=[bytes(32)])
    # A checkpoint not signed by the key the witness trusts is refused whatever it says.
    with pytest.raises(WitnessRefused, match="not signed"):
        Witness(folder).cosign({"body": last, "signature": "AAAA"}, keys)

    # Partners verify the export against the witness: intact, then forked.
    export = tmp_path / "audit.ndjson"
    export.write_bytes(b"".join(_audit_export(platform)))
    cosignatures = folder / "cosignatures.ndjson"
    verified = run_cli(
        platform.settings, "audit", "verify", str(export),
        "--witness-key", witness_public["public_key"], "--cosignatures", str(cosignatures),
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "witness: 2 checkpoint(s) cosigned" in verified.stdout

    lines = _audit_export(platform)
    index = next(i for i, line in enumerate(lines) if _audit_is_checkpoint(line, last["seq"]))
    fork = _audit_forged(platform, last, issued_at=last["issued_at"].replace("+00:00", "1+00:00"))
    lines[index] = orjson.dumps({"type": "checkpoint", **fork}) + b"\n"
    export.write_bytes(b"".join(lines))
    forked = run_cli(
        platform.settings, "audit", "verify", str(export),
        "--key", str(tmp_path / "checkpoints.json"),
        "--witness-key", witness_public["public_key"], "--cosignatures", str(cosignatures),
    )  # fmt: skip
    assert forked.returncode == 1, forked.stdout + forked.stderr
    assert "forked" in forked.stdout
    with platform.sessions() as session:
        proved = session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "audit.consistency_proved")
        ).scalar_one()
    assert proved == 1


# ---------------------------------------------------------------------------------------------
# T29: no personal data or secrets in logs, audit events or exports


def _audit_nhs_numbers(textual: str) -> list[str]:
    """Ten-digit runs (spaced or not) that pass the NHS number's modulus 11 check. A run inside
    a word (a hex request id or hash holds digit runs by chance) is not a number written down."""
    import re

    found = []
    pattern = r"(?<![\dA-Za-z])(\d{3}[ -]?\d{3}[ -]?\d{4})(?![\dA-Za-z])"
    for match in re.finditer(pattern, textual):
        digits = [int(c) for c in match.group(1) if c.isdigit()]
        check = 11 - sum(d * (10 - i) for i, d in enumerate(digits[:9])) % 11
        check = 0 if check == 11 else check
        if check != 10 and check == digits[9]:
            found.append(match.group(1))
    return found


def test_T29_no_names_dates_of_birth_tokens_or_secrets_in_logs_events_or_exports(
    api: TestClient,
    platform: Platform,
    make_client: Any,
    token_for: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    police = make_client()
    police_token = token_for(police)
    rows = police_rows(90, seed=29)
    for row in rows[::3]:
        row["suspect_surname"], row["suspect_forename"] = "Vexcanaryholt", "Ombracanary"
        row["suspect_dob"] = "1968-11-17"
    upload = api.post(
        "/v1/datasets/police.occurrences/uploads",
        params={"mode": "replace"},
        content=to_csv(rows),
        headers={
            "Authorization": f"Bearer {police_token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert upload.status_code == 201, upload.text
    reader = make_client(org="vru", roles=("l3_practitioner",), areas=("Southampton",))
    reader_token = token_for(reader)
    _audit_get(api, reader_token, _AUDIT_L3, **_AUDIT_JUSTIFIED)
    _audit_get(api, reader_token, _AUDIT_L2)
    # Refusals carrying secrets: a wrong client secret, a forged bearer token.
    api.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": police.client_id,
            "client_secret": "Wr0ngSecretCanary",
        },
    )
    api.get("/v1/contracts", headers={"Authorization": f"Bearer {police_token}x"})
    _audit_seal(platform)
    with platform.sessions() as session:
        events = "\n".join(session.scalars(select(AuditEvent.canonical)).all())
    export = b"".join(_audit_export(platform)).decode()
    logs = caplog.text
    forbidden = [
        "Vexcanaryholt",
        "Ombracanary",
        "1968-11-17",
        police_token,
        reader_token,
        police.client_secret,
        reader.client_secret,
        "Wr0ngSecretCanary",
    ]
    for where, textual in (("logs", logs), ("audit events", events), ("export", export)):
        assert textual, where
        for value in forbidden:
            assert value not in textual, (where, value[:12])
        assert _audit_nhs_numbers(textual) == [], where
    assert "product.read" in events and "authentication.failed" in events
