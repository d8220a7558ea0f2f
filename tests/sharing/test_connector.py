"""Acceptance: the official Delta Sharing connector against a running platform.

A real server process, data pushed through the real API, profiles from ``/v1/sharing/profile``
and ``delta_sharing`` (PyPI) reading them: each reader lists exactly the tables the policy lets
it read and loads exactly the rows the JSON API gives for the same product and parameters. The
connector reaches nothing but the platform: every socket it opens is recorded.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import delta_sharing
import httpx
import pytest
from sqlalchemy import select

from gateway.platform import Platform
from services.audit.models import AuditEvent
from services.demo.generate import write_dataset_csv
from services.kit.settings import Settings
from tests.conftest import ClientCredentials
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

# Every address the connector resolves or connects to while a test records (audit hooks cannot
# be removed, so the hook stays installed and records only when asked).
_RECORDING: list[list[str]] = []


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _RECORDING:
        return
    if event == "socket.connect":
        address = args[1]
        _RECORDING[-1].append(str(address[0]) if isinstance(address, tuple) else str(address))
    elif event == "socket.getaddrinfo":
        _RECORDING[-1].append(str(args[0]))


sys.addaudithook(_hook)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, key_file: Path) -> Settings:
    return sharing_settings(tmp_path, database_url, key_file)


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


def _push(server: LiveServer, client: ClientCredentials, dataset: str, body: bytes) -> None:
    token = live_token(server, client.client_id, client.client_secret)
    response = httpx.post(
        f"{server.url}/v1/datasets/{dataset}/uploads",
        params={"mode": "replace"},
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv"},
        timeout=60,
    )
    assert response.status_code == 201, response.text


@pytest.fixture
def readers(
    server: LiveServer,
    make_client: Callable[..., ClientCredentials],
    tmp_path: Path,
) -> dict[str, ClientCredentials]:
    _push(server, make_client(), "police.occurrences", to_csv(police_rows(1500, seed=5)))
    imd = tmp_path / "imd.csv"
    write_dataset_csv("la.imd", imd)
    _push(server, make_client(org="vru"), "la.imd", imd.read_bytes())
    return {
        "reader": make_client(org="vru", roles=("l1_reader",)),
        "analyst": make_client(org="vru", roles=("l1_analyst",)),
        "local": make_client(org="southampton-cc", roles=("l2_reader",), areas=("Southampton",)),
        "partner": make_client(org="hampshire-constabulary", roles=("partner_system",)),
    }


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


def _plain(value: Any) -> Any:
    """A pandas cell as the JSON API writes it (NaN for null, numpy arrays for lists)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _tables(profile: Path) -> set[str]:
    client = delta_sharing.SharingClient(str(profile))
    return {f"{t.share}.{t.schema}.{t.name}" for t in client.list_all_tables()}


def _load(profile: Path, key: str) -> list[dict[str, Any]]:
    frame = delta_sharing.load_as_pandas(f"{profile}#{key}")
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


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
    _RECORDING.append([])
    try:
        # A Level 1 reader sees the Level 1 tables and only those; Level 2 its own; a principal
        # with no Level 1 grant sees nothing.
        assert _tables(profiles["reader"]) == LEVEL1_TABLES
        assert _tables(profiles["analyst"]) == LEVEL1_TABLES
        assert _tables(profiles["local"]) == LEVEL2_TABLES
        assert _tables(profiles["partner"]) == set()

        loaded: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for name, keys in (
            ("reader", LEVEL1_TABLES),
            ("analyst", {"strategic.violence.counts_by_csp_month"}),
            ("local", LEVEL2_TABLES),
        ):
            for key in sorted(keys):
                loaded[(name, key)] = _load(profiles[name], key)
    finally:
        contacted = _RECORDING.pop()
    assert contacted, "the connector's connections were not observed"
    assert set(contacted) <= {"127.0.0.1", "localhost"}, contacted

    for (name, key), rows in loaded.items():
        table = key.split(".")[-1]
        expected = api_rows(_api_document(server, readers[name], table))
        assert expected, key
        assert rows == expected, (name, key)

    # The suppressed reader's table withholds small counts; the analyst's does not.
    month = "strategic.violence.counts_by_csp_month"
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
    assert _tables(path) == LEVEL1_TABLES
    rows = _load(path, "strategic.violence.flags")
    assert rows == api_rows(_api_document(server, client, "flags"))
