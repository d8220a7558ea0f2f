"""T24: the API does what its OpenAPI description says, and hostile values are answered with a
4xx or stored as sent, never a 5xx.

The fuzz pass: schemathesis generates requests for every operation of the published document
(`app.openapi()`, the document /openapi.json serves), with a fixed seed and a bounded number of
examples per operation and role (derandomised: the same requests every run). They are sent
through the FastAPI TestClient to the real application (ASGI in this process, the real platform
over a real database holding a loaded data set: police, population and IMD uploads, published
Delta Sharing tables), with a bearer token from the real token endpoint for each role, and none.
In-process rather than a server process: the same app and platform, a third of the time on this
two-core machine. The one layer it skips, the HTTP parser, is where header values with CR/LF
are refused: `test_T24_crlf_in_a_header_is_refused_by_the_server` sends those over a socket to
a real server (slow).

Every answer is checked by schemathesis (no 5xx; status, media type and body as documented), and
every error answer must be `application/problem+json` (the token endpoint's errors are OAuth's,
RFC 6749 section 5.2, as documented).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from services.demo.generate import write_dataset_csv
from services.kit.settings import Settings
from services.platform import Platform
from tests.fixtures.snapshots import Loading, Snapshot, Snapshots, starting_from
from tests.ingestion.helpers import police_rows, to_csv
from tests.live import LiveServer
from tests.sharing.helpers import sharing_settings

# Bounded and repeatable: this many generated requests per operation and role, same every run.
_OPENAPI_EXAMPLES = 5
_OPENAPI_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
_OPENAPI_ROLES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    # name: (organisation, roles, areas)
    "partner_system": ("hampshire-constabulary", ("partner_system",), ()),
    "l1_reader": ("vru", ("l1_reader",), ()),
    "l2_reader": ("vru", ("l2_reader",), ("Southampton", "Portsmouth")),
    "l3_practitioner": ("yjs-portsmouth", ("l3_practitioner",), ("Portsmouth",)),
    "ig_lead": ("vru", ("ig_lead",), ()),
    "admin": ("vru", ("admin",), ()),
}
# Answers whose errors are not problem details, by the standard they implement.
_OPENAPI_OAUTH_PATH = "/oauth/token"
_OPENAPI_PROBLEM = "application/problem+json"


def _openapi_upload(api: TestClient, token: str, dataset: str, body: bytes) -> None:
    response = api.post(
        f"/v1/datasets/{dataset}/uploads",
        params={"mode": "replace"},
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert response.status_code == 201, response.text


def _openapi_load(loading: Loading) -> dict[str, str]:
    """Police, population and IMD data through the API; a token for each role."""
    api, make_client, token_for = loading.api, loading.make_client, loading.token_for
    police = token_for(make_client())
    _openapi_upload(api, police, "police.occurrences", to_csv(police_rows(600, seed=24)))
    vru = token_for(make_client(org="vru"))
    for dataset in ("reference.population", "la.imd"):
        path = loading.folder / f"{dataset}.csv"
        write_dataset_csv(dataset, path)
        _openapi_upload(api, vru, dataset, path.read_bytes())
    tokens = {}
    for name, (org, roles, areas) in _OPENAPI_ROLES.items():
        tokens[name] = token_for(make_client(org=org, roles=roles, areas=areas, name=name))
    return tokens


@pytest.fixture
def settings(data_dir: Path, database_url: str, key_file: Path, audit_key_file: Path) -> Settings:
    return sharing_settings(data_dir, database_url, key_file, audit_key_file)


@pytest.fixture(scope="session")
def openapi_data(snapshots: Snapshots) -> Snapshot[dict[str, str]]:
    return snapshots.take("openapi-fuzz", _openapi_load, sharing_settings)


initial_state = starting_from("openapi_data", when="openapi_tokens")


@pytest.fixture
def openapi_tokens(openapi_data: Snapshot[dict[str, str]], loading: Loading) -> dict[str, str]:
    return openapi_data.value_in(loading)


def _openapi_request(case: Any, token: str | None) -> dict[str, Any]:
    """The generated request as TestClient arguments (schemathesis speaks `requests`)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sent = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    request: dict[str, Any] = {
        "method": sent["method"],
        "url": sent["url"],
        "headers": sent.get("headers") or {},
        "params": sent.get("params"),
    }
    if sent.get("json") is not None:
        request["json"] = sent["json"]
    elif sent.get("data") is not None:
        data = sent["data"]
        request["content" if isinstance(data, bytes | str) else "data"] = data
    return request


