"""Partners pushing datasets through their contracts (issue: foundation)."""

from __future__ import annotations

import gzip
import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from services.identity import service as identity_service
from services.platform import Platform
from services.storage import service as storage_service
from tests.fixtures.app import ClientCredentials
from tests.fixtures.audit_events import events
from tests.ingestion.helpers import police_rows, to_csv, with_suspect

URL = "/v1/datasets/police.occurrences/uploads"


def push(
    api: TestClient,
    token: str,
    body: bytes,
    *,
    mode: str = "replace",
    content_type: str = "text/csv",
    key: str | None = None,
    headers: dict[str, str] | None = None,
    url: str = URL,
):  # type: ignore[no-untyped-def]
    """POST a body; without `key`, a fresh Idempotency-Key (the header is mandatory)."""
    all_headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": content_type,
        "Idempotency-Key": key or str(uuid.uuid4()),
    }
    all_headers.update(headers or {})
    return api.post(url, params={"mode": mode}, content=body, headers=all_headers)


def current_version(platform: Platform, dataset: str = "police.occurrences") -> int | None:
    with platform.sessions() as session:
        info = storage_service.current_version(session, platform.storage, dataset)
    return None if info is None else info.version


def test_police_csv_accepted_and_stored(
    api: TestClient, police_token: str, platform: Platform
) -> None:
    rows = police_rows(300)
    response = push(api, police_token, to_csv(rows))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert body["rows"] == 300
    assert body["version"] == 1
    with platform.sessions() as session:
        info = storage_service.current_version(session, platform.storage, "police.occurrences")
    assert info is not None and info.row_count == 300
    table = pa.concat_tables([pq.read_table(path) for path in info.files])
    assert table.num_rows == 300
    assert "suspect_surname" not in table.column_names
    assert "suspect_surname_enc" in table.column_names
    assert "suspect_nominal_ref_pseudonym" in table.column_names
    assert "person_key" in table.column_names
    assert table.schema.field("committed_at").type == pa.timestamp("us")
    status = api.get(
        f"/v1/uploads/{body['upload_id']}", headers={"Authorization": f"Bearer {police_token}"}
    )
    assert status.status_code == 200
    assert status.json()["status"] == "accepted"
    ingested = events(platform, "dataset.ingested")
    assert len(ingested) == 1
    event = ingested[0]
    assert event.actor_org == "hampshire-constabulary"
    assert event.resource == "police.occurrences"
    assert event.rows == 300
    assert event.details["contract_version"] == "1.0.0"
    assert event.outcome == "success"


BAD_VALUES = [
    ("victim_age", "forty", "type"),
    ("hmic_group", "99", "allowed_values"),
    ("lsoa_code", "X01234567", "pattern"),
    ("csp", "", "required"),
    ("committed_at", "2023-13-45 10:00:00", "type"),
    ("victim_age", "140", "maximum"),
]


@pytest.mark.parametrize(("field", "value", "rule"), BAD_VALUES)
def test_one_bad_value_rejects_the_whole_upload(
    api: TestClient, police_token: str, platform: Platform, field: str, value: str, rule: str
) -> None:
    rows = police_rows(100)
    assert push(api, police_token, to_csv(rows)).status_code == 201
    bad = police_rows(120, seed=8)
    bad[41][field] = value
    response = push(api, police_token, to_csv(bad))
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "CONTRACT_VIOLATION"
    violations = body["report"]["violations"]
    assert body["report"]["total_violations"] == 1
    assert violations[0]["row"] == 42
    assert violations[0]["field"] == field
    assert violations[0]["rule"] == rule
    assert body["report"]["totals"] == {rule: 1}
    assert current_version(platform) == 1
    rejected = events(platform, "dataset.rejected")
    assert len(rejected) == 1 and rejected[0].details["violations"] == 1
    status = api.get(
        f"/v1/uploads/{body['upload_id']}", headers={"Authorization": f"Bearer {police_token}"}
    )
    assert status.json()["status"] == "rejected"
    assert status.json()["report"]["violations"][0]["row"] == 42


def test_undeclared_column_is_a_violation(
    api: TestClient, police_token: str, platform: Platform
) -> None:
    response = push(api, police_token, to_csv(police_rows(20), {"suspect_address": "1 High St"}))
    assert response.status_code == 422
    violation = response.json()["report"]["violations"][0]
    assert violation["rule"] == "undeclared_column"
    assert violation["field"] == "suspect_address"
    assert current_version(platform) is None


