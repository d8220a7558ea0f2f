"""T6, the transport part: oversized `Authorization` headers (a 1 MiB header, a JWS whose header
segment is 300 KB) are refused 431 before any token code sees them, quickly, with the worker's
memory bounded when 200 arrive at once. A real server process (`together serve`)."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import time
from pathlib import Path

import httpx
import pytest

from services.platform import Platform
from tests.live import LiveServer
from tests.security.edge_http import (
    connect,
    edge_server,
    is_problem,
    read_response,
    rss,
)

pytestmark = pytest.mark.slow


def _edge_send_authorization(server: LiveServer, value: bytes) -> tuple[int | None, float]:
    """Sends a request with this Authorization value; returns the status (None: closed without
    an answer) and the seconds it took."""
    started = time.monotonic()
    with connect(server) as sock:
        request = b"GET /v1/contracts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
        # Refused before all was sent, the answer may still be readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request + value + b"\r\n\r\n")
        response = read_response(sock)
    status = None if response is None else response.status
    if response is not None:
        assert is_problem(response, response.status), response
    return status, time.monotonic() - started


def _edge_jws_with_huge_header(size: int) -> bytes:
    header = {"alg": "EdDSA", "typ": "JWT", "pad": "x" * size}
    segment = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=")
    return b"Bearer " + segment + b".eyJzdWIiOiJ4In0.c2ln"


def test_T6_one_mebibyte_authorization_header_is_431_quickly(
    platform: Platform, tmp_path: Path
) -> None:
    server = edge_server(platform.settings, tmp_path)
    try:
        status, seconds = _edge_send_authorization(server, b"Bearer " + b"A" * (1 << 20))
        assert status == 431
        assert seconds < 2.0
        status, _ = _edge_send_authorization(server, _edge_jws_with_huge_header(300_000))
        assert status == 431
        # Under the limit the header reaches the application and is an invalid token, 401.
        status, _ = _edge_send_authorization(server, b"Bearer " + b"A" * 8000)
        assert status == 401
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        server.stop()


def test_T6_two_hundred_concurrent_huge_headers_bound_worker_memory(
    platform: Platform, tmp_path: Path
) -> None:
    """200 clients each send a 1 MiB Authorization header at once: each is refused (431, or the
    connection closed when the refusal overtook the upload), the worker's resident memory grows
    by less than 50 MiB (security-tests T6), and the server still answers."""
    server = edge_server(platform.settings, tmp_path)
    try:
        for _ in range(5):  # warm: the first requests load code and fill caches
            httpx.get(server.url + "/healthz")
        before = rss(server)
        value = b"Bearer " + b"A" * (1 << 20)
        with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(lambda _: _edge_send_authorization(server, value), range(200)))
        after = rss(server)
        assert all(status in (431, None) for status, _ in results), results
        assert sum(status == 431 for status, _ in results) >= 150
        assert after - before < 50 * 1024 * 1024, (before, after)
        assert max(seconds for _, seconds in results) < 10.0
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    finally:
        server.stop()
