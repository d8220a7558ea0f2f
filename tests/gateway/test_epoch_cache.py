"""Principals and dataset versions are cached per process, and never served stale.

The database bumps a counter in the same transaction as any change (triggers, migration 0003),
so a change made by any path, even plain SQL behind the platform's back, is seen by the next
request.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import text

from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.ingestion.helpers import police_rows, to_csv

PERIOD = {"from": "2020-01-01", "to": "2030-01-01", "by": "csp"}


def test_a_client_disabled_with_plain_sql_is_refused_at_once(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
) -> None:
    client = make_client(org="vru", roles=("l1_reader",))
    headers = {"Authorization": f"Bearer {token_for(client)}"}
    for _ in range(3):  # cached by now
        assert api.get("/v1/products", headers=headers).status_code == 200
    with platform.engine.begin() as conn:
        conn.execute(
            text("UPDATE clients SET disabled = :yes WHERE client_id = :id"),
            {"yes": True, "id": client.client_id},
        )
    assert api.get("/v1/products", headers=headers).status_code == 401


def test_a_role_change_is_seen_by_the_next_request(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
) -> None:
    reader = make_client(org="vru", roles=("l1_reader",))
    admin = make_client(org="vru", roles=("admin",))
    headers = {"Authorization": f"Bearer {token_for(reader)}"}
    listed = api.get("/v1/products", headers=headers).json()["products"]
    assert {p["level"] for p in listed} == {1}
    changed = api.put(
        f"/v1/admin/clients/{reader.client_id}/roles",
        json={"roles": [{"role": "l2_reader", "areas": ["Portsmouth"]}]},
        headers={"Authorization": f"Bearer {token_for(admin)}"},
    )
    assert changed.status_code == 200, changed.text
    listed = api.get("/v1/products", headers=headers).json()["products"]
    assert {p["level"] for p in listed} == {2}


def test_a_new_version_is_read_by_the_next_request(
    api: TestClient,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
) -> None:
    police = {"Authorization": f"Bearer {token_for(make_client())}", "Content-Type": "text/csv"}
    reader = {"Authorization": f"Bearer {token_for(make_client(org='vru', roles=('l1_analyst',)))}"}
    versions = []
    for seed in (1, 2, 3):
        uploaded = api.post(
            "/v1/datasets/police.occurrences/uploads",
            params={"mode": "replace"},
            content=to_csv(police_rows(300, seed=seed)),
            headers={**police, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert uploaded.status_code == 201, uploaded.text
        for _ in range(2):
            body = api.get("/v1/products/sv-counts", params=PERIOD, headers=reader).json()
            versions.append(body["sources"]["police.occurrences"])
    assert versions == [1, 1, 2, 2, 3, 3]