def _openapi_describe(request: dict[str, Any], status: int, problem: str) -> str:
    """One line: what was wrong, and a request that shows it (without its token)."""
    shown = {k: v for k, v in request.items() if v and k not in ("headers", "method", "url")}
    headers = {
        k: v
        for k, v in request["headers"].items()
        if k.lower() not in ("authorization", "user-agent")
    }
    where = f"{request['method']} {request['url'].removeprefix('http://testserver')}"
    return f"{status} {problem} <- {where} {shown} headers={headers}"[:500]


def _openapi_failures(exc: Failure | FailureGroup) -> list[str]:
    failures = list(exc.exceptions) if isinstance(exc, FailureGroup) else [exc]
    return [f"{f.title}: {' '.join(f.message.split())[:160]}" for f in failures]


def _openapi_fuzz(
    api: TestClient, document: dict[str, Any], token: str | None, *, token_endpoint: bool = False
) -> tuple[list[str], Counter[tuple[str, int]]]:
    """Every operation, `_OPENAPI_EXAMPLES` requests each: the problems found, described, and
    how many answers of each status each operation gave."""
    schema = schemathesis.openapi.from_dict(document)
    found: list[str] = []
    answers: Counter[tuple[str, int]] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        # The token endpoint has a test of its own (below).
        if (operation.path == _OPENAPI_OAUTH_PATH) != token_endpoint:
            continue

        @hypothesis.settings(
            max_examples=_OPENAPI_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def run(case: Any) -> None:
            request = _openapi_request(case, token)
            response = api.request(**request)
            answers[(f"{case.method} {case.path}", response.status_code)] += 1
            try:
                case.validate_response(response, checks=_OPENAPI_CHECKS)
            except (Failure, FailureGroup) as exc:  # collected, reported together below
                for failure in _openapi_failures(exc):
                    found.append(_openapi_describe(request, response.status_code, failure))
            media = response.headers.get("content-type", "")
            problem = media.startswith(_OPENAPI_PROBLEM)
            if response.status_code >= 400 and case.path != _OPENAPI_OAUTH_PATH and not problem:
                found.append(_openapi_describe(request, response.status_code, media))

        run()
    return found, answers


def _openapi_app(settings: Settings, platform: Platform) -> Iterator[TestClient]:
    with TestClient(create_app(settings, platform), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def openapi_api(settings: Settings, platform: Platform) -> Iterator[TestClient]:
    """The app with server errors answered, as a server does, not raised into the test."""
    yield from _openapi_app(settings, platform)


@pytest.mark.parametrize("role", [None, *_OPENAPI_ROLES])
def test_T24_every_answer_is_as_documented(
    openapi_api: TestClient, openapi_tokens: dict[str, str], role: str | None
) -> None:
    document = openapi_api.app.openapi()  # type: ignore[attr-defined]
    started = time.monotonic()
    problems, answers = _openapi_fuzz(openapi_api, document, openapi_tokens[role] if role else None)
    # Generated requests reach success, refusal and not-found answers alike.
    assert len({status for _, status in answers}) >= 3, answers
    assert not problems, f"{len(problems)} answers not as documented:\n" + "\n".join(
        sorted(set(problems))[:60]
    )
    assert time.monotonic() - started < 600  # bounded


def _openapi_raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(65536)


@pytest.mark.slow
def test_T24_crlf_in_a_header_is_refused_by_the_server(settings: Settings, tmp_path: Path) -> None:
    server = LiveServer(settings, tmp_path / "server.log")
    try:
        answer = _openapi_raw_request(
            server.port,
            b"GET /v1/products HTTP/1.1\r\nHost: x\r\nX-Purpose: a\rInjected: 1\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    finally:
        server.stop()


def test_T24_token_endpoint_answers_as_documented(openapi_api: TestClient) -> None:
    """The token endpoint, unauthenticated as its callers are: its errors are OAuth's JSON."""
    document = openapi_api.app.openapi()  # type: ignore[attr-defined]
    problems, _ = _openapi_fuzz(openapi_api, document, None, token_endpoint=True)
    assert not problems, "\n".join(sorted(set(problems)))
    repeated = openapi_api.post(
        _OPENAPI_OAUTH_PATH,
        content="\u00e9=1&\u00e9=2&grant_type=client_credentials".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert repeated.status_code == 400
    assert repeated.json()["error"] == "invalid_request"


# Requests that reach real resources of the loaded data set (generated values rarely name
# one): each is sent for every role and its answer checked against the document like the rest.
_OPENAPI_TABLE = {"share": "strategic", "schema": "violence", "table": "counts_by_csp"}
_OPENAPI_PERIOD = {"from": "2023-01-01", "to": "2024-01-01"}
_OPENAPI_KNOWN: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/v1/contracts/{dataset}", {"path": {"dataset": "police.occurrences"}}),
    ("GET", "/v1/datasets/{dataset}", {"path": {"dataset": "police.occurrences"}}),
    ("GET", "/v1/access/explain", {"query": {"product": "sv-counts"}}),
    *[
        (
            "GET",
            "/v1/products/{product_id}",
            {"path": {"product_id": product}, "query": {**query, "format": fmt}},
        )
        for product, query in (
            ("sv-counts", {**_OPENAPI_PERIOD, "by": "csp"}),
            ("sv-flags", _OPENAPI_PERIOD),
            ("hotspots", _OPENAPI_PERIOD),
            ("hkc-summary", {"as_of": "2024-01-01"}),
        )
        for fmt in ("json", "csv", "parquet")
    ],
    (
        "GET",
        "/v1/products/{product_id}",
        {"path": {"product_id": "hotspots"}, "query": {**_OPENAPI_PERIOD, "format": "geojson"}},
    ),
    ("GET", "/v1/audit/events", {"query": {"format": "csv"}}),
    ("GET", "/v1/audit/events", {"query": {"format": "ndjson", "limit": "5"}}),
    ("POST", "/v1/audit/people", {"body": {"person_id": "P-1"}}),
    ("GET", "/v1/audit/checkpoints/consistency", {"query": {"from_size": "1", "to_size": "2"}}),
    ("GET", "/delta-sharing/shares/{share}", {"path": {"share": "strategic"}}),
    ("GET", "/delta-sharing/shares/{share}/schemas", {"path": {"share": "strategic"}}),
    ("GET", "/delta-sharing/shares/{share}/all-tables", {"path": {"share": "strategic"}}),
    (
        "GET",
        "/delta-sharing/shares/{share}/schemas/{schema}/tables",
        {"path": {"share": "strategic", "schema": "violence"}},
    ),
    *[
        (
            method,
            "/delta-sharing/shares/{share}/schemas/{schema}/tables/{table}" + tail,
            {"path": _OPENAPI_TABLE},
        )
        for method, tail in (("GET", "/version"), ("HEAD", ""), ("GET", "/metadata"))
    ],
    (
        "POST",
        "/delta-sharing/shares/{share}/schemas/{schema}/tables/{table}/query",
        {"path": _OPENAPI_TABLE, "body": {}},
    ),
]

# T24's second half: values no form would send. Each is answered 4xx, or kept as it came.
_OPENAPI_HOSTILE_TEXT = (
    "line\r\nInjected: 1",
    "\x1b[31mred\x1b[0m\x1b]0;title\x07",
    "sep\u2028ara\u2029tor",
    "x" * (1 << 20),
)


def _openapi_known_cases(document: dict[str, Any]) -> Iterator[Any]:
    schema = schemathesis.openapi.from_dict(document)
    for method, path, parts in _OPENAPI_KNOWN:
        operation = schema.find_operation_by_path(method.lower(), path)
        assert operation is not None, (method, path)
        arguments: dict[str, Any] = {
            "path_parameters": parts.get("path"),
            "query": parts.get("query"),
        }
        if "body" in parts:
            arguments["body"] = parts["body"]
            arguments["media_type"] = "application/json"
        yield operation.Case(**arguments)


def test_T24_known_resources_answer_as_documented(
    openapi_api: TestClient, openapi_tokens: dict[str, str]
) -> None:
    """Real shares, tables, products (every format) and datasets, for every role: mostly 200s,
    which the generated requests alone seldom reach."""
    document = openapi_api.app.openapi()  # type: ignore[attr-defined]
    problems: list[str] = []
    successes = 0
    for role in _OPENAPI_ROLES:
        for case in _openapi_known_cases(document):
            request = _openapi_request(case, openapi_tokens[role])
            response = openapi_api.request(**request)
            successes += response.status_code < 300
            try:
                case.validate_response(response, checks=_OPENAPI_CHECKS)
            except (Failure, FailureGroup) as exc:
                for failure in _openapi_failures(exc):
                    problems.append(_openapi_describe(request, response.status_code, failure))
            if response.status_code >= 400:
                media = response.headers["content-type"]
                if not media.startswith(_OPENAPI_PROBLEM):
                    problems.append(_openapi_describe(request, response.status_code, media))
    assert not problems, "\n".join(sorted(set(problems)))
    # Every operation above answers 200 to at least one role.
    assert successes >= len(_OPENAPI_KNOWN), successes


def _openapi_bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("text", _OPENAPI_HOSTILE_TEXT, ids=["crlf", "ansi", "u2028", "1mib"])
def test_T24_hostile_values_are_refused_or_kept_as_sent(
    openapi_api: TestClient, openapi_tokens: dict[str, str], text: str
) -> None:
    """In a query, a header (as UTF-8 bytes, as a client may send them), a JSON body and a
    path: never a 5xx; errors are problem+json; what is stored comes back unchanged."""
    admin = _openapi_bearer(openapi_tokens["admin"])
    reader = _openapi_bearer(openapi_tokens["l3_practitioner"])
    # The HTTP client sends at most 64 KiB of query string; bodies and headers carry it all.
    short = text[: 1 << 15]
    answers = [
        openapi_api.get(
            "/v1/products/sv-counts", params={**_OPENAPI_PERIOD, "area": short}, headers=reader
        ),
        openapi_api.get("/v1/access/explain", params={"product": short}, headers=reader),
        openapi_api.get("/v1/audit/events", params={"actor": short}, headers=admin),
        openapi_api.post("/v1/audit/people", json={"person_id": text}, headers=admin),
        openapi_api.get(
            "/v1/products/hkc-summary",
            params={"as_of": "2024-01-01"},
            headers={**reader, "X-Purpose": text.encode(), "X-Case-Reference": text.encode()},
        ),
        openapi_api.get("/v1/contracts/" + quote(text[:5000], safe=""), headers=admin),
    ]
    for response in answers:
        assert response.status_code < 500, (response.request.url, response.text[:300])
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith(_OPENAPI_PROBLEM)
            assert response.json()["status"] == response.status_code
    # A value that is stored: a client's name, as the administrator gave it.
    created = openapi_api.post(
        "/v1/admin/clients",
        json={"name": text, "organisation": "vru", "roles": [{"role": "l1_reader"}]},
        headers=admin,
    )
    assert created.status_code < 500, created.text[:300]
    if created.status_code >= 400:
        assert created.headers["content-type"].startswith(_OPENAPI_PROBLEM)
        return
    listed = openapi_api.get("/v1/admin/clients", headers=admin).json()["clients"]
    names = {c.get("name") for c in listed if c.get("client_id") == created.json()["client_id"]}
    assert names == {text}
