"""Raw HTTP/1.1 over sockets against a real server process, for what an HTTP client library will
not send: half a request head, a body slower or shorter than declared, malformed framing."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from services.kit.settings import Settings
from tests.live import LiveServer

# The limits as the edge tests set them: small, so that each test takes seconds.
EDGE_TEST_ENV = {
    "TOGETHER_HTTP_HEADER_TIMEOUT_SECONDS": "2",
    "TOGETHER_HTTP_BODY_TIMEOUT_SECONDS": "2",
    "TOGETHER_HTTP_BODY_MIN_BYTES_PER_SECOND": "1024",
    "TOGETHER_UPLOAD_MAX_BYTES": str(1024 * 1024),
}


def edge_server(settings: Settings, tmp_path: Path, **env: str) -> LiveServer:
    merged = dict(EDGE_TEST_ENV)
    merged.update(env)
    return LiveServer(settings, tmp_path / "server.log", **merged)


def connect(server: LiveServer, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_response(sock: socket.socket) -> RawResponse | None:
    """One response, or None if the server closed (or reset) the connection without one."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return RawResponse(status, headers, body)
    except ConnectionResetError:
        return None


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server closes the connection within `within` seconds (reading what comes)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def rss(server: LiveServer) -> int:
    value: int = psutil.Process(server.process.pid).memory_info().rss
    return value


def is_problem(response: RawResponse, status: int) -> bool:
    if response.status != status:
        return False
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return False
    body = response.json()
    return bool(body["status"] == status and body["request_id"] and body["code"])
