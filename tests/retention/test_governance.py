"""Retention, withdrawal, erasure and rectification through the real app, each with its signed
deletion certificate; on SQLite and PostgreSQL, and on the local folder and S3."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from gateway.cli import app as cli
from services.audit.models import AuditEvent
from services.demo.generate import generate_police
from services.kit.settings import Settings
from services.platform import Platform
from services.retention import certificates
from services.retention import service as governance
from services.retention.models import DataDeletion
from services.storage import service as storage_service
from services.storage.models import DatasetVersion
from tests.fixtures.app import MakeClient, TokenFor
from tests.fixtures.audit_events import events
from tests.fixtures.cli import run_cli
from tests.ingestion.helpers import to_csv
from tests.ingestion.test_uploads import push

POLICE = "police.occurrences"
OWNER = "hampshire-constabulary"
# P6Y from this day: rows recorded before 2023-07-01 have expired.
TODAY = date(2029, 7, 1)
CUTOFF = "2023-07-01"


def _rows(n: int, seed: int) -> list[dict[str, str]]:
    """Rows of 2023 whose occurrence references differ from another seed's (the key)."""
    rows = generate_police(n, seed=seed, start=date(2023, 1, 1), end=date(2024, 1, 1))
    return [row | {"occurrence_ref": f"S{seed}-{row['occurrence_ref']}"} for row in rows]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _keys(platform: Platform) -> dict[str, bytes]:
    return {k.key_id: k.raw for k in platform.audit_signer.published_keys()}


def _current(platform: Platform) -> pa.Table:
    with platform.sessions() as session:
        info = storage_service.current_version(session, platform.storage, POLICE)
    assert info is not None
    return pa.concat_tables([pq.read_table(path) for path in info.files])


def _versions(platform: Platform) -> list[DatasetVersion]:
    with platform.sessions() as session:
        return list(
            session.execute(
                select(DatasetVersion)
                .where(DatasetVersion.dataset_id == POLICE)
                .order_by(DatasetVersion.version)
            ).scalars()
        )


def _held(platform: Platform, key: str) -> bool:
    return platform.storage.store.info(key) is not None


def _loaded(api: TestClient, police_token: str) -> list[dict[str, str]]:
    first, second = _rows(120, seed=3), _rows(60, seed=4)
    assert push(api, police_token, to_csv(first)).status_code in (200, 201)
    assert push(api, police_token, to_csv(second), mode="append").status_code in (200, 201)
    return first + second


def _expired(rows: list[dict[str, str]]) -> int:
    return sum(1 for row in rows if row["recorded_date"] < CUTOFF)


