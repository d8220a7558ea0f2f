"""T47-T50: exports. CSV that a spreadsheet cannot run, exports that carry exactly the API's
disclosure, clean Parquet in Delta Sharing, and file URLs that are short-lived, bound to their
recipient and opaque."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.admin import principals
from services.audit.models import AuditEvent
from services.kit.clock import utcnow
from services.kit.settings import Settings
from services.platform import Platform
from services.products import formats
from services.products.engine import ProductResult
from services.sharing import urls
from tests.fixtures.app import cli_context
from tests.fixtures.audit_events import refuse_audit_inserts
from tests.fixtures.snapshots import Loading, Snapshot, Snapshots, starting_from
from tests.ingestion.helpers import police_rows, to_csv
from tests.sharing.helpers import sharing_settings

_EXPORT_PERIOD = {"from": "2023-01-01", "to": "2024-01-01"}
_EXPORT_HOSTILE = [
    '=HYPERLINK("http://x","y")',
    "@SUM(1+1)",
    "+cmd|' /C calc'!A0",
    "-2+3",
    "\tTAB",
    "\rCR",
    "\x00NUL",
]


def _export_load(loading: Loading) -> dict[str, Any]:
    police = loading.token_for(loading.make_client())
    response = loading.api.post(
        "/v1/datasets/police.occurrences/uploads",
        params={"mode": "replace"},
        content=to_csv(police_rows(1500, seed=5)),
        headers={
            "Authorization": f"Bearer {police}",
            "Content-Type": "text/csv",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert response.status_code == 201, response.text
    found: dict[str, Any] = {}
    for name, roles in (("reader", ("l1_reader",)), ("analyst", ("l1_analyst",))):
        client = loading.make_client(org="vru", roles=roles)
        found[name] = client
        found[name + "_token"] = loading.token_for(client)
    return found


@pytest.fixture(scope="session")
def export_data(snapshots: Snapshots) -> Snapshot[dict[str, Any]]:
    return snapshots.take("disclosure-export", _export_load, sharing_settings)


initial_state = starting_from("export_data", when="exporters")


@pytest.fixture
def settings(data_dir: Path, database_url: str, key_file: Path, audit_key_file: Path) -> Settings:
    return sharing_settings(data_dir, database_url, key_file, audit_key_file)


@pytest.fixture
def exporters(export_data: Snapshot[dict[str, Any]], loading: Loading) -> dict[str, Any]:
    return export_data.value_in(loading)


def _export_bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _export_events(platform: Platform, action: str) -> list[AuditEvent]:
    with platform.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
        )


# T47: formula injection and file names


def test_T47_csv_text_cells_are_neutralised_and_numbers_stay_numbers() -> None:
    """The exporter itself, on text no contract lets through today (every text column of the
    products is a code list or a pattern): each field a spreadsheet would run is prefixed with
    ' and quoted; a negative number in a numeric column stays a bare number."""
    rows = [{"area": text, "change_n": -3, "change_pct": -12.5} for text in _EXPORT_HOSTILE]
    result = ProductResult(
        product="hotspots",
        level=2,
        parameters={},
        generated_at="2024-05-01T09:00:00Z",
        sources={},
        columns=["area", "change_n", "change_pct"],
        rows=rows,
        notes={"suppression": {"applied": False}},
        column_types={"area": "string", "change_n": "integer", "change_pct": "float"},
    )
    body = formats.to_csv(result)
    lines = body.split(b"\r\n")
    for line in lines[1 : 1 + len(_EXPORT_HOSTILE)]:
        cell = line[: line.rindex(b",-3,")]
        assert cell.startswith(b"\"'"), cell
        assert line.endswith(b",-3,-12.5")
    parsed = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert [row[0] for row in parsed[1:]] == ["'" + text for text in _EXPORT_HOSTILE]
    assert all(row[1] == "-3" for row in parsed[1:])


