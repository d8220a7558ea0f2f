"""T12 path and host confusion, T11 method swaps: what reaches a handler is what the route table
says, whatever spelling of a path or method a client tries.

T12 runs against a real server process (`together serve`): the HTTP parser and uvicorn's
percent-decoding are part of what is tested, and an HTTP client library would normalise the very
paths the test must send."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.platform import Platform
from tests.fixtures.app import ClientCredentials, TokenFor
from tests.live import LiveServer, live_token
from tests.security.edge_http import connect, edge_server, is_problem, read_response

_EDGE_L3 = "habitual-knife-carriers"

# Spellings of a Level 3 product's path (and of a way around the route table) by a Level 1
# reader. None may answer 200; each is problem+json.
_EDGE_CONFUSED_TARGETS = [
    f"/v1/products/sv-counts/../{_EDGE_L3}",
    f"/v1/products/sv-counts/%2e%2e/{_EDGE_L3}",
    f"/v1/products/sv-counts%2F..%2F{_EDGE_L3}",
    f"/v1/products/sv-counts%2f%2e%2e%2f{_EDGE_L3}",
    f"//v1/products/{_EDGE_L3}",
    f"/v1//products/{_EDGE_L3}",
    f"/v1/products/{_EDGE_L3}/",
    f"/v1/products/{_EDGE_L3}%2F",
    f"/v1/products/{_EDGE_L3};param=1",
    f"/v1/products/{_EDGE_L3}%3Bx",
    f"/V1/Products/{_EDGE_L3.title()}",
    f"/v1/products/{_EDGE_L3.upper()}",
    "/v1/products/%68abitual-knife-carriers",  # decodes to the real id: the handler refuses
    "/v1/products/%c0%ae%c0%ae/habitual-knife-carriers",  # overlong UTF-8 for ".."
    f"/v1/products/{_EDGE_L3}%00",
    f"/./v1/products/{_EDGE_L3}",
    f"/v1/products/./{_EDGE_L3}",
    f"/v1/products/{_EDGE_L3}#x",
    f"/v1/products/{_EDGE_L3}?product_id=sv-counts",
    f"/v1/products/{_EDGE_L3}?as_of=%00",
    f"/v1/products/{_EDGE_L3}%0d%0aX-Injected:%201",
]


def _edge_raw_get(server: LiveServer, target: str, headers: list[str]) -> tuple[int, bytes]:
    with connect(server) as sock:
        head = [f"GET {target} HTTP/1.1", *headers, "Connection: close"]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        response = read_response(sock)
    assert response is not None, target
    assert is_problem(response, response.status) or response.status == 200, target
    return response.status, response.body


@pytest.mark.slow
def test_T12_path_confusion_never_reaches_a_level3_answer(
    platform: Platform, make_client: Callable[..., ClientCredentials], tmp_path: Path
) -> None:
    reader = make_client(org="vru", roles=("l1_reader",))
    # JSON logs: each line one object, so every request line below is read whole.
    server = edge_server(platform.settings, tmp_path, TOGETHER_LOG_FORMAT="json")
    try:
        token = live_token(server, reader.client_id, reader.client_secret)
        auth = [f"Authorization: Bearer {token}"]
        host = ["Host: 127.0.0.1"]
        status, body = _edge_raw_get(server, "/v1/products", host + auth)
        assert status == 200  # the token and the raw requests work
        levels = {p["level"] for p in json.loads(body)["products"]}
        assert levels == {1}
        for target in _EDGE_CONFUSED_TARGETS:
            status, body = _edge_raw_get(server, target, host + auth)
            assert status in (400, 403, 404), (target, status)
            assert b"person_id" not in body and b"rows" not in body, target
        # A malformed, duplicated or absent Host is refused before routing.
        for bad_host in (
            [f"Host: x/v1/products/{_EDGE_L3}"],
            ["Host: 127.0.0.1", "Host: evil.example"],
            [],
            ["Host: a b"],
        ):
            status, _ = _edge_raw_get(server, f"/v1/products/{_EDGE_L3}", bad_host + auth)
            assert status == 400, bad_host
    finally:
        server.stop()
    # Requests are logged by route template: none of the spellings sent appears in the log.
    log = (tmp_path / "server.log").read_text(errors="replace")
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    lines = [event for event in events if event["message"] == "http.request"]
    assert len(lines) >= len(_EDGE_CONFUSED_TARGETS)
    assert {line["route"] for line in lines} <= {
        None,
        "/oauth/token",
        "/healthz",
        "/v1/products",
        "/v1/products/{product_id}",
    }
    for target in _EDGE_CONFUSED_TARGETS:
        assert target not in log, target
    for fragment in (";param", "%2e%2e", "%2F", "%c0", "HABITUAL", _EDGE_L3):
        assert fragment not in log, fragment


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "TRACE", "OPTIONS", "CONNECT"])
def test_T11_method_swaps_are_405_with_allow(api: TestClient, method: str) -> None:
    response = api.request(method, "/v1/contracts")
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "METHOD_NOT_ALLOWED"
    assert response.headers["allow"] == "GET"


def test_T11_allow_names_every_route_of_the_path(api: TestClient) -> None:
    """GET and POST of /v1/admin/clients are two routes: a DELETE is told both (Starlette alone
    names only the first route it tried)."""
    response = api.delete("/v1/admin/clients")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


def test_T11_head_is_not_a_way_around_get(
    api: TestClient, make_client: Callable[..., ClientCredentials], token_for: TokenFor
) -> None:
    """The API's routes answer the methods they declare: HEAD of a read is 405, with or
    without a token, and runs nothing (no read, no audit event)."""
    token = token_for(make_client(org="vru", roles=("l1_reader",)))
    for headers in ({}, {"Authorization": f"Bearer {token}"}):
        response = api.head(f"/v1/products/{_EDGE_L3}", headers=headers)
        assert response.status_code == 405
        assert response.headers["allow"] == "GET"
        assert response.content == b""
