"""Under concurrent readers, every successful read and every denial has exactly one audit event."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from services.audit.models import AuditEvent
from services.demo.generate import write_dataset_csv
from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.ingestion.helpers import police_rows, to_csv
from tests.live import LiveServer, live_token

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("TOGETHER_TEST_LOAD_SECONDS", "20"))


def token(server: LiveServer, credentials: ClientCredentials) -> str:
    return live_token(server, credentials.client_id, credentials.client_secret)


def test_audit_events_equal_reads_plus_denials(
    platform: Platform, make_client: Callable[..., ClientCredentials], tmp_path: Path
) -> None:
    police = make_client()
    vru = make_client(org="vru")
    reader = make_client(org="vru", roles=("l1_reader",))
    outsider = make_client(org="vru", roles=("l2_reader",), areas=("Havant",))
    server = LiveServer(platform.settings, tmp_path / "server.log")
    try:
        uploads = [
            (police, "police.occurrences", to_csv(police_rows(2000, seed=5))),
        ]
        for dataset in ("reference.population", "la.imd"):
            path = tmp_path / f"{dataset}.csv"
            write_dataset_csv(dataset, path)
            uploads.append((vru, dataset, path.read_bytes()))
        for who, dataset, body in uploads:
            response = httpx.post(
                f"{server.url}/v1/datasets/{dataset}/uploads?mode=replace",
                content=body,
                headers={
                    "Authorization": f"Bearer {token(server, who)}",
                    "Content-Type": "text/csv",
                    "Idempotency-Key": str(uuid.uuid4()),
                },
                timeout=60,
            )
            assert response.status_code == 201, response.text

        with platform.sessions() as session:
            before = Counter(
                dict(
                    session.execute(
                        select(AuditEvent.action, func.count()).group_by(AuditEvent.action)
                    ).all()
                )
            )
        tokens = [token(server, reader), token(server, outsider)]
        outcomes: Counter[int] = Counter()
        lock = threading.Lock()
        deadline = time.monotonic() + SECONDS

        def worker(index: int) -> None:
            headers = {"Authorization": f"Bearer {tokens[index % 2]}"}
            local: Counter[int] = Counter()
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while time.monotonic() < deadline:
                    response = client.get(
                        "/v1/products/sv-rates",
                        params={"from": "2023-01-01", "to": "2024-01-01"},
                        headers=headers,
                    )
                    local[response.status_code] += 1
            with lock:
                outcomes.update(local)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.stop()
    assert set(outcomes) <= {200, 403}, outcomes
    assert outcomes[200] > 0 and outcomes[403] > 0
    with platform.sessions() as session:
        after = Counter(
            dict(
                session.execute(
                    select(AuditEvent.action, func.count()).group_by(AuditEvent.action)
                ).all()
            )
        )
    assert after["product.read"] - before["product.read"] == outcomes[200]
    assert after["access.denied"] - before["access.denied"] == outcomes[403]
