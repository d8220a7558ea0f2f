"""`/metrics`: Prometheus figures for an operator only, labelled by route template, and summed
over the worker processes of `together serve --workers N`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.audit.catalogue import AuditAction
from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.fixtures.audit_events import events
from tests.ingestion.helpers import police_rows, to_csv
from tests.live import free_port, settings_env, together_bin

MakeClient = Callable[..., ClientCredentials]
TokenFor = Callable[[ClientCredentials], str]
POLICE = "police.occurrences"
UPLOAD_ROUTE = "/v1/datasets/{dataset}/uploads"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    figures: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return figures.get((name, frozenset(labels.items())), 0.0)


def test_metrics_need_a_token_with_the_operator_role(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    assert api.get("/metrics").status_code == 401
    reader = token_for(make_client(org="vru", roles=("l1_reader",)))
    refused = api.get("/metrics", headers=bearer(reader))
    assert refused.status_code == 403
    assert refused.json()["code"] == "FORBIDDEN"
    denials = events(platform, AuditAction.ACCESS_DENIED)
    assert denials and denials[-1].resource_type == "metrics"
    operator = token_for(make_client(org="vru", roles=("operator",)))
    allowed = api.get("/metrics", headers=bearer(operator))
    assert allowed.status_code == 200
    assert allowed.headers["content-type"].startswith("text/plain")
    assert "together_http_requests_total" in allowed.text


def test_uploads_rows_requests_and_audit_events_are_counted(
    api: TestClient, make_client: MakeClient, token_for: TokenFor
) -> None:
    operator = bearer(token_for(make_client(org="vru", roles=("operator",))))
    police = bearer(token_for(make_client()))
    before = samples(api.get("/metrics", headers=operator).text)

    def push(body: bytes) -> int:
        response = api.post(
            f"/v1/datasets/{POLICE}/uploads",
            params={"mode": "replace"},
            content=body,
            headers=police | {"Content-Type": "text/csv", "Idempotency-Key": str(uuid.uuid4())},
        )
        return response.status_code

    assert push(to_csv(police_rows(20, seed=1))) == 201
    bad = police_rows(5, seed=2)
    bad[0]["recorded_date"] = "not a date"
    assert push(to_csv(bad)) == 422
    after_text = api.get("/metrics", headers=operator).text
    after = samples(after_text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("together_uploads_total", outcome="accepted") == 1
    assert delta("together_uploads_total", outcome="refused") == 1
    assert delta("together_upload_rows_total", outcome="accepted") == 20
    assert delta("together_upload_rows_total", outcome="refused") == 5
    route = {"route": UPLOAD_ROUTE, "method": "POST"}
    assert delta("together_http_requests_total", **route, status="201") == 1
    assert delta("together_http_requests_total", **route, status="422") == 1
    assert delta("together_http_request_duration_seconds_count", route=UPLOAD_ROUTE) == 2
    # Two uploads audited, at least: each is one event.
    assert delta("together_audit_events_written_total") >= 2
    # Labelled by template only: the dataset named in the path is nowhere in the figures.
    assert POLICE not in after_text


def _scrape(url: str, token: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    # A new connection each time, so the scrapes land on either worker.
    response = httpx.get(url + "/metrics", headers=bearer(token), timeout=10)
    assert response.status_code == 200, response.text
    return samples(response.text)


@pytest.mark.slow
def test_two_workers_add_up(platform: Platform, make_client: MakeClient, tmp_path: Path) -> None:
    operator = make_client(org="vru", roles=("operator",))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [together_bin(), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=settings_env(platform.settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        issued = httpx.post(
            url + "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(operator.client_id, operator.client_secret),
        )
        token = issued.json()["access_token"]
        start = value(
            _scrape(url, token),
            "together_http_requests_total",
            route="/healthz",
            method="GET",
            status="200",
        )
        sent = 40
        for _ in range(sent):
            assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        # Whichever worker answers the scrape, it answers the sum over both.
        seen = {
            value(
                _scrape(url, token),
                "together_http_requests_total",
                route="/healthz",
                method="GET",
                status="200",
            )
            for _ in range(10)
        }
        assert seen == {start + sent}
        # Read at scrape time by the worker that answers: its sealer's lag (the events of the
        # requests above are sealed within seconds) and the age of its cache-epoch reading
        # (watched every 50 ms).
        figures = _scrape(url, token)
        assert 0 <= figures[("together_cache_epoch_age_seconds", frozenset())] < 5
        assert 0 <= figures[("together_audit_sealer_lag_seconds", frozenset())] < 60
        assert len(list((platform.settings.data_dir / "metrics").glob("counter_*.db"))) >= 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0  # the supervisor stops both workers and exits 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            log.close()