def test_report_lists_first_thousand_with_totals(api: TestClient, police_token: str) -> None:
    rows = police_rows(1500)
    for row in rows:
        row["hmic_group"] = "zz"
    rows[3]["victim_age"] = "-1"
    body = push(api, police_token, to_csv(rows)).json()
    report = body["report"]
    assert report["total_violations"] == 1501
    assert len(report["violations"]) == 1000
    assert report["totals"] == {"allowed_values": 1500, "minimum": 1}
    assert report["truncated"] is True


def test_report_never_echoes_identifying_values(api: TestClient, police_token: str) -> None:
    rows = police_rows(50)
    index = with_suspect(rows)
    rows[index]["suspect_dob"] = "not-a-date-" + rows[index]["suspect_surname"]
    response = push(api, police_token, to_csv(rows))
    assert response.status_code == 422
    assert rows[index]["suspect_surname"] not in response.text


def test_other_organisation_and_role_refused_and_audited(
    api: TestClient,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
    platform: Platform,
) -> None:
    fire = token_for(make_client(org="hiwfrs"))
    reader = token_for(make_client(roles=("l1_reader",)))
    body = to_csv(police_rows(10))
    for token in (fire, reader):
        response = push(api, token, body)
        assert response.status_code == 403
        assert response.json()["code"] == "FORBIDDEN"
    denied = events(platform, "access.denied")
    assert len(denied) == 2
    assert {e.actor_org for e in denied} == {"hiwfrs", "hampshire-constabulary"}
    assert all(e.matched_rule and e.policy_version for e in denied)
    assert current_version(platform) is None


def test_disabled_client_and_forged_token_refused(
    api: TestClient,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
    platform: Platform,
) -> None:
    credentials = make_client()
    token = token_for(credentials)
    with platform.sessions() as session:
        identity_service.disable_client(session, credentials.client_id)
        session.commit()
    body = to_csv(police_rows(10))
    assert push(api, token, body).status_code == 401
    assert push(api, token[:-4] + "AAAA", body).status_code == 401
    reasons = [e.reason for e in events(platform, "authentication.failed")]
    assert reasons == ["client_unknown_or_disabled", "bad_signature"]
    assert current_version(platform) is None


def test_unknown_dataset_is_404(api: TestClient, police_token: str) -> None:
    response = push(api, police_token, b"a\n1\n", url="/v1/datasets/police.nothing/uploads")
    assert response.status_code == 404


def test_media_type_and_mode_checked(
    api: TestClient, police_token: str, platform: Platform
) -> None:
    body = to_csv(police_rows(10))
    assert push(api, police_token, body, content_type="application/json").status_code == 415
    assert (
        push(api, police_token, body, content_type="application/vnd.apache.parquet").status_code
        == 422
    )
    assert push(api, police_token, body, mode="merge").status_code == 400
    assert (
        api.post(
            URL,
            content=body,
            headers={"Authorization": f"Bearer {police_token}", "Content-Type": "text/csv"},
        ).status_code
        == 400
    )
    assert current_version(platform) is None


