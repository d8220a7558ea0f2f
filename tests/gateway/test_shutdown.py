"""SIGTERM: the server stops accepting, lets a request in flight finish, and exits 0.

Reads are put in flight by their request body: a Delta Sharing query (a Level 1 product's table)
whose JSON arrives in pieces. A GET's response cannot be held reliably instead: every product
answer is a few kilobytes, and on loopback the kernel takes megabytes of a response into its
buffers even from a client that reads nothing, so the server would be done before the signal.
"""

from __future__ import annotations

import json
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
from tests.sharing.helpers import SHARES

pytestmark = pytest.mark.slow

MakeClient = Callable[..., ClientCredentials]
UPLOAD = "/v1/datasets/police.occurrences/uploads"
QUERY = "/delta-sharing/shares/strategic/schemas/violence/tables/counts_by_csp/query"


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def _sigterm_and_wait_until_refused(server: LiveServer) -> None:
    server.process.terminate()
    # The listening socket closes at once; the request in flight goes on.
    deadline = time.monotonic() + 10
    while not _refused(server.port):
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.05)


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
                server.url + UPLOAD,
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
        _sigterm_and_wait_until_refused(server)
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


def test_a_product_read_in_flight_completes_across_sigterm(
    platform: Platform, make_client: MakeClient, tmp_path: Path
) -> None:
    shares = tmp_path / "sharing.yaml"
    shares.write_text(SHARES)
    police = make_client()
    reader = make_client(org="vru", roles=("l1_reader",))
    server = LiveServer(
        platform.settings,
        tmp_path / "server.log",
        TOGETHER_SHARING_FILE=str(shares),
        TOGETHER_SHARING_REFRESH_SECONDS="0",
    )
    # The query's JSON in three pieces: the server has the request, not yet all of its body.
    body = b'{"predicateHints": [], "limitHint": 1000}'
    pieces = [body[:18], body[18:30], body[30:]]
    first_sent = threading.Event()
    go_on = threading.Event()

    def trickle() -> Iterator[bytes]:
        yield pieces[0]
        first_sent.set()
        go_on.wait(timeout=30)
        for piece in pieces[1:]:
            time.sleep(0.05)
            yield piece

    result: dict[str, httpx.Response] = {}
    try:
        police_token = live_token(server, police.client_id, police.client_secret)
        pushed = httpx.post(
            server.url + UPLOAD,
            params={"mode": "replace"},
            content=to_csv(police_rows(300, seed=5)),
            headers={
                "Authorization": f"Bearer {police_token}",
                "Content-Type": "text/csv",
                "Idempotency-Key": str(uuid.uuid4()),
            },
            timeout=60,
        )
        assert pushed.status_code == 201, pushed.text
        token = live_token(server, reader.client_id, reader.client_secret)

        def query() -> None:
            result["read"] = httpx.post(
                server.url + QUERY,
                content=trickle(),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                },
                timeout=60,
            )

        reader_thread = threading.Thread(target=query)
        reader_thread.start()
        assert first_sent.wait(timeout=30)
        time.sleep(0.3)  # the head and first piece are with the server
        _sigterm_and_wait_until_refused(server)
        # Still running: it waits for the read, not for a grace period to lapse.
        assert server.process.poll() is None
        go_on.set()
        reader_thread.join(timeout=60)
        read = result["read"]
        assert read.status_code == 200, read.text
        assert server.process.wait(timeout=30) == 0
    finally:
        go_on.set()
        server.stop()
    # The whole answer: the protocol, the table's metadata and its one file, each a JSON line
    # (httpx has checked the body against its Content-Length).
    assert int(read.headers["content-length"]) == len(read.content)
    lines = [json.loads(line) for line in read.text.splitlines()]
    assert [next(iter(line)) for line in lines] == ["protocol", "metaData", "file"]
    file = lines[2]["file"]
    queried = [
        e
        for e in events(platform, AuditAction.SHARING_QUERIED)
        if e.resource == "strategic.violence.counts_by_csp"
    ]
    assert len(queried) == 1
    assert queried[0].actor == reader.client_id
    assert queried[0].rows == json.loads(file["stats"])["numRecords"]
