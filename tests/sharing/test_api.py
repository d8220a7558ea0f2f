"""The Delta Sharing endpoint over HTTP: visibility by policy, variants, audit, file URLs."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.admin import principals
from services.audit.models import AuditEvent
from services.demo.generate import write_dataset_csv
from services.kit.clock import utcnow
from services.kit.settings import Settings
from services.platform import Platform
from services.sharing import urls
from services.sharing.models import SharingTableVersion
from tests.fixtures.app import cli_context
from tests.fixtures.audit_events import refuse_audit_inserts
from tests.fixtures.snapshots import Loading, Snapshot, Snapshots, starting_from
from tests.ingestion.helpers import police_rows, to_csv
from tests.sharing.helpers import LEVEL1_TABLES, LEVEL2_TABLES, PARAMS, api_rows, sharing_settings

ROLES = {
    "reader": ("l1_reader",),
    "analyst": ("l1_analyst",),
    "local": ("l2_reader",),
    "partner": ("partner_system",),
}


@pytest.fixture
def settings(data_dir: Path, database_url: str, key_file: Path, audit_key_file: Path) -> Settings:
    return sharing_settings(data_dir, database_url, key_file, audit_key_file)


def _upload(api: TestClient, token: str, dataset: str, body: bytes) -> None:
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


def load_people(loading: Loading) -> dict[str, Any]:
    """Police and IMD data pushed through the API; a client and token per role."""
    api, make_client, token_for = loading.api, loading.make_client, loading.token_for
    police = token_for(make_client())
    _upload(api, police, "police.occurrences", to_csv(police_rows(1500, seed=5)))
    imd = loading.folder / "imd.csv"
    write_dataset_csv("la.imd", imd)
    _upload(api, token_for(make_client(org="vru")), "la.imd", imd.read_bytes())
    found: dict[str, Any] = {"police": police}
    for name, roles in ROLES.items():
        areas = ("Southampton", "Portsmouth") if name == "local" else ()
        client = make_client(org="vru", roles=roles, areas=areas)
        found[name] = client
        found[name + "_token"] = token_for(client)
    return found


@pytest.fixture(scope="session")
def people_data(snapshots: Snapshots) -> Snapshot[dict[str, Any]]:
    return snapshots.take("sharing-api", load_people, sharing_settings)


# The tests that read the loaded data start from a copy of it; the others from nothing.
initial_state = starting_from("people_data", when="people")


@pytest.fixture
def people(people_data: Snapshot[dict[str, Any]], loading: Loading) -> dict[str, Any]:
    return people_data.value_in(loading)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _all_tables(api: TestClient, token: str) -> set[str]:
    shares = api.get("/delta-sharing/shares", headers=_bearer(token))
    assert shares.status_code == 200, shares.text
    found = set()
    for share in shares.json().get("items", []):
        tables = api.get(
            f"/delta-sharing/shares/{share['name']}/all-tables", headers=_bearer(token)
        )
        assert tables.status_code == 200
        found |= {f"{t['share']}.{t['schema']}.{t['name']}" for t in tables.json()["items"]}
    return found


def _query(api: TestClient, token: str, key: str, body: dict[str, Any] | None = None) -> Any:
    share, schema, table = key.split(".")
    return api.post(
        f"/delta-sharing/shares/{share}/schemas/{schema}/tables/{table}/query",
        json=body or {},
        headers=_bearer(token),
    )


def _lines(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def _events(platform: Platform, action: str) -> list[AuditEvent]:
    with platform.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
        )


def _file_rows(api: TestClient, url: str) -> list[dict[str, Any]]:
    response = api.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    rows: list[dict[str, Any]] = pq.read_table(io.BytesIO(response.content)).to_pylist()
    return rows


def test_visibility_follows_the_policy(api: TestClient, people: dict[str, Any]) -> None:
    assert _all_tables(api, people["reader_token"]) == LEVEL1_TABLES
    assert _all_tables(api, people["analyst_token"]) == LEVEL1_TABLES
    assert _all_tables(api, people["local_token"]) == LEVEL2_TABLES
    # No Level 1 grant: nothing at all, and no share to look into.
    assert _all_tables(api, people["partner_token"]) == set()
    response = api.get("/delta-sharing/shares/strategic", headers=_bearer(people["partner_token"]))
    assert response.status_code == 404
    assert response.json()["errorCode"] == "RESOURCE_DOES_NOT_EXIST"
    schemas = api.get(
        "/delta-sharing/shares/STRATEGIC/schemas", headers=_bearer(people["reader_token"])
    )
    assert schemas.json()["items"] == [{"name": "violence", "share": "strategic"}]


def test_errors_and_pagination_follow_the_protocol(
    api: TestClient, people: dict[str, Any], platform: Platform
) -> None:
    missing = api.get("/delta-sharing/shares")
    assert missing.status_code == 401
    assert missing.json()["errorCode"] == "UNAUTHENTICATED"
    assert missing.json()["code"] == "NOT_AUTHENTICATED"  # and still problem details

    token = people["reader_token"]
    first = api.get(
        "/delta-sharing/shares/strategic/all-tables",
        params={"maxResults": 2},
        headers=_bearer(token),
    ).json()
    assert len(first["items"]) == 2
    rest = api.get(
        "/delta-sharing/shares/strategic/all-tables",
        params={"maxResults": 2, "pageToken": first["nextPageToken"]},
        headers=_bearer(token),
    ).json()
    assert len(rest["items"]) == len(LEVEL1_TABLES) - 2 and "nextPageToken" not in rest
    for params in ({"pageToken": "bm90LWEtdG9rZW4"}, {"maxResults": -1}, {"maxResults": "x"}):
        bad = api.get("/delta-sharing/shares", params=params, headers=_bearer(token))
        assert bad.status_code == 400, params
        assert bad.json()["errorCode"] == "INVALID_PARAMETER_VALUE"

    unknown = _query(api, token, "strategic.violence.nothing")
    assert unknown.status_code == 404
    # A Level 2 table for a Level 1 reader: refused and audited.
    refused = _query(api, token, "local.hotspots.hotspots_lsoa")
    assert refused.status_code == 403
    assert refused.json()["errorCode"] == "PERMISSION_DENIED"
    denial = _events(platform, "access.denied")[-1]
    assert denial.resource == "local.hotspots.hotspots_lsoa"
    assert denial.resource_type == "sharing_table"
    # A table of another area than the Level 2 reader's: not listed, and refused.
    elsewhere = _query(api, people["local_token"], "local.hotspots.hotspots_havant")
    assert elsewhere.status_code == 403
    assert _events(platform, "access.denied")[-1].reason == "outside the reader's areas"
    history = _query(api, token, "strategic.violence.flags", {"version": 999})
    assert history.status_code == 400
    changes = api.get(
        "/delta-sharing/shares/strategic/schemas/violence/tables/flags/changes",
        params={"startingVersion": 0},
        headers=_bearer(token),
    )
    assert changes.status_code == 400


@pytest.mark.parametrize("table", sorted(LEVEL1_TABLES | LEVEL2_TABLES))
def test_table_rows_equal_the_json_api(
    api: TestClient, people: dict[str, Any], platform: Platform, table: str
) -> None:
    name = table.split(".")[-1]
    product = {"counts_by_csp": "sv-counts", "counts_by_csp_month": "sv-counts"}.get(
        name, "hotspots" if name.startswith("hotspots") else "sv-flags"
    )
    readers = ["local"] if table in LEVEL2_TABLES else ["reader", "analyst"]
    for reader in readers:
        token = people[reader + "_token"]
        lines = _lines(_query(api, token, table))
        assert lines[0] == {"protocol": {"minReaderVersion": 1}}
        metadata = lines[1]["metaData"]
        assert metadata["format"] == {"provider": "parquet"}
        assert metadata["partitionColumns"] == []
        configuration = metadata["configuration"]
        assert json.loads(configuration["together.parameters"])["from"] == "2023-01-01"
        files = [line["file"] for line in lines[2:]]
        assert len(files) == 1
        shared = _file_rows(api, files[0]["url"])
        document = api.get(
            f"/v1/products/{product}", params=PARAMS[name], headers=_bearer(token)
        ).json()
        assert shared == api_rows(document)
        assert len(shared) == json.loads(files[0]["stats"])["numRecords"]
        schema = json.loads(metadata["schemaString"])
        assert [f["name"] for f in schema["fields"]] == list(api_rows(document)[0])
        assert configuration["together.suppressed"] == str(reader != "analyst").lower()
        assert configuration["together.areas"] == (
            "Portsmouth,Southampton" if reader == "local" else "all"
        )


def test_suppressed_reader_gets_the_suppressed_file(
    api: TestClient, people: dict[str, Any], platform: Platform
) -> None:
    key = "strategic.violence.counts_by_csp_month"
    suppressed = _lines(_query(api, people["reader_token"], key))
    raw = _lines(_query(api, people["analyst_token"], key))
    reader_rows = _file_rows(api, suppressed[2]["file"]["url"])
    analyst_rows = _file_rows(api, raw[2]["file"]["url"])
    assert any(row["count"] is None for row in reader_rows)
    assert all(row["count"] is not None for row in analyst_rows)
    assert any(0 < row["count"] < 5 for row in analyst_rows)
    assert "suppressed" not in analyst_rows[0]
    # Two variants, two versions of one table, two different files.
    assert suppressed[2]["file"]["id"] != raw[2]["file"]["id"]
    with platform.sessions() as session:
        versions = session.scalars(
            select(SharingTableVersion).where(SharingTableVersion.table_key == key)
        ).all()
    assert sorted((v.version, v.suppressed) for v in versions) == [(1, True), (2, False)]
    # Asking again changes nothing: the same version, materialised once.
    again = _lines(_query(api, people["reader_token"], key))
    assert again[2]["file"]["id"] == suppressed[2]["file"]["id"]


def test_a_new_upload_makes_a_new_version(api: TestClient, people: dict[str, Any]) -> None:
    token = people["reader_token"]
    url = "/delta-sharing/shares/strategic/schemas/violence/tables/counts_by_csp/version"
    first = api.get(url, headers=_bearer(token))
    assert first.status_code == 200
    before = int(first.headers["delta-table-version"])
    head = api.head(
        "/delta-sharing/shares/strategic/schemas/violence/tables/counts_by_csp",
        headers=_bearer(token),
    )
    assert int(head.headers["delta-table-version"]) == before
    _upload(api, people["police"], "police.occurrences", to_csv(police_rows(1600, seed=6)))
    after = int(api.get(url, headers=_bearer(token)).headers["delta-table-version"])
    assert after > before
    metadata = api.get(
        "/delta-sharing/shares/strategic/schemas/violence/tables/counts_by_csp/metadata",
        headers=_bearer(token),
    )
    assert int(metadata.headers["delta-table-version"]) == after
    assert metadata.headers["delta-sharing-capabilities"] == "responseformat=parquet"
    sources = json.loads(_lines(metadata)[1]["metaData"]["configuration"]["together.sources"])
    assert sources == {"police.occurrences": 2}


def test_every_query_and_file_read_is_audited(
    api: TestClient, people: dict[str, Any], platform: Platform
) -> None:
    client = people["reader"]
    lines = _lines(_query(api, people["reader_token"], "strategic.violence.flags"))
    queried = _events(platform, "sharing.queried")
    assert len(queried) == 1
    event = queried[0]
    assert event.actor == client.client_id and event.resource == "strategic.violence.flags"
    assert event.level == 1 and event.details["suppressed"] is True
    assert event.parameters["from"] == "2023-01-01"
    assert event.rows == json.loads(lines[2]["file"]["stats"])["numRecords"]
    assert _events(platform, "sharing.file_read") == []
    url = lines[2]["file"]["url"]
    # HEAD gives the size and not a byte of the file: checked, not a read.
    assert api.head(url).status_code == 200
    assert _events(platform, "sharing.file_read") == []
    api.get(url)
    api.get(url, headers={"Range": "bytes=0-9"})
    reads = _events(platform, "sharing.file_read")
    assert [e.actor for e in reads] == [client.client_id] * 2
    assert reads[0].details["file"] == lines[2]["file"]["id"]
    assert reads[1].details["range"] == "bytes=0-9"


def _refused(api: TestClient, url: str, **kwargs: Any) -> None:
    response = api.get(url, **kwargs)
    assert response.status_code == 403
    assert b"PAR1" not in response.content
    assert response.json()["errorCode"] == "PERMISSION_DENIED"


def test_tampered_expired_and_foreign_urls_are_refused(
    api: TestClient, people: dict[str, Any], platform: Platform
) -> None:
    lines = _lines(_query(api, people["reader_token"], "strategic.violence.counts_by_csp"))
    url = lines[2]["file"]["url"]
    prefix, token = url.rsplit("/", 1)
    # Opaque: nothing of the recipient, the file or the table can be read in it.
    for secret in (people["reader"].client_id, lines[2]["file"]["id"], "counts_by_csp"):
        assert secret not in url
    assert prefix.endswith("/delta-sharing/files")
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    _refused(api, f"{prefix}/{flipped}")
    _refused(api, f"{prefix}/not-a-token")
    grant = urls.FileGrant(
        lines[2]["file"]["id"], people["reader"].client_id, int(utcnow().timestamp()) - 1
    )
    _refused(api, f"{prefix}/{urls.seal(platform.sharing.url_key, grant)}")
    # Another principal presenting its own token with the URL.
    _refused(api, url, headers=_bearer(people["analyst_token"]))
    # A URL sealed with another key (another platform).
    _refused(api, f"{prefix}/{urls.seal(b'k' * 32, grant)}")
    reasons = [e.reason for e in _events(platform, "access.denied")]
    assert reasons == [
        "url_tampered",
        "url_malformed",
        "url_expired",
        "another_recipient",
        "url_tampered",
    ]
    assert all(e.actor is None for e in _events(platform, "access.denied"))
    # The recipient's own URL still works with or without its token.
    assert api.get(url, headers=_bearer(people["reader_token"])).status_code == 200
    assert api.get(url).status_code == 200


def test_urls_follow_the_recipients_current_state(
    api: TestClient, people: dict[str, Any], platform: Platform
) -> None:
    reader = people["reader"]
    lines = _lines(_query(api, people["reader_token"], "strategic.violence.counts_by_csp"))
    url = lines[2]["file"]["url"]
    assert api.get(url).status_code == 200
    # Promoted to analyst: the suppressed file is no longer the one this recipient reads.
    principals.set_roles(
        platform.admin, cli_context(), reader.client_id, principals.grants_for(["l1_analyst"], [])
    )
    _refused(api, url)
    principals.disable_client(platform.admin, cli_context(), reader.client_id)
    _refused(api, url)
    reasons = [e.reason for e in _events(platform, "access.denied")]
    assert reasons == ["disclosure_changed", "recipient_disabled"]


def test_profiles(api: TestClient, people: dict[str, Any], platform: Platform) -> None:
    response = api.get("/v1/sharing/profile", headers=_bearer(people["reader_token"]))
    assert response.status_code == 200
    assert "attachment" in response.headers["content-disposition"]
    profile = response.json()
    assert profile["shareCredentialsVersion"] == 1
    assert profile["endpoint"] == "http://testserver/delta-sharing"
    assert profile["expirationTime"].endswith("Z")
    token = profile["bearerToken"]
    assert _all_tables(api, token) == LEVEL1_TABLES
    # Scoped to sharing: the rest of the API refuses it.
    assert api.get("/v1/products", headers=_bearer(token)).status_code == 401
    issued = _events(platform, "sharing.profile_issued")
    assert [e.actor for e in issued] == [people["reader"].client_id]
    assert issued[0].details["type"] == "bearer_token"
    oauth = api.get(
        "/v1/sharing/profile",
        params={"type": "oauth_client_credentials"},
        headers=_bearer(people["reader_token"]),
    ).json()
    assert oauth["tokenEndpoint"] == "http://testserver/oauth/token"
    assert oauth["clientId"] == people["reader"].client_id and oauth["clientSecret"] == ""
    bad = api.get(
        "/v1/sharing/profile", params={"type": "basic"}, headers=_bearer(people["reader_token"])
    )
    assert bad.status_code == 400
    # Disabled: the profile's token stops working at once.
    principals.disable_client(platform.admin, cli_context(), people["reader"].client_id)
    assert api.get("/delta-sharing/shares", headers=_bearer(token)).status_code == 401


def test_no_audit_no_file_url(api: TestClient, people: dict[str, Any], platform: Platform) -> None:
    """A query that cannot be audited gives 503 and no file URL (T25)."""
    refuse_audit_inserts(platform.engine, "sharing.queried")
    response = _query(api, people["reader_token"], "strategic.violence.flags")
    assert response.status_code == 503
    assert response.json()["errorCode"] == "TEMPORARILY_UNAVAILABLE"
    assert "/files/" not in response.text


def test_no_audit_no_bytes(api: TestClient, people: dict[str, Any], platform: Platform) -> None:
    """A file read that cannot be audited gives 503 and not a byte of the file (T25)."""
    lines = _lines(_query(api, people["reader_token"], "strategic.violence.flags"))
    refuse_audit_inserts(platform.engine, "sharing.file_read")
    response = api.get(lines[2]["file"]["url"])
    assert response.status_code == 503
    assert b"PAR1" not in response.content


def test_the_delta_response_format(api: TestClient, people: dict[str, Any]) -> None:
    """Asked for delta only, the answer wraps Delta log actions; parquet is preferred."""
    token = people["reader_token"]
    key = "strategic.violence.counts_by_csp"
    both = {"delta-sharing-capabilities": "responseformat=delta,parquet;readerfeatures=x"}
    parquet = _query(api, token, key)
    mixed = api.post(
        "/delta-sharing/shares/strategic/schemas/violence/tables/counts_by_csp/query",
        json={},
        headers={**_bearer(token), **both},
    )
    assert mixed.headers["delta-sharing-capabilities"] == "responseformat=parquet"
    delta = api.post(
        "/delta-sharing/shares/strategic/schemas/violence/tables/counts_by_csp/query",
        json={},
        headers={**_bearer(token), "delta-sharing-capabilities": "ResponseFormat=Delta"},
    )
    assert delta.headers["delta-sharing-capabilities"] == "responseformat=delta"
    lines = _lines(delta)
    assert lines[0] == {
        "protocol": {"deltaProtocol": {"minReaderVersion": 1, "minWriterVersion": 2}}
    }
    metadata = lines[1]["metaData"]
    plain = _lines(parquet)[1]["metaData"]
    assert metadata["version"] == int(delta.headers["delta-table-version"])
    assert metadata["deltaMetadata"]["schemaString"] == plain["schemaString"]
    assert metadata["deltaMetadata"]["format"] == {"provider": "parquet", "options": {}}
    file = lines[2]["file"]
    add = file["deltaSingleAction"]["add"]
    assert add["dataChange"] is True and add["partitionValues"] == {}
    assert file["id"] == _lines(parquet)[2]["file"]["id"]
    assert _file_rows(api, add["path"]) == _file_rows(api, _lines(parquet)[2]["file"]["url"])
    bad = api.get(
        "/delta-sharing/shares/strategic/schemas/violence/tables/counts_by_csp/metadata",
        headers={**_bearer(token), "delta-sharing-capabilities": "responseformat=csv"},
    )
    assert bad.status_code == 400


def test_concurrent_materialisations_keep_one_version(
    api: TestClient, people: dict[str, Any], platform: Platform
) -> None:
    """Two processes materialising the same fingerprint: one version stays, the other file goes."""
    from services.sharing import materialise

    deps = platform.sharing
    table = deps.config.find("strategic", "violence", "flags")
    snapshot = materialise.current_snapshot(
        deps.products, deps.store, table, materialise.Variant(True, None)
    )
    with platform.sessions() as session:
        fingerprint = session.scalars(
            select(SharingTableVersion.fingerprint).where(
                SharingTableVersion.table_key == table.key
            )
        ).one()
    before = [item.key for item in deps.store.list("sharing")]
    lost = materialise._store(
        deps.products.sessions,
        deps.store,
        table,
        deps.products.catalogue["sv-flags"],
        materialise.Variant(True, None),
        fingerprint,
        snapshot.parameters,
        snapshot.sources,
        snapshot.row_count,
        deps.store.local_path(snapshot.file_key).read_bytes(),
    )
    assert lost is None
    assert [item.key for item in deps.store.list("sharing")] == before
    again = materialise.current_snapshot(
        deps.products, deps.store, table, materialise.Variant(True, None)
    )
    assert (again.version, again.file_id) == (snapshot.version, snapshot.file_id)
