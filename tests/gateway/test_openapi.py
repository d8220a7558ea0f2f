"""The OpenAPI document describes every route as the server answers it; /docs works offline."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from gateway.app import PUBLIC_PATHS, ROUTERS, create_app
from gateway.openapi import BEARER
from gateway.routes.docs import ASSET_PREFIX, RENDITION_PATH
from services.kit.settings import Environment, Settings
from services.platform import Platform
from services.storage.inputs import SUPPORTED_MEDIA

METHODS = ("get", "put", "post", "delete", "patch", "head")
UPLOAD = "/v1/datasets/{dataset}/uploads"
# Answers without a body: the Delta Sharing version requests (a header), and the change feed
# (always refused).
NO_BODY = {
    ("get", "/delta-sharing/shares/{share}/schemas/{schema}/tables/{table}/version"),
    ("head", "/delta-sharing/shares/{share}/schemas/{schema}/tables/{table}"),
    ("get", "/delta-sharing/shares/{share}/schemas/{schema}/tables/{table}/changes"),
}


@pytest.fixture
def document(settings: Settings, platform: Platform) -> dict[str, Any]:
    spec: dict[str, Any] = create_app(settings, platform).openapi()
    return spec


@pytest.fixture
def dev_api(settings: Settings, platform: Platform) -> Iterator[TestClient]:
    development = settings.model_copy(update={"env": Environment.development})
    with TestClient(create_app(development, platform)) as client:
        yield client


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def test_every_route_is_documented(settings: Settings, platform: Platform) -> None:
    app = create_app(settings, platform)
    every = [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)]
    routes = {
        (method.lower(), route.path)
        for route in every
        if route.include_in_schema
        for method in route.methods
    }
    documented = {(method, path) for method, path, _ in operations(app.openapi())}
    assert len(routes) > 25
    assert documented == routes
    # What is left out: the health probes and the IG pages (HTML for people, not an API).
    hidden = {route.path for route in every if not route.include_in_schema}
    assert all(p in ("/healthz", "/readyz") or p.startswith("/ig") for p in hidden), hidden


def test_bearer_scheme_and_security_per_operation(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"][BEARER]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    for method, path, operation in operations(document):
        if path in PUBLIC_PATHS:
            assert operation["security"] == [], (method, path)
            assert "401" not in operation["responses"] or path == "/oauth/token"
        else:
            assert operation["security"] == [{BEARER: []}], (method, path)
            assert "401" in operation["responses"], (method, path)


def test_no_default_422_validation_error_is_left(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in str(document)
    assert "ValidationError" not in document["components"]["schemas"]
    for method, path, operation in operations(document):
        if "422" in operation["responses"]:
            # Only where a request really is refused so: an upload breaking its contract.
            assert (method, path) == ("post", UPLOAD)


def test_every_answer_has_a_schema(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        responses = operation["responses"]
        success = [s for s in responses if s.startswith("2")]
        assert success, (method, path)
        for status, response in responses.items():
            content = response.get("content", {})
            if status.startswith("2"):
                if (method, path) in NO_BODY:
                    continue
                assert content, (method, path, status)
                for media_type, body in content.items():
                    assert body.get("schema"), (method, path, status, media_type)
                json_body = content.get("application/json", {}).get("schema", {})
                if json_body:
                    assert "$ref" in json_body, (method, path)
            elif path == "/oauth/token" and status in ("400", "401"):
                # RFC 6749 section 5.2: the token endpoint's errors are OAuth's own JSON.
                assert content["application/json"]["schema"]["$ref"].endswith("/OAuthError")
            else:
                assert list(content) == ["application/problem+json"], (method, path, status)
                ref = content["application/problem+json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ProblemDetails"
            assert response["description"]


def test_problem_details_schema(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["ProblemDetails"]
    assert set(problem["required"]) == {"type", "status", "code", "title", "detail", "request_id"}


def test_upload_body_and_headers_are_documented(document: dict[str, Any]) -> None:
    upload = document["paths"][UPLOAD]["post"]
    body = upload["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == set(SUPPORTED_MEDIA)
    parameters = {p["name"]: p for p in upload["parameters"]}
    assert parameters["Idempotency-Key"]["required"] is True
    assert parameters["Idempotency-Key"]["in"] == "header"
    assert parameters["Content-Encoding"]["schema"]["enum"] == ["gzip", "identity"]
    assert parameters["mode"]["schema"]["enum"] == ["append", "replace"]
    assert set(upload["responses"]) >= {"201", "400", "401", "403", "404", "409", "413", "415"}
    assert set(upload["responses"]) >= {"422", "503"}


def test_malformed_parameters_are_400_problem_json_as_documented(
    api: TestClient, police_token: str, document: dict[str, Any]
) -> None:
    operation = document["paths"]["/v1/audit/checkpoints"]["get"]
    assert "400" in operation["responses"]
    response = api.get(
        "/v1/audit/checkpoints",
        params={"limit": "not a number"},
        headers={"Authorization": f"Bearer {police_token}"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "BAD_REQUEST"


def test_spec_is_served_in_development(dev_api: TestClient) -> None:
    response = dev_api.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == dev_api.app.openapi()  # type: ignore[attr-defined]


def test_docs_page_uses_only_its_own_assets(dev_api: TestClient) -> None:
    page = dev_api.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    html = page.text
    assert "<script>" not in html  # no inline script: the policy would refuse it
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(urls) >= 3
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert url.startswith(ASSET_PREFIX), url
    assert "http://" not in html and "https://" not in html
    for url in urls:
        asset = dev_api.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0, url
    script = dev_api.get(ASSET_PREFIX + "swagger-ui-bundle.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert b"SwaggerUIBundle" in script.content
    assert (
        dev_api.get(ASSET_PREFIX + "swagger-ui.css").headers["content-type"].startswith("text/css")
    )
    init = dev_api.get(ASSET_PREFIX + "init.js").text
    assert RENDITION_PATH in init and "SwaggerUIBundle(" in init


def test_docs_assets_are_only_the_listed_files(dev_api: TestClient) -> None:
    for name in ("index.html", "..%2F__init__.py", "swagger-ui.js.map", "nope.js"):
        assert dev_api.get(ASSET_PREFIX + name).status_code == 404, name


def test_docs_rendition_is_the_same_document_in_openapi_30(dev_api: TestClient) -> None:
    document = dev_api.get("/openapi.json").json()
    rendition = dev_api.get(RENDITION_PATH).json()
    assert document["openapi"].startswith("3.1")
    assert rendition["openapi"] == "3.0.3"
    assert rendition["paths"].keys() == document["paths"].keys()
    text = str(rendition)
    assert "'type': 'null'" not in text
    assert "'nullable': True" in text


def test_redoc_leads_to_docs(dev_api: TestClient) -> None:
    response = dev_api.get("/redoc", follow_redirects=False)
    assert response.status_code in (302, 307)
    assert response.headers["location"].endswith("/docs")