def test_T47_csv_over_the_api_keeps_negative_changes_numeric_and_names_the_file(
    api: TestClient, exporters: dict[str, Any]
) -> None:
    """A comparison's negative change_n is a number in the CSV; the file name is the server's
    (the product id, known to the catalogue), and a hostile name in the URL is a 404 that sets
    no header from it."""
    params = {
        "from": "2022-01-01",
        "to": "2023-01-01",
        "compare_from": "2023-01-01",
        "compare_to": "2024-01-01",
        "by": "csp",
        "format": "csv",
    }
    response = api.get(
        "/v1/products/sv-counts", params=params, headers=_export_bearer(exporters["analyst_token"])
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="sv-counts.csv"'
    parsed = list(csv.DictReader(io.StringIO(response.text, newline="")))
    negative = [row for row in parsed if row["change_n"].startswith("-")]
    assert negative, "an empty year against a full one must have negative changes"
    assert all(int(row["change_n"]) < 0 for row in negative)
    assert all(not row["csp"].startswith("'") for row in parsed)
    raw = response.content.split(b"\r\n")[1]
    assert b",-" in raw and b"'-" not in raw
    hostile = api.get(
        '/v1/products/a"%0D%0ASet-Cookie:x.csv',
        params={"format": "csv"},
        headers=_export_bearer(exporters["analyst_token"]),
    )
    assert hostile.status_code in (400, 404)  # control characters in a path are 400 at the edge
    assert "set-cookie" not in hostile.headers
    assert "content-disposition" not in hostile.headers


# T48: an export is the API's answer, and is audited with its rows


def test_T48_csv_of_a_suppressed_reader_is_the_json_answer(
    api: TestClient, platform: Platform, exporters: dict[str, Any]
) -> None:
    headers = _export_bearer(exporters["reader_token"])
    params = {**_EXPORT_PERIOD, "by": "csp,weekday"}
    document = api.get("/v1/products/sv-counts", params=params, headers=headers).json()
    exported = api.get(
        "/v1/products/sv-counts", params={**params, "format": "csv"}, headers=headers
    )
    assert exported.status_code == 200
    rows = list(csv.DictReader(io.StringIO(exported.text, newline="")))
    assert len(rows) == len(document["rows"])
    for row, shown in zip(rows, document["rows"], strict=True):
        assert row["count"] == ("" if shown["count"] is None else str(shown["count"]))
        assert row["suppressed"] == ";".join(shown.get("suppressed") or [])
    assert any(row["count"] == "" for row in rows), "some cells are withheld"
    assert all(row["count"] == "" or int(row["count"]) % 5 == 0 for row in rows)
    reads = [
        e for e in _export_events(platform, "product.read") if e.parameters.get("format") == "csv"
    ]
    assert len(reads) == 1
    assert reads[0].rows == len(rows)
    assert reads[0].details["suppressed"] is True
    assert reads[0].actor == exporters["reader"].client_id


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_T48_each_export_is_audited_with_the_sha256_of_the_file_sent(
    api: TestClient, platform: Platform, exporters: dict[str, Any], fmt: str
) -> None:
    """The file's hash, size, rows and columns are in a `product.exported` event of the
    recipient, besides the read's own event: an IG lead can prove which file went to whom."""
    params = {**_EXPORT_PERIOD, "by": "csp", "format": fmt}
    response = api.get(
        "/v1/products/sv-counts", params=params, headers=_export_bearer(exporters["reader_token"])
    )
    assert response.status_code == 200, response.text
    [exported] = _export_events(platform, "product.exported")
    assert exported.actor == exporters["reader"].client_id
    assert exported.resource == "sv-counts"
    assert exported.details["sha256"] == hashlib.sha256(response.content).hexdigest()
    assert exported.details["bytes"] == len(response.content)
    assert exported.details["format"] == fmt
    assert exported.parameters["format"] == fmt
    if fmt == "parquet":
        table = pq.read_table(io.BytesIO(response.content))
        assert exported.rows == table.num_rows
        assert exported.details["columns"] == table.column_names
    [read] = [e for e in _export_events(platform, "product.read") if e.request_id]
    assert read.request_id == exported.request_id and read.seq < exported.seq
    # A JSON answer is not a file: no export event.
    api.get(
        "/v1/products/sv-counts",
        params={**_EXPORT_PERIOD, "by": "csp"},
        headers=_export_bearer(exporters["reader_token"]),
    )
    assert len(_export_events(platform, "product.exported")) == 1


def test_T48_an_export_that_cannot_be_audited_is_not_sent(
    api: TestClient, platform: Platform, exporters: dict[str, Any]
) -> None:
    lift = refuse_audit_inserts(platform.engine, "product.exported")
    params = {**_EXPORT_PERIOD, "by": "csp", "format": "csv"}
    headers = _export_bearer(exporters["analyst_token"])
    response = api.get("/v1/products/sv-counts", params=params, headers=headers)
    assert response.status_code == 503
    assert response.json()["code"] == "AUDIT_UNAVAILABLE"
    assert "count" not in response.text and "csp" not in response.text
    lift()
    again = api.get("/v1/products/sv-counts", params=params, headers=headers)
    assert again.status_code == 200, again.text
    assert again.text.startswith('"csp","count"'), again.text[:80]
    assert len(_export_events(platform, "product.exported")) == 1


# T49: the Parquet files of Delta Sharing


def _export_query(api: TestClient, token: str, key: str) -> list[dict[str, Any]]:
    share, schema, table = key.split(".")
    response = api.post(
        f"/delta-sharing/shares/{share}/schemas/{schema}/tables/{table}/query",
        json={},
        headers=_export_bearer(token),
    )
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def _export_file(lines: list[dict[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = next(line["file"] for line in lines if "file" in line)
    return found


def test_T49_shared_parquet_is_plain_and_says_nothing_of_the_platform(
    api: TestClient, platform: Platform, exporters: dict[str, Any]
) -> None:
    """No extension types, metadata of the product only (no path, host or user id), and null
    slots read back as zeros. Parquet stores no value at all for a null (definition levels
    say where they are), so there are no slots on disk to leak; the column chunks' value
    counts show it."""
    lines = _export_query(api, exporters["reader_token"], "strategic.violence.counts_by_csp_month")
    body = api.get(_export_file(lines)["url"]).content
    parquet = pq.ParquetFile(io.BytesIO(body))
    schema = parquet.schema_arrow
    assert not any(isinstance(f.type, pa.ExtensionType) for f in schema)
    metadata = {k.decode(): v.decode(errors="replace") for k, v in (schema.metadata or {}).items()}
    assert set(metadata) <= {"together.product", "together.generated_at", "together.parameters",
                             "ARROW:schema"}  # fmt: skip
    text = json.dumps(metadata) + str(parquet.metadata.metadata)
    for secret in (
        str(platform.settings.data_dir),
        str(Path.home()),
        exporters["reader"].client_id,
        exporters["analyst"].client_id,
        "127.0.0.1",
        "testserver",
    ):
        assert secret not in text
    table = parquet.read()
    counts = table.column("count").combine_chunks()
    assert counts.null_count > 0, "the suppressed file withholds some counts"
    values = counts.buffers()[1]
    assert values is not None
    slots = memoryview(values).cast("q")[counts.offset : counts.offset + len(counts)]
    assert all(slots[i] == 0 for i in range(len(counts)) if not counts[i].is_valid)
    column = parquet.metadata.row_group(0).column(table.schema.get_field_index("count"))
    assert column.statistics is not None
    assert column.statistics.null_count == counts.null_count


# T50: delivery links


def test_T50_file_urls_are_short_lived_and_the_lifetime_is_a_setting(
    api: TestClient, platform: Platform, exporters: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert platform.settings.sharing_url_lifetime_seconds <= 300
    before = int(utcnow().timestamp())
    lines = _export_query(api, exporters["reader_token"], "strategic.violence.counts_by_csp")
    file = _export_file(lines)
    expires = file["expirationTimestamp"] // 1000
    assert before + 290 <= expires <= before + 300 + 5
    assert api.get(file["url"]).status_code == 200
    # Past its expiry (the clock moved on), the same URL opens nothing.
    later = utcnow() + timedelta(seconds=platform.settings.sharing_url_lifetime_seconds + 1)
    monkeypatch.setattr("services.sharing.service.utcnow", lambda: later)
    refused = api.get(file["url"])
    assert refused.status_code == 403 and b"PAR1" not in refused.content
    denied = _export_events(platform, "access.denied")
    assert denied[-1].reason == "url_expired"
    assert denied[-1].details["recipient"] == exporters["reader"].client_id
    # Configurable, and never longer than the catalogue's 15 minutes.
    field = Settings.model_fields["sharing_url_lifetime_seconds"]
    assert field.default == 300
    assert any(getattr(rule, "le", None) == 900 for rule in field.metadata)


def test_T50_a_url_is_bound_to_its_recipient_and_named_in_every_fetch(
    api: TestClient, platform: Platform, exporters: dict[str, Any]
) -> None:
    """The fetch's audit event names the recipient the URL was issued to; another principal
    presenting its token with it is refused; once the recipient is disabled, its URLs are
    refused too. (Connectors fetch file URLs without a bearer token, so a URL is not refused
    to an anonymous holder within its few minutes: see the notes under T50.)"""
    reader = exporters["reader"]
    lines = _export_query(api, exporters["reader_token"], "strategic.violence.counts_by_csp")
    url = _export_file(lines)["url"]
    assert api.get(url).status_code == 200
    reads = _export_events(platform, "sharing.file_read")
    assert reads[-1].actor == reader.client_id
    assert reads[-1].details["recipient"] == reader.client_id
    assert api.get(url, headers=_export_bearer(exporters["analyst_token"])).status_code == 403
    principals.disable_client(platform.admin, cli_context(), reader.client_id)
    assert api.get(url).status_code == 403
    reasons = [(e.reason, e.details.get("recipient")) for e in _export_events(
        platform, "access.denied")]  # fmt: skip
    assert reasons[-2:] == [
        ("another_recipient", reader.client_id),
        ("recipient_disabled", reader.client_id),
    ]


def test_T50_the_url_path_is_an_opaque_id(api: TestClient, exporters: dict[str, Any]) -> None:
    lines = _export_query(api, exporters["reader_token"], "strategic.violence.counts_by_csp")
    file = _export_file(lines)
    prefix, token = file["url"].rsplit("/", 1)
    assert prefix.endswith("/delta-sharing/files")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for secret in (
        "strategic",
        "violence",
        "counts_by_csp",
        "sv-counts",
        "police",
        exporters["reader"].client_id,
        file["id"],
    ):
        assert secret not in file["url"]
        assert secret.encode() not in raw
    assert len(token) <= 200
    # Each query gives a new URL for the same file: a URL is no stable name of the data.
    again = _export_file(
        _export_query(api, exporters["reader_token"], "strategic.violence.counts_by_csp")
    )
    assert again["id"] == file["id"] and again["url"] != file["url"]
    assert urls.URL_LIFETIME_SECONDS <= 300