def _verified(platform: Platform, document: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The certificate checks offline, with the published key only, and fails once altered."""
    assert certificates.verify(document, _keys(platform)) == []
    saved = tmp_path / "certificate.json"
    saved.write_text(json.dumps(document))
    key = next(iter(_keys(platform).values()))
    import base64

    key_text = base64.b64encode(key).decode()
    result = CliRunner().invoke(cli, ["deletions", "verify", str(saved), "--key", key_text])
    assert result.exit_code == 0, result.output
    assert "OK:" in result.output
    altered = json.loads(json.dumps(document))
    altered["certificate"]["rows_removed"] += 1
    saved.write_text(json.dumps(altered))
    result = CliRunner().invoke(cli, ["deletions", "verify", str(saved), "--key", key_text])
    assert result.exit_code == 1
    assert "altered" in result.output
    body: dict[str, Any] = document["certificate"]
    return body


def test_a_retention_run_removes_expired_rows_deletes_the_files_that_held_them_and_certifies(
    api: TestClient, platform: Platform, police_token: str, tmp_path: Path
) -> None:
    rows = _loaded(api, police_token)
    expired = _expired(rows)
    assert 0 < expired < len(rows)
    before = _versions(platform)
    old_files = [f["key"] for f in _all_files(platform)]
    assert all(_held(platform, key) for key in old_files)

    # A dry run says what would go and changes nothing.
    preview = governance.run_retention(platform.governance, dry_run=True, today=TODAY)
    assert preview is not None
    police = next(o for o in preview if o.dataset == POLICE)
    assert police.rows_removed == expired and police.certificate is None
    assert len(_versions(platform)) == len(before)
    assert events(platform, "retention.checked")

    outcomes = governance.run_retention(platform.governance, today=TODAY)
    assert outcomes is not None
    police = next(o for o in outcomes if o.dataset == POLICE)
    assert police.rows_removed == expired
    table = _current(platform)
    assert table.num_rows == len(rows) - expired
    assert pc.min(table.column("recorded_date")).as_py() >= date(2023, 7, 1)
    # Every older file held expired rows: each is gone from the store, its versions purged.
    assert not any(_held(platform, key) for key in old_files)
    versions = _versions(platform)
    assert [v.version for v in versions] == [1, 2, 3]
    assert versions[-1].mode == "retention" and versions[-1].purged_at is None
    assert all(v.purged_at is not None and v.purged_by == police.certificate for v in versions[:2])
    with platform.sessions() as session:
        assert platform.storage.check(session) == []

    listed = api.get(f"/v1/datasets/{POLICE}/deletions", headers=_bearer(police_token))
    assert listed.status_code == 200, listed.text
    (deletion,) = listed.json()["deletions"]
    assert deletion["state"] == "certified"
    body = _verified(platform, deletion, tmp_path)
    assert body["kind"] == "retention" and body["rows_removed"] == expired
    assert body["criteria"]["cutoff"] == CUTOFF
    assert sorted(f["key"] for f in body["files_deleted"]) == sorted(set(old_files))
    assert body["versions_deleted"] == [1, 2]
    started = events(platform, "deletion.started")[-1]
    certified = events(platform, "deletion.certified")[-1]
    assert (body["audit_seq_start"], body["audit_seq_end"]) == (started.seq, certified.seq)
    assert events(platform, "deletion.listed")

    # Nothing is left to remove: the next run changes nothing and issues no certificate.
    again = governance.run_retention(platform.governance, today=TODAY)
    assert again is not None
    assert next(o for o in again if o.dataset == POLICE).certificate is None
    assert len(_versions(platform)) == 3


def test_a_deleted_file_a_restored_backup_brings_back_is_reported_and_swept_again(
    api: TestClient, platform: Platform, police_token: str, settings: Settings
) -> None:
    _loaded(api, police_token)
    store = platform.storage.store
    old_files = sorted({str(f["key"]) for f in _all_files(platform)})
    # The store's backup, taken before the deletion.
    backup = {key: store.local_path(key).read_bytes() for key in old_files}
    outcomes = governance.run_retention(platform.governance, today=TODAY)
    assert outcomes is not None
    assert next(o for o in outcomes if o.dataset == POLICE).certificate is not None
    assert not any(_held(platform, key) for key in old_files)
    assert run_cli(settings, "storage", "check").returncode == 0

    # The store is restored from that backup: the deleted files are back.
    for key, body in backup.items():
        store.put_bytes(key, body)
    checked = run_cli(settings, "storage", "check")
    assert checked.returncode == 1
    # Listed once for each purged version that named it (an append shares its older file).
    assert sorted({line.split()[-2] for line in checked.stdout.splitlines()}) == old_files
    assert all(line.endswith(" purged") for line in checked.stdout.splitlines())
    # The sweep deletes them at once, however recent the restore; the current version stays.
    swept = run_cli(settings, "storage", "sweep")
    assert swept.returncode == 0, swept.stderr
    assert f"removed {len(old_files)} orphan file(s)" in swept.stdout
    assert not any(_held(platform, key) for key in old_files)
    assert run_cli(settings, "storage", "check").returncode == 0
    assert _current(platform).num_rows > 0


def test_retention_is_one_process_at_a_time(platform: Platform, settings: Settings) -> None:
    from services.retention.lease import Lease

    other = Lease(platform.sessions, governance.RETENTION_LEASE, 60)
    assert other.take()
    try:
        assert governance.run_retention(platform.governance, today=TODAY) is None
        result = run_cli(settings, "retention", "run")
        assert result.returncode == 3, result.stderr
        assert "another process" in result.stderr
    finally:
        other.release()
    assert governance.run_retention(platform.governance, today=TODAY) == []


def test_a_withdrawal_needs_the_owners_ig_lead_and_leaves_products_a_clear_409(
    api: TestClient,
    platform: Platform,
    police_token: str,
    make_client: MakeClient,
    token_for: TokenFor,
    tmp_path: Path,
) -> None:
    _loaded(api, police_token)
    reader = token_for(make_client(org="hiwfrs", roles=("l1_reader",)))
    query = {"from": "2023-01-01", "to": "2024-01-01", "by": "csp"}
    assert (
        api.get("/v1/products/sv-counts", params=query, headers=_bearer(reader)).status_code == 200
    )
    keys = [f["key"] for f in _all_files(platform)]
    # Each read is audited with the contract version of each source's data.
    read = events(platform, "product.read")[-1]
    assert read.details["contract_versions"] == {POLICE: "1.0.0"}

    # Another organisation's system may not ask; the owner's may.
    fire = token_for(make_client(org="hiwfrs", roles=("partner_system",)))
    assert api.delete(f"/v1/datasets/{POLICE}", headers=_bearer(fire)).status_code == 403
    asked = api.request(
        "DELETE",
        f"/v1/datasets/{POLICE}",
        json={"reason": "the sharing agreement ended"},
        headers=_bearer(police_token),
    )
    assert asked.status_code == 202, asked.text
    request = asked.json()
    assert request["state"] == "requested" and request["kind"] == "withdrawal"
    # Nothing is deleted yet: readers still read.
    assert (
        api.get("/v1/products/sv-counts", params=query, headers=_bearer(reader)).status_code == 200
    )
    decision = f"/v1/datasets/{POLICE}/withdrawals/{request['id']}/decision"
    other_lead = token_for(make_client(org="hiwfrs", roles=("ig_lead",)))
    theirs = api.post(decision, json={"confirm": True}, headers=_bearer(other_lead))
    made_up = api.post(
        decision.replace(request["id"], "00000000-0000-4000-8000-000000000000"),
        json={"confirm": True},
        headers=_bearer(other_lead),
    )
    # Another organisation learns nothing from the id: the same refusal for a real or made-up one.
    assert theirs.status_code == made_up.status_code == 403
    assert theirs.json()["detail"] == made_up.json()["detail"]
    lead = token_for(make_client(org=OWNER, roles=("ig_lead",)))
    confirmed = api.post(decision, json={"confirm": True}, headers=_bearer(lead))
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["state"] == "certified"
    body = _verified(platform, confirmed.json(), tmp_path)
    assert body["kind"] == "withdrawal" and body["confirmed_by"] is not None
    assert not any(_held(platform, key) for key in keys)
    assert all(v.purged_at is not None for v in _versions(platform))
    refused = api.get("/v1/products/sv-counts", params=query, headers=_bearer(reader))
    assert refused.status_code == 409
    assert refused.json()["code"] == "SOURCE_WITHDRAWN"
    assert POLICE in refused.json()["detail"]
    # Confirming twice is a clear 409; asking again holds nothing to withdraw.
    assert api.post(decision, json={"confirm": True}, headers=_bearer(lead)).status_code == 409
    assert api.delete(f"/v1/datasets/{POLICE}", headers=_bearer(police_token)).status_code == 409

    # Shared again: a new upload takes the next version number and products answer again.
    assert push(api, police_token, to_csv(_rows(30, seed=9))).status_code in (200, 201)
    assert _versions(platform)[-1].version == 3
    assert (
        api.get("/v1/products/sv-counts", params=query, headers=_bearer(reader)).status_code == 200
    )


def _all_files(platform: Platform) -> list[dict[str, Any]]:
    from services.storage import repository

    with platform.sessions() as session:
        return [{"key": row.path} for row in repository.all_version_files(session)]


def test_a_refused_withdrawal_deletes_nothing(
    api: TestClient,
    platform: Platform,
    police_token: str,
    make_client: MakeClient,
    token_for: TokenFor,
) -> None:
    _loaded(api, police_token)
    asked = api.delete(f"/v1/datasets/{POLICE}", headers=_bearer(police_token)).json()
    lead = token_for(make_client(org=OWNER, roles=("ig_lead",)))
    decision = f"/v1/datasets/{POLICE}/withdrawals/{asked['id']}/decision"
    refused = api.post(decision, json={"confirm": False}, headers=_bearer(lead))
    assert refused.status_code == 200
    assert refused.json()["state"] == "cancelled"
    assert _current(platform).num_rows == 180
    assert events(platform, "dataset.withdrawal_refused")


def _a_suspect(rows: list[dict[str, str]]) -> dict[str, str]:
    counts: dict[str, int] = {}
    for row in rows:
        if row["suspect_nominal_ref"]:
            counts[row["suspect_nominal_ref"]] = counts.get(row["suspect_nominal_ref"], 0) + 1
    ref = max(counts, key=lambda r: counts[r])
    return next(row for row in rows if row["suspect_nominal_ref"] == ref)


def _person_rows(platform: Platform, ref: str) -> int:
    pseudonym = platform.ingestion.protector.pseudonymise_value(ref, domain="suspect_nominal_ref")
    table = _current(platform)
    return int(
        pc.sum(pc.equal(table.column("suspect_nominal_ref_pseudonym"), pseudonym)).as_py() or 0
    )


def test_an_erasure_removes_one_persons_rows_everywhere_and_certifies_it(
    api: TestClient,
    platform: Platform,
    police_token: str,
    make_client: MakeClient,
    token_for: TokenFor,
    tmp_path: Path,
) -> None:
    rows = _loaded(api, police_token)
    suspect = _a_suspect(rows)
    ref = suspect["suspect_nominal_ref"]
    held = sum(1 for row in rows if row["suspect_nominal_ref"] == ref)
    assert _person_rows(platform, ref) == held > 0
    url = f"/v1/datasets/{POLICE}/erasures"
    body = {
        "identifiers": {"suspect_nominal_ref": ref},
        "reason": "UK GDPR Art 17 request upheld",
        "case_reference": "SAR-2026-0042",
    }
    other = token_for(make_client(org="hiwfrs", roles=("ig_lead",)))
    assert api.post(url, json=body, headers=_bearer(other)).status_code == 403
    lead = token_for(make_client(org=OWNER, roles=("ig_lead",)))
    assert api.post(url, json=body, headers=_bearer(police_token)).status_code == 403
    erased = api.post(url, json=body, headers=_bearer(lead))
    assert erased.status_code == 201, erased.text
    assert _person_rows(platform, ref) == 0
    assert _current(platform).num_rows == len(rows) - held
    certificate = _verified(platform, erased.json(), tmp_path)
    assert certificate["kind"] == "erasure" and certificate["rows_removed"] == held
    assert certificate["case_reference"] == "SAR-2026-0042"
    # The certificate proves the search without naming the person or their pseudonym.
    text = json.dumps(certificate)
    assert ref not in text and suspect["suspect_surname"] not in text
    pseudonym = platform.ingestion.protector.pseudonymise_value(ref, domain="suspect_nominal_ref")
    assert pseudonym not in text
    assert certificate["criteria"]["matched_on"] == ["suspect_nominal_ref"]
    # Every file that held the person's rows is gone; the versions that named them are purged.
    for item in certificate["files_deleted"]:
        assert not _held(platform, item["key"])
    purged = {v.version for v in _versions(platform) if v.purged_at is not None}
    assert purged == set(certificate["versions_deleted"]) and 2 in purged

    # Asked again, nobody matches: still answered, and certified as a search.
    again = api.post(url, json=body, headers=_bearer(lead))
    assert again.status_code == 201
    assert again.json()["certificate"]["rows_removed"] == 0
    assert again.json()["certificate"]["files_deleted"] == []


def test_an_erasure_by_name_and_date_of_birth_and_its_clear_refusals(
    api: TestClient,
    platform: Platform,
    police_token: str,
    make_client: MakeClient,
    token_for: TokenFor,
) -> None:
    rows = _loaded(api, police_token)
    suspect = _a_suspect(rows)
    lead = token_for(make_client(org=OWNER, roles=("ig_lead",)))
    url = f"/v1/datasets/{POLICE}/erasures"
    base = {"reason": "Art 17", "case_reference": "C-1"}
    name_only = base | {
        "surname": suspect["suspect_surname"],
        "forename": suspect["suspect_forename"],
    }
    refused = api.post(url, json=name_only, headers=_bearer(lead))
    assert refused.status_code == 400 and "date of birth" in refused.json()["detail"]
    unknown = base | {"identifiers": {"victim_age": "12"}}
    assert api.post(url, json=unknown, headers=_bearer(lead)).status_code == 400
    assert api.post(url, json={"surname": "x"}, headers=_bearer(lead)).status_code == 400
    person = name_only | {"dob": suspect["suspect_dob"]}
    erased = api.post(url, json=person, headers=_bearer(lead))
    assert erased.status_code == 201, erased.text
    assert erased.json()["certificate"]["rows_removed"] >= 1
    assert _person_rows(platform, suspect["suspect_nominal_ref"]) == 0


def test_a_rectification_keeps_only_the_corrected_rows_the_partner_pushed(
    api: TestClient,
    platform: Platform,
    police_token: str,
    make_client: MakeClient,
    token_for: TokenFor,
) -> None:
    rows = _loaded(api, police_token)
    suspect = _a_suspect(rows)
    ref = suspect["suspect_nominal_ref"]
    corrected = dict(suspect) | {"suspect_forename": "Corrected", "occurrence_ref": "RECT/0001"}
    pushed = push(api, police_token, to_csv([corrected]), mode="append")
    assert pushed.status_code in (200, 201), pushed.text
    upload_id = pushed.json()["upload_id"] if "upload_id" in pushed.json() else pushed.json()["id"]
    lead = token_for(make_client(org=OWNER, roles=("ig_lead",)))
    url = f"/v1/datasets/{POLICE}/erasures"
    body = {
        "identifiers": {"suspect_nominal_ref": ref},
        "reason": "Art 16: the forename was wrong",
        "case_reference": "RECT-7",
        "rectification": True,
    }
    assert api.post(url, json=body, headers=_bearer(lead)).status_code == 400
    done = api.post(url, json=body | {"corrected_upload": upload_id}, headers=_bearer(lead))
    assert done.status_code == 201, done.text
    assert done.json()["certificate"]["kind"] == "rectification"
    assert _person_rows(platform, ref) == 1
    table = _current(platform)
    kept = table.filter(pc.equal(table.column("occurrence_ref"), "RECT/0001"))
    assert kept.num_rows == 1


def test_each_deletion_is_audited_before_it_takes_effect(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    _loaded(api, police_token)
    governance.run_retention(platform.governance, today=TODAY)
    with platform.sessions() as session:
        row = session.execute(select(DataDeletion)).scalar_one()
        started = session.execute(
            select(AuditEvent).where(AuditEvent.seq == row.audit_seq_start)
        ).scalar_one()
    assert started.action == "deletion.started"
    assert started.details["deletion"] == row.id
    assert started.resource == POLICE and started.resource_org == OWNER


def test_a_retired_contracts_data_still_follows_its_retention(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    from services.kit.clock import utcnow
    from services.lifecycle.models import ContractVersion, VersionState

    rows = _loaded(api, police_token)
    # The contract retired with no successor: it takes no uploads, its rows still expire.
    with platform.sessions() as session:
        row = session.execute(
            select(ContractVersion).where(ContractVersion.dataset_id == POLICE)
        ).scalar_one()
        row.state = VersionState.RETIRED
        row.retired_at = utcnow()
        session.commit()
    assert push(api, police_token, to_csv(_rows(5, seed=8)), mode="append").status_code == 409
    outcomes = governance.run_retention(platform.governance, today=TODAY)
    assert outcomes is not None
    police = next(o for o in outcomes if o.dataset == POLICE)
    assert police.rows_removed == _expired(rows) and police.certificate is not None


def test_a_deletion_drops_the_cached_results_computed_from_the_rows(
    api: TestClient,
    platform: Platform,
    police_token: str,
    make_client: MakeClient,
    token_for: TokenFor,
) -> None:
    _loaded(api, police_token)
    analyst = token_for(make_client(org="hiwfrs", roles=("l1_analyst",)))
    early = {"from": "2023-01-01", "to": "2023-07-01", "by": "csp"}
    before = api.get("/v1/products/sv-counts", params=early, headers=_bearer(analyst))
    assert before.status_code == 200
    assert any(platform.products.cache), "the read was cached"
    governance.run_retention(platform.governance, today=TODAY)
    assert not any(any(d == POLICE for d, _ in key[2]) for key in platform.products.cache), (
        "no cached result of the police data survives the deletion"
    )
    after = api.get("/v1/products/sv-counts", params=early, headers=_bearer(analyst))
    assert after.status_code == 200
    # Every row of the first half of 2023 was recorded before the cutoff: none is counted now.
    assert after.json()["sources"][POLICE] == 3
    assert after.json() != before.json()