def test_size_limits(api: TestClient, police_token: str, platform: Platform) -> None:
    platform.settings.upload_max_bytes = 10_000
    platform.settings.upload_max_decompressed_bytes = 50_000
    big = to_csv(police_rows(400))
    assert len(big) > 50_000
    response = push(api, police_token, big)
    assert response.status_code == 413
    bomb = gzip.compress(b"0" * 5_000_000)
    assert len(bomb) < 10_000
    response = push(api, police_token, bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert current_version(platform) is None
    assert list(platform.settings.staging_dir.iterdir()) == []


def test_gzip_parquet_and_ndjson_accepted(
    api: TestClient, police_token: str, platform: Platform
) -> None:
    rows = police_rows(150)
    csv_body = to_csv(rows)
    response = push(
        api, police_token, gzip.compress(csv_body), headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 201, response.text
    parsed = pacsv.read_csv(
        io.BytesIO(csv_body),
        convert_options=pacsv.ConvertOptions(
            strings_can_be_null=True,
            column_types={name: pa.string() for name in rows[0]},
        ),
    )
    buffer = io.BytesIO()
    pq.write_table(parsed, buffer)
    response = push(
        api, police_token, buffer.getvalue(), content_type="application/vnd.apache.parquet"
    )
    assert response.status_code == 201, response.text
    ndjson = "\n".join(
        json.dumps({k: (v if v != "" else None) for k, v in row.items()}) for row in rows
    )
    response = push(api, police_token, ndjson.encode(), content_type="application/x-ndjson")
    assert response.status_code == 201, response.text
    assert current_version(platform) == 3


def test_append_checks_keys_against_current_version(
    api: TestClient, police_token: str, platform: Platform
) -> None:
    first = police_rows(100, seed=1)
    assert push(api, police_token, to_csv(first), mode="replace").status_code == 201
    second = police_rows(100, seed=2)
    for row in second:
        row["occurrence_ref"] = "B" + row["occurrence_ref"]
    response = push(api, police_token, to_csv(second), mode="append")
    assert response.status_code == 201, response.text
    assert response.json()["version"] == 2
    with platform.sessions() as session:
        info = storage_service.current_version(session, platform.storage, "police.occurrences")
    assert info is not None and info.row_count == 200
    clash = [dict(first[5])]
    response = push(api, police_token, to_csv(clash), mode="append")
    assert response.status_code == 422
    violation = response.json()["report"]["violations"][0]
    assert violation["rule"] == "duplicate_key" and violation["row"] == 1
    assert "current version" in violation["message"]
    assert current_version(platform) == 2


def test_duplicate_keys_within_upload(api: TestClient, police_token: str) -> None:
    rows = police_rows(30)
    rows.append(dict(rows[4]))
    response = push(api, police_token, to_csv(rows))
    assert response.status_code == 422
    found = response.json()["report"]["violations"]
    assert {v["row"] for v in found} == {31}
    assert {v["rule"] for v in found} == {"duplicate_key"}


def test_idempotency_key(api: TestClient, police_token: str, platform: Platform) -> None:
    body = to_csv(police_rows(40))
    first = push(api, police_token, body, key="batch-0001")
    again = push(api, police_token, body, key="batch-0001")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert current_version(platform) == 1
    other = push(api, police_token, to_csv(police_rows(41)), key="batch-0001")
    assert other.status_code == 422
    assert other.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert current_version(platform) == 1


def test_suspect_names_never_stored_in_clear(
    api: TestClient, police_token: str, platform: Platform, settings
) -> None:  # type: ignore[no-untyped-def]
    rows = police_rows(300)
    index = with_suspect(rows)
    surname = "Zyxwvutsonian"
    nominal = "NOMCANARY99"
    for row in rows:
        if row["suspect_nominal_ref"] == rows[index]["suspect_nominal_ref"]:
            row["suspect_surname"] = surname
            row["suspect_nominal_ref"] = nominal
    assert push(api, police_token, to_csv(rows)).status_code == 201
    rows[0]["victim_age"] = "x"
    assert push(api, police_token, to_csv(rows)).status_code == 422
    needles = [surname.encode(), surname.lower().encode(), nominal.encode()]
    for path in Path(settings.data_dir).rglob("*"):
        if path.is_file() and path.name != "keys.json":
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, path
    with platform.engine.connect() as connection:
        if platform.engine.dialect.name == "sqlite":
            tables = [
                r[0]
                for r in connection.execute(
                    text("SELECT name FROM sqlite_master WHERE type='table'")
                )
            ]
        else:
            tables = [
                r[0]
                for r in connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
                )
            ]
        for table in tables:
            query = text(f'SELECT * FROM "{table}"')  # noqa: S608 (names from the catalogue)
            for row in connection.execute(query):
                flat = repr(tuple(row))
                assert surname not in flat and surname.lower() not in flat and nominal not in flat


def test_audit_rows_cannot_be_changed(
    api: TestClient, police_token: str, platform: Platform
) -> None:
    assert push(api, police_token, to_csv(police_rows(10))).status_code == 201
    for statement in ("UPDATE audit_events SET outcome = 'x'", "DELETE FROM audit_events"):
        with pytest.raises(Exception, match="append-only"), platform.engine.begin() as connection:
            connection.execute(text(statement))
    with platform.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one() >= 2
