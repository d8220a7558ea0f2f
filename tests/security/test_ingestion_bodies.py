"""T22: no endpoint parses multipart bodies, and the one form the platform reads (the token
endpoint's) cannot be flooded or smuggled into."""

from __future__ import annotations

import time
from typing import Any

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.fixtures.app import ClientCredentials, MakeClient
from tests.ingestion.helpers import police_rows, to_csv


def test_T22_no_route_reads_a_multipart_or_form_body(api: TestClient) -> None:
    """FastAPI parses multipart and urlencoded bodies only for File/Form parameters; there are none,
    so the parser that carried CVE-2024-24762 and its kin never runs on a request."""
    declared = []
    for route in api.app.routes:  # type: ignore[attr-defined]
        if not isinstance(route, APIRoute):
            continue
        for field in route.dependant.body_params:
            declared.append((route.path, field.name, type(field.field_info).__name__))
    assert not [d for d in declared if d[2] in {"Form", "File"}], declared


def test_T22_multipart_upload_is_refused_unread(api: TestClient, police_token: str) -> None:
    boundary = "\\" * 50
    body = (f"--{boundary}\r\n" + 'Content-Disposition: form-data; name="f"\r\n\r\nx\r\n') * 2000
    response = api.post(
        "/v1/datasets/police.occurrences/uploads?mode=replace",
        content=body.encode(),
        headers={
            "Authorization": f"Bearer {police_token}",
            "Content-Type": f'multipart/form-data; boundary="{boundary}"',
            "Idempotency-Key": "t22-multipart",
        },
    )
    assert response.status_code == 415, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_T22_token_form_with_100000_fields_is_refused_in_bounded_time(
    api: TestClient, make_client: MakeClient
) -> None:
    credentials = make_client()
    flood = "&".join(f"f{i}=x" for i in range(100_000))
    started = time.monotonic()
    response = api.post(
        "/oauth/token",
        content=f"grant_type=client_credentials&{flood}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=(credentials.client_id, credentials.client_secret),
    )
    assert response.status_code in {400, 413}, response.text
    assert "access_token" not in response.text
    # Bounded, not timed: a parser that read all 100,000 fields would still answer, but a hang
    # or a quadratic parse would not within this.
    assert time.monotonic() - started < 10


def test_T22_semicolons_do_not_smuggle_parameters(api: TestClient, make_client: MakeClient) -> None:
    """`;` is not a separator (the urlencoded standard): `grant_type=x;client_id=y` is one value."""
    credentials: ClientCredentials = make_client()
    response = api.post(
        "/oauth/token",
        content=(
            f"grant_type=client_credentials;client_id={credentials.client_id}"
            f"&client_secret={credentials.client_secret}"
        ).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code in {400, 401}, response.text
    assert "access_token" not in response.text


def _lead_push(api: TestClient, token: str, body: bytes, content_type: str, key: str) -> Any:
    return api.post(
        "/v1/datasets/police.occurrences/uploads?mode=replace",
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": content_type,
            "Idempotency-Key": key,
        },
    )


def test_T21_a_windows_1252_csv_is_read_when_declared_and_named_when_not(
    api: TestClient, police_token: str
) -> None:
    rows = police_rows(20, seed=3)
    rows[0]["suspect_surname"] = "Zoë-Müller"
    body = to_csv(rows).decode().encode("cp1252")
    undeclared = _lead_push(api, police_token, body, "text/csv", "t21-undeclared")
    assert undeclared.status_code == 422, undeclared.text
    assert "Windows-1252" in undeclared.text
    declared = _lead_push(api, police_token, body, "text/csv; charset=windows-1252", "t21-cp1252")
    assert declared.status_code == 201, declared.text
    assert declared.json()["rows"] == 20
    utf8 = _lead_push(api, police_token, to_csv(rows), "text/csv", "t21-utf8")
    assert utf8.status_code == 201, utf8.text


def test_T23_an_unknown_charset_is_415(api: TestClient, police_token: str) -> None:
    response = _lead_push(
        api, police_token, b"a\n1\n", "application/x-ndjson; charset=windows-1252", "t23-charset"
    )
    assert response.status_code == 415, response.text
    assert "UTF-8" in response.text
