"""kill -9 in the middle of an upload: the previous version stays current; a retry stores once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from services.platform import Platform
from services.storage import service as storage_service
from tests.fixtures.app import ClientCredentials
from tests.ingestion.helpers import police_rows, to_csv
from tests.live import LiveServer, live_token

pytestmark = pytest.mark.slow


def token(server: LiveServer, credentials: ClientCredentials) -> str:
    return live_token(server, credentials.client_id, credentials.client_secret)


def test_kill_during_upload_then_retry(
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    tmp_path: Path,
) -> None:
    platform.settings.idempotency_lease_seconds = 2
    credentials = make_client()
    server = LiveServer(platform.settings, tmp_path / "server.log")
    url = server.url + "/v1/datasets/police.occurrences/uploads?mode=replace"
    try:
        first = to_csv(police_rows(500, seed=3))
        headers = {
            "Authorization": f"Bearer {token(server, credentials)}",
            "Content-Type": "text/csv",
        }
        response = httpx.post(
            url,
            content=first,
            headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
            timeout=60,
        )
        assert response.status_code == 201, response.text

        big = to_csv(police_rows(60_000, seed=4))
        sent = threading.Event()

        def slow_body() -> Iterator[bytes]:
            step = 256 * 1024
            for offset in range(0, len(big), step):
                yield big[offset : offset + step]
                if offset > len(big) // 2:
                    sent.set()
                    time.sleep(0.05)

        outcome: dict[str, object] = {}

        def upload() -> None:
            try:
                outcome["response"] = httpx.post(
                    url,
                    content=slow_body(),
                    headers={**headers, "Idempotency-Key": "crash-1"},
                    timeout=60,
                )
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=upload)
        thread.start()
        assert sent.wait(30)
        server.kill()
        thread.join(30)
        assert "error" in outcome, "the upload should have been cut off by the crash"
    finally:
        server.stop()

    with platform.sessions() as session:
        info = storage_service.current_version(session, platform.storage, "police.occurrences")
    assert info is not None and info.version == 1 and info.row_count == 500
    assert sum(pq.read_metadata(path).num_rows for path in info.files) == 500

    server = LiveServer(platform.settings, tmp_path / "server2.log")
    try:
        url = server.url + "/v1/datasets/police.occurrences/uploads?mode=replace"
        headers = {
            "Authorization": f"Bearer {token(server, credentials)}",
            "Content-Type": "text/csv",
            "Idempotency-Key": "crash-1",
        }
        time.sleep(2.5)  # past the dead attempt's lease, if it had claimed the key
        retry = httpx.post(url, content=big, headers=headers, timeout=120)
        assert retry.status_code == 201, retry.text
        again = httpx.post(url, content=big, headers=headers, timeout=120)
        assert again.status_code == 201
        assert again.json() == retry.json()
    finally:
        server.stop()
    with platform.sessions() as session:
        info = storage_service.current_version(session, platform.storage, "police.occurrences")
    assert info is not None and info.version == 2 and info.row_count == 60_000
