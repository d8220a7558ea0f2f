"""T18 at the HTTP edge: declared and actual body sizes, slow and short bodies, malformed framing.
A real server process (`together serve`) with a 1 MiB upload limit and 2 s body window."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import access_log
from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.live import LiveServer, live_token
from tests.security.edge_http import (
    closed_by_server,
    connect,
    edge_server,
    is_problem,
    read_response,
)

_EDGE_UPLOAD = "/v1/datasets/police.occurrences/uploads?mode=replace"


@pytest.fixture
def _edge_uploader(
    platform: Platform, make_client: Callable[..., ClientCredentials], tmp_path: Path
) -> Iterator[tuple[LiveServer, str]]:
    server = edge_server(platform.settings, tmp_path)
    try:
        police = make_client()
        yield server, live_token(server, police.client_id, police.client_secret)
    finally:
        server.stop()


def _edge_head(token: str, *extra: str) -> bytes:
    lines = [
        f"POST {_EDGE_UPLOAD} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {token}",
        "Content-Type: text/csv",
        f"Idempotency-Key: edge-{time.monotonic_ns()}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _edge_staged(platform: Platform) -> list[Path]:
    staging = platform.settings.staging_dir
    return list(staging.glob("*")) if staging.exists() else []


@pytest.mark.slow
def test_T18_declared_length_over_the_limit_is_413_before_the_body(
    _edge_uploader: tuple[LiveServer, str],
) -> None:
    server, token = _edge_uploader
    with connect(server) as sock:
        sock.sendall(_edge_head(token, "Content-Length: 1073741824"))  # 1 GiB, none of it sent
        response = read_response(sock)
        assert response is not None and is_problem(response, 413)
        assert response.json()["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.slow
def test_T18_chunked_body_over_the_limit_is_413_at_the_limit_and_cut_off(
    _edge_uploader: tuple[LiveServer, str],
) -> None:
    """The client keeps sending after the limit: it is answered 413, and the connection closes
    within one body window although it never stops (the server does not read on forever)."""
    server, token = _edge_uploader
    stop = threading.Event()
    sent = [0]
    with connect(server) as sock:
        sock.sendall(_edge_head(token, "Transfer-Encoding: chunked"))
        chunk = b"%x\r\n" % 65536 + b"a,b\n" * 16384 + b"\r\n"

        def flood() -> None:
            try:
                while not stop.is_set():
                    sock.sendall(chunk)
                    sent[0] += 65536
            except OSError:
                pass

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        try:
            response = read_response(sock)
            assert response is not None and is_problem(response, 413)
            assert closed_by_server(sock, 8.0)
        finally:
            stop.set()
            sender.join(timeout=10)
    assert sent[0] >= 1024 * 1024  # it did send past the limit


@pytest.mark.slow
def test_T18_slow_body_is_cut_at_the_body_timeout(
    _edge_uploader: tuple[LiveServer, str], platform: Platform
) -> None:
    """A body trickled at 10 bytes a second (the minimum is 1 KiB/s over a 2 s window): 408,
    well before the declared body could ever arrive, and nothing left in staging."""
    server, token = _edge_uploader
    with connect(server) as sock:
        sock.sendall(_edge_head(token, "Content-Length: 100000") + b"id,occurred_at\n")
        started = time.monotonic()
        response = None
        sock.settimeout(0.1)
        while time.monotonic() - started < 15 and response is None:
            with contextlib.suppress(OSError):
                sock.sendall(b"1")
            try:
                response = read_response(sock)
            except TimeoutError:
                continue
        assert response is not None and is_problem(response, 408)
        assert response.json()["code"] == "REQUEST_TIMEOUT"
        assert time.monotonic() - started < 8.0
    time.sleep(0.5)
    assert not [p for p in _edge_staged(platform) if p.suffix == ".body"]


@pytest.mark.slow
def test_T18_body_shorter_than_declared_is_408_after_the_body_timeout(
    _edge_uploader: tuple[LiveServer, str],
) -> None:
    server, token = _edge_uploader
    with connect(server) as sock:
        sock.sendall(_edge_head(token, "Content-Length: 5000") + b"x" * 2500)
        started = time.monotonic()
        response = read_response(sock)
        elapsed = time.monotonic() - started
        assert response is not None and is_problem(response, 408)
        assert 1.0 <= elapsed < 8.0
        assert closed_by_server(sock, 2.0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "framing",
    [
        ("Content-Length: -5",),
        ("Content-Length: 10", "Content-Length: 20"),
        ("Content-Length: 1e3",),
        ("Content-Length: 10", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: gzip, chunked, identity",),
    ],
    ids=["negative", "duplicate", "not-a-number", "length-and-chunked", "bad-coding"],
)
def test_T18_malformed_content_length_is_400(
    _edge_uploader: tuple[LiveServer, str], framing: tuple[str, ...]
) -> None:
    server, token = _edge_uploader
    with connect(server) as sock:
        sock.sendall(_edge_head(token, *framing) + b"0123456789")
        response = read_response(sock)
        assert response is not None and is_problem(response, 400), response
        assert closed_by_server(sock, 2.0)


class _EdgeLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_T24_request_log_lines_cannot_be_forged(api: TestClient) -> None:
    """Hostile bytes in the path, the query and the headers (CR/LF, ANSI escapes, U+2028, a
    forged JSON event): each request is one JSON line naming the route template only."""
    handler = _EdgeLines()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    forged = '"}\n{"event": "http.request", "route": "/v1/admin/clients", "status": 200}'
    try:
        hostile = [
            "/v1/contracts/x%0d%0a%7b%22event%22%3a%22forged%22%7d",
            "/v1/contracts/%1b%5b31mred%1b%5b0m",
            "/v1/contracts/%e2%80%a8line",
            "/v1/contracts?q=" + "%0a" * 10 + "%e2%80%a9",
        ]
        for path in hostile:
            request_id = "a\u2028b\x1b[31m".encode() + b"c" * 10
            api.get(path, headers={"X-Request-Id": request_id, "X-Forged": forged})
    finally:
        access_log.removeHandler(handler)
    assert len(handler.lines) == len(hostile)
    for line in handler.lines:
        assert line.isascii() and line.isprintable()  # no CR, LF, ESC, U+2028 in the line
        event = json.loads(line)
        assert event["event"] == "http.request"
        # A control character in the path is refused before routing (route null, status 400).
        assert event["route"] in ("/v1/contracts/{dataset}", "/v1/contracts", None)
        assert "forged" not in line and "red" not in line
