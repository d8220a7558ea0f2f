"""`TOGETHER_LOG_FORMAT=json`: a real server writes one JSON object a line, each request's lines
carry its request id and caller, and no token, secret or uploaded value is ever written."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.ingestion.helpers import police_rows, to_csv
from tests.live import LiveServer, live_token

pytestmark = pytest.mark.slow

MakeClient = Callable[..., ClientCredentials]


def test_json_logs_carry_ids_and_nothing_secret(
    platform: Platform, make_client: MakeClient, tmp_path: Path
) -> None:
    police = make_client()
    log_path = tmp_path / "server.log"
    server = LiveServer(
        platform.settings,
        log_path,
        TOGETHER_LOG_FORMAT="json",
        TOGETHER_HTTP_ACCESS_LOG="true",
    )
    rows = police_rows(20, seed=3)
    surname = next(row["suspect_surname"] for row in rows if row["suspect_surname"])
    try:
        token = live_token(server, police.client_id, police.client_secret)
        bad = httpx.get(
            server.url + "/v1/uploads", headers={"Authorization": "Bearer not-a-real-token"}
        )
        assert bad.status_code == 401
        uploaded = httpx.post(
            server.url + "/v1/datasets/police.occurrences/uploads",
            params={"mode": "replace"},
            content=to_csv(rows),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "text/csv",
                "Idempotency-Key": str(uuid.uuid4()),
            },
            timeout=30,
        )
        assert uploaded.status_code == 201, uploaded.text
        upload_request = uploaded.headers["x-request-id"]
    finally:
        server.stop()

    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
    requests = [line for line in lines if line["message"] == "http.request"]
    assert {line["status"] for line in requests} >= {200, 201, 401}
    assert all(line["request_id"] for line in requests)
    upload_lines = [line for line in lines if line.get("request_id") == upload_request]
    assert any(line["message"] == "upload accepted" for line in upload_lines)
    assert all(line.get("principal") == police.client_id for line in upload_lines)
    refused = [line for line in requests if line["status"] == 401]
    assert refused and all("principal" not in line for line in refused)
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    for secret in (token, police.client_secret, "not-a-real-token", surname):
        assert secret not in text
