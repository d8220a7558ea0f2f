"""SIGTERM: the server stops accepting, lets a request in flight finish, and exits 0."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from services.audit.catalogue import AuditAction
from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.fixtures.audit_events import events
from tests.ingestion.helpers import police_rows, to_csv
from tests.live import LiveServer, live_token

pytestmark = pytest.mark.slow

MakeClient = Callable[..., ClientCredentials]


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_an_upload_arriving_slowly_completes_across_sigterm(
    platform: Platform, make_client: MakeClient, tmp_path: Path
) -> None:
    police = make_client()
    server = LiveServer(platform.settings, tmp_path / "server.log")
    body = to_csv(police_rows(200, seed=5))
    chunks = [body[i : i + len(body) // 8 + 1] for i in range(0, len(body), len(body) // 8 + 1)]
    first_sent = threading.Event()
    go_on = threading.Event()

    def trickle() -> Iterator[bytes]:
        yield chunks[0]
        first_sent.set()
        go_on.wait(timeout=30)
        for chunk in chunks[1:]:
            time.sleep(0.05)
            yield chunk

    result: dict[str, httpx.Response] = {}
    try:
        token = live_token(server, police.client_id, police.client_secret)

        def send() -> None:
            result["upload"] = httpx.post(
                server.url + "/v1/datasets/police.occurrences/uploads",
                params={"mode": "replace"},
                content=trickle(),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "text/csv",
                    "Content-Length": str(len(body)),
                    "Idempotency-Key": str(uuid.uuid4()),
                },
                timeout=60,
            )

        sender = threading.Thread(target=send)
        sender.start()
        assert first_sent.wait(timeout=30)
        time.sleep(0.3)  # the head and first chunk are with the server
        server.process.terminate()
        # The listening socket closes at once; the upload is still arriving.
        deadline = time.monotonic() + 10
        while not _refused(server.port):
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        go_on.set()
        sender.join(timeout=60)
        assert result["upload"].status_code == 201, result["upload"].text
        assert server.process.wait(timeout=30) == 0
    finally:
        go_on.set()
        server.stop()
    upload_id = result["upload"].json()["upload_id"]
    version = result["upload"].json()["version"]
    ingested = [
        e
        for e in events(platform, AuditAction.DATASET_INGESTED)
        if e.details.get("upload_id") == upload_id
    ]
    assert len(ingested) == 1
    assert ingested[0].details["version"] == version
