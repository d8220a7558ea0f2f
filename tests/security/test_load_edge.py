"""T40: slow clients beside a normal one. A real server process (`together serve`), hundreds of
connections that send half a request head and hold it, and a normal client whose health check and
authenticated read must still be answered within a few seconds."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.live import LiveServer, live_token
from tests.security.edge_http import closed_by_server, connect, edge_server, read_response

pytestmark = pytest.mark.slow

_EDGE_HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
_EDGE_ANSWER_WITHIN = 5.0  # generous: "answered, not hung", on a busy two-core machine


@contextmanager
def _edge_slowloris(server: LiveServer, count: int) -> Iterator[list[socket.socket]]:
    sockets = []
    try:
        for _ in range(count):
            sock = connect(server)
            # Closed to make room: that is the server defending itself.
            with contextlib.suppress(OSError):
                sock.sendall(_EDGE_HALF_HEAD)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _edge_normal_client_is_served(server: LiveServer, token: str) -> None:
    with httpx.Client(base_url=server.url, timeout=_EDGE_ANSWER_WITHIN) as client:
        for _ in range(5):
            started = time.monotonic()
            health = client.get("/healthz")
            read = client.get("/v1/products", headers={"Authorization": f"Bearer {token}"})
            assert health.status_code == 200, health.text
            assert read.status_code == 200, read.text
            assert read.json()["products"]
            assert time.monotonic() - started < _EDGE_ANSWER_WITHIN


def test_T40_slow_heads_do_not_count_against_the_request_limit(
    platform: Platform, make_client: Callable[..., ClientCredentials], tmp_path: Path
) -> None:
    """300 connections hold half a head; at most 20 requests may be in flight; the normal client
    is served (uvicorn's own limit counted open connections: every request answered 503)."""
    reader = make_client(org="vru", roles=("l1_reader",))
    server = edge_server(
        platform.settings,
        tmp_path,
        TOGETHER_HTTP_HEADER_TIMEOUT_SECONDS="60",
        TOGETHER_HTTP_MAX_REQUESTS_IN_FLIGHT="20",
    )
    try:
        token = live_token(server, reader.client_id, reader.client_secret)
        with _edge_slowloris(server, 300) as slow:
            _edge_normal_client_is_served(server, token)
            # The slow connections are still held open: they did not simply go away.
            assert not any(closed_by_server(sock, 0.01) for sock in slow[:20])
    finally:
        server.stop()


def test_T40_connection_limit_closes_the_longest_waiting_slow_connection(
    platform: Platform, make_client: Callable[..., ClientCredentials], tmp_path: Path
) -> None:
    """300 half heads against a limit of 100 connections: the oldest waiting ones are closed to
    make room, and the normal client gets in and is served."""
    reader = make_client(org="vru", roles=("l1_reader",))
    server = edge_server(
        platform.settings,
        tmp_path,
        TOGETHER_HTTP_HEADER_TIMEOUT_SECONDS="60",
        TOGETHER_HTTP_MAX_CONNECTIONS="100",
    )
    try:
        token = live_token(server, reader.client_id, reader.client_secret)
        with _edge_slowloris(server, 300) as slow:
            _edge_normal_client_is_served(server, token)
            closed = sum(closed_by_server(sock, 0.05) for sock in slow)
            assert closed >= 190, closed
            # The first ones were the ones closed: the longest waiting.
            assert all(closed_by_server(sock, 0.05) for sock in slow[:50])
    finally:
        server.stop()


def test_T40_half_heads_are_answered_408_at_the_header_timeout(
    platform: Platform, tmp_path: Path
) -> None:
    """A head not complete within the header timeout (2 s here) is answered 408 problem+json and
    closed; a connection that never sent a byte is closed without an answer."""
    server = edge_server(platform.settings, tmp_path, TOGETHER_HTTP_HEADER_TIMEOUT_SECONDS="2")
    try:
        with _edge_slowloris(server, 50) as slow:
            silent = connect(server)
            started = time.monotonic()
            for sock in slow:
                response = read_response(sock)
                assert response is not None
                assert response.status == 408
                assert response.json()["code"] == "REQUEST_TIMEOUT"
            assert closed_by_server(silent, 5.0)
            silent.close()
            assert time.monotonic() - started < 10.0
        # Trickling one byte a second does not extend the deadline: it runs from the connection.
        sock = connect(server)
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        answer = None
        while time.monotonic() - started < 10 and answer is None:
            try:
                sock.sendall(b"X")
            except OSError:
                break
            sock.settimeout(1.0)
            try:
                answer = read_response(sock)
            except TimeoutError:
                continue
            break
        assert answer is not None and answer.status == 408
        assert time.monotonic() - started < 6.0
        sock.close()
    finally:
        server.stop()
