"""Acceptance: the official Delta Sharing connector against a running platform.

A real server process, data pushed through the real API, profiles from ``/v1/sharing/profile``
and ``delta_sharing`` (PyPI, in an environment of its own: ``make install`` makes
``.venv-connector``) reading them: each reader lists exactly the tables the policy lets it read
and loads exactly the rows the JSON API gives for the same product and parameters. The
connector reaches nothing but the platform: every host its process resolves or connects to is
recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.audit.models import AuditEvent
from services.demo.generate import write_dataset_csv
from services.kit.settings import Settings
from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.fixtures.snapshots import Loading, Snapshot, Snapshots, starting_from
from tests.ingestion.helpers import police_rows, to_csv
from tests.live import LiveServer, live_token
from tests.sharing.helpers import (
    LEVEL1_TABLES,
    LEVEL2_TABLES,
    PARAMS,
    PRODUCT,
    api_rows,
    sharing_settings,
)

pytestmark = pytest.mark.slow

_ROOT = Path(__file__).resolve().parents[2]
CONNECTOR_PYTHON = _ROOT / ".venv-connector" / "bin" / "python"
CLIENT_SCRIPT = Path(__file__).with_name("connector_client.py")


def connector(profile: Path, load: list[str] | None = None) -> dict[str, Any]:
    """The official connector, run as an analyst would: list the tables, load some."""
    if not CONNECTOR_PYTHON.exists():
        pytest.fail("the connector's environment is missing: run `make install`")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    result = subprocess.run(
        [
            str(CONNECTOR_PYTHON),
            str(CLIENT_SCRIPT),
            json.dumps({"profile": str(profile), "load": load or []}),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=profile.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    # Nothing but the platform on this machine.
    assert answer["contacted"], "the connector's connections were not observed"
    assert set(answer["contacted"]) <= {"127.0.0.1", "localhost"}, answer["contacted"]
    return answer


@pytest.fixture
def settings(data_dir: Path, database_url: str, key_file: Path, audit_key_file: Path) -> Settings:
    return sharing_settings(data_dir, database_url, key_file, audit_key_file)


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(
        settings,
        tmp_path / "server.log",
        TOGETHER_SHARING_FILE=str(settings.sharing_file),
        TOGETHER_SHARING_REFRESH_SECONDS="0",
    )
    yield live
    live.stop()


def _push(loading: Loading, client: ClientCredentials, dataset: str, body: bytes) -> None:
    response = loading.api.post(
        f"/v1/datasets/{dataset}/uploads",
        params={"mode": "replace"},
        content=body,
        headers={
            "Authorization": f"Bearer {loading.token_for(client)}",
            "Content-Type": "text/csv",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert response.status_code == 201, response.text


def load_readers(loading: Loading) -> dict[str, ClientCredentials]:
    """Police and IMD data pushed through the API; a client per kind of reader."""
    make_client = loading.make_client
    _push(loading, make_client(), "police.occurrences", to_csv(police_rows(1500, seed=5)))
    imd = loading.folder / "imd.csv"
    write_dataset_csv("la.imd", imd)
    _push(loading, make_client(org="vru"), "la.imd", imd.read_bytes())
    return {
        "reader": make_client(org="vru", roles=("l1_reader",)),
        "analyst": make_client(org="vru", roles=("l1_analyst",)),
        "local": make_client(org="southampton-cc", roles=("l2_reader",), areas=("Southampton",)),
        "partner": make_client(org="hampshire-constabulary", roles=("partner_system",)),
    }


@pytest.fixture(scope="session")
def readers_data(snapshots: Snapshots) -> Snapshot[dict[str, ClientCredentials]]:
    return snapshots.take("sharing-connector", load_readers, sharing_settings)


# Every test here starts its server on a copy of the loaded data.
initial_state = starting_from("readers_data")


@pytest.fixture
def readers(
    readers_data: Snapshot[dict[str, ClientCredentials]], loading: Loading, server: LiveServer
) -> dict[str, ClientCredentials]:
    return readers_data.value_in(loading)


def _profile(server: LiveServer, client: ClientCredentials, path: Path) -> Path:
    token = live_token(server, client.client_id, client.client_secret)
    response = httpx.get(
        f"{server.url}/v1/sharing/profile", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    path.write_text(response.text)
    return path


def _api_document(server: LiveServer, client: ClientCredentials, table: str) -> dict[str, Any]:
    token = live_token(server, client.client_id, client.client_secret)
    response = httpx.get(
        f"{server.url}/v1/products/{PRODUCT[table]}",
        params=PARAMS[table],
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _events(platform: Platform, action: str, actor: str) -> list[AuditEvent]:
    with platform.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == action, AuditEvent.actor == actor)
                .order_by(AuditEvent.seq)
            )
        )


def test_the_connector_reads_what_the_api_returns(
    server: LiveServer,
    readers: dict[str, ClientCredentials],
    platform: Platform,
    tmp_path: Path,
) -> None:
    profiles = {
        name: _profile(server, c, tmp_path / f"{name}.share") for name, c in readers.items()
    }
    # A Level 1 reader sees the Level 1 tables and only those, and loads them; an analyst the
    # same tables unsuppressed; a Level 2 reader its own; a principal with no Level 1 grant sees
    # nothing.
    month = "strategic.violence.counts_by_csp_month"
    loads = {"reader": sorted(LEVEL1_TABLES), "analyst": [month], "local": sorted(LEVEL2_TABLES)}
    answers = {name: connector(profiles[name], loads.get(name)) for name in profiles}
    assert set(answers["reader"]["tables"]) == LEVEL1_TABLES
    assert set(answers["analyst"]["tables"]) == LEVEL1_TABLES
    assert set(answers["local"]["tables"]) == LEVEL2_TABLES
    assert answers["partner"]["tables"] == []
    loaded = {
        (name, key): rows
        for name, answer in answers.items()
        for key, rows in answer["rows"].items()
    }
    assert len(loaded) == sum(len(tables) for tables in loads.values())

    for (name, key), rows in loaded.items():
        table = key.split(".")[-1]
        expected = api_rows(_api_document(server, readers[name], table))
        assert expected, key
        assert rows == expected, (name, key)

    # The suppressed reader's table withholds small counts; the analyst's does not.
    assert any(row["count"] is None for row in loaded[("reader", month)])
    assert all(row["count"] is not None for row in loaded[("analyst", month)])
    assert any(0 < row["count"] < 5 for row in loaded[("analyst", month)])
    # The Level 2 reader's rows are its own area's.
    assert {row["csp"] for row in loaded[("local", "local.hotspots.hotspots_lsoa")]} == {
        "Southampton"
    }

    # Each load is one audited query and at least one audited file read, by the recipient.
    for name, count in (("reader", 3), ("analyst", 1), ("local", 1)):
        actor = readers[name].client_id
        queries = _events(platform, "sharing.queried", actor)
        reads = _events(platform, "sharing.file_read", actor)
        assert len(queries) == count, name
        assert {e.resource for e in queries} == {e.resource for e in reads}
        assert {e.details["file"] for e in queries} == {e.details["file"] for e in reads}
    assert _events(platform, "sharing.queried", readers["partner"].client_id) == []
    issued = _events(platform, "sharing.profile_issued", readers["reader"].client_id)
    assert len(issued) == 1


def test_an_oauth_client_credentials_profile(
    server: LiveServer,
    readers: dict[str, ClientCredentials],
    tmp_path: Path,
) -> None:
    client = readers["analyst"]
    token = live_token(server, client.client_id, client.client_secret)
    response = httpx.get(
        f"{server.url}/v1/sharing/profile",
        params={"type": "oauth_client_credentials"},
        headers={"Authorization": f"Bearer {token}"},
    )
    profile = response.json()
    assert profile["clientSecret"] == ""
    # The analyst adds the secret they were given; the connector fetches its own tokens.
    profile["clientSecret"] = client.client_secret
    path = tmp_path / "oauth.share"
    path.write_text(json.dumps(profile))
    answer = connector(path, ["strategic.violence.flags"])
    assert set(answer["tables"]) == LEVEL1_TABLES
    rows = answer["rows"]["strategic.violence.flags"]
    assert rows == api_rows(_api_document(server, client, "flags"))
