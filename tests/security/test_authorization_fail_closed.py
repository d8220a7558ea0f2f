"""T13: decisions fail closed. The policy is files read at start (no adapter database to lose),
so the store that can fail is the metadata database; a read then answers 503 with no data,
never 200 and never an answer from a cache. X-Forwarded-For is never read for a decision."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event

from services.platform import Platform
from tests.fixtures.app import MakeClient, TokenFor

_PERIOD = {"from": "2023-01-01", "to": "2024-01-01"}


def test_T13_reads_fail_closed_when_the_database_is_down(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    """Fault-injecting wrapper: every statement fails in the driver with its own
    OperationalError, as when the server stops (a real cut is T34's test)."""
    tokens = {
        role: token_for(make_client(org="vru", roles=(role,)))
        for role in ("l1_reader", "l2_reader", "l3_practitioner")
    }
    reads = {
        "l1_reader": ("/v1/products/sv-counts", {**_PERIOD, "by": "csp"}),
        "l2_reader": ("/v1/products/hotspots", _PERIOD),
        "l3_practitioner": ("/v1/products/repeat-suspects", {"as_of": "2024-01-01"}),
    }
    # Warm every cache a read could fall back on.
    for role, (path, params) in reads.items():
        api.get(path, params=params, headers={"Authorization": f"Bearer {tokens[role]}"})
    dbapi = platform.engine.dialect.loaded_dbapi

    def refuse(*_: Any) -> None:
        raise dbapi.OperationalError("server closed the connection unexpectedly")

    event.listen(platform.engine, "do_execute", refuse)
    event.listen(platform.engine, "do_execute_no_params", refuse)
    try:
        for role, (path, params) in reads.items():
            response = api.get(
                path,
                params=params,
                headers={
                    "Authorization": f"Bearer {tokens[role]}",
                    "X-Purpose": "safeguarding",
                    "X-Case-Reference": "CASE-13",
                },
            )
            assert response.status_code == 503, (role, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "rows" not in response.json()
    finally:
        event.remove(platform.engine, "do_execute", refuse)
        event.remove(platform.engine, "do_execute_no_params", refuse)


def test_T13_a_malformed_forwarded_for_changes_no_decision(
    api: TestClient, make_client: MakeClient, token_for: TokenFor
) -> None:
    reader = token_for(make_client(org="vru", roles=("l2_reader",), areas=("Havant",)))
    plain = api.get(
        "/v1/products/hotspots", params=_PERIOD, headers={"Authorization": f"Bearer {reader}"}
    )
    for forwarded in ("not-an-address", "::::::", "10.0.0.1, 999.1.1.1", '127.0.0.1;x="y"'):
        response = api.get(
            "/v1/products/hotspots",
            params=_PERIOD,
            headers={"Authorization": f"Bearer {reader}", "X-Forwarded-For": forwarded},
        )
        assert response.status_code == plain.status_code, (forwarded, response.text)
        assert response.status_code < 500
