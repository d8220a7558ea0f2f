"""Architecture guards: every route authenticates unless listed public; one error shape."""

from __future__ import annotations

import warnings

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from gateway.app import PUBLIC_PATHS, ROUTERS, create_app
from gateway.deps import authenticated
from gateway.web.auth import signed_in
from services.kit.settings import Settings
from services.platform import Platform


def _dependencies(route: APIRoute) -> set[object]:
    found: set[object] = set()
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        if dependant.call is not None:
            found.add(dependant.call)
        stack.extend(dependant.dependencies)
    return found


def test_every_route_is_authenticated_or_listed_public() -> None:
    routes = [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)]
    assert len(routes) > 10
    authenticators = {authenticated, signed_in}
    public = {r.path for r in routes if not authenticators & _dependencies(r)}
    assert public == set(PUBLIC_PATHS)
    for route in routes:
        if route.path.startswith("/v1"):
            assert authenticated in _dependencies(route), route.path
        # The pages authenticate by their session cookie, never by a bearer token.
        if route.path.startswith("/ig/") and route.path not in PUBLIC_PATHS:
            assert signed_in in _dependencies(route), route.path
            assert authenticated not in _dependencies(route), route.path


def test_error_shape_is_problem_json(api: TestClient) -> None:
    for response in (
        api.get("/v1/contracts"),
        api.get("/no/such/path"),
        api.post("/healthz"),
    ):
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert set(body) >= {"type", "status", "code", "title", "detail", "request_id"}
        assert body["status"] == response.status_code
        assert response.headers["x-request-id"] == body["request_id"]
        assert response.headers["cache-control"] == "no-store"


def test_docs_hidden_outside_development(api: TestClient) -> None:
    assert api.get("/docs").status_code == 404
    assert api.get("/openapi.json").status_code == 404


def test_openapi_document_builds_without_warnings(settings: Settings, platform: Platform) -> None:
    """Every operation has an id of its own: generated clients name their methods after them."""
    app = create_app(settings, platform)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        document = app.openapi()
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_internal_errors_say_nothing(settings: Settings, platform: Platform) -> None:
    app = create_app(settings, platform)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("SELECT secret FROM somewhere /var/lib/path")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json()["code"] == "INTERNAL_ERROR"
    assert "secret" not in response.text and "/var/lib" not in response.text


def test_placeholder_secrets_refused_outside_development() -> None:
    import pytest

    with pytest.raises(ValueError, match="placeholder"):
        Settings(env="production", hmac_key="changeme")
    Settings(env="development", hmac_key="changeme")


def test_no_redirect_builds_a_url_from_the_host_header(api: TestClient) -> None:
    """A trailing slash is not redirected (Starlette would build the Location from Host)."""
    response = api.get("/v1/contracts/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404
    assert "location" not in response.headers
    assert "evil.example" not in response.text


def test_a_malformed_host_is_400(api: TestClient) -> None:
    for host in ("x/v1/products", "a b", "evil.example:99999999", "[zz]"):
        response = api.get("/healthz", headers={"Host": host})
        assert response.status_code == 400, host
        assert response.headers["content-type"].startswith("application/problem+json")
    for host in ("together.example.org", "127.0.0.1:8000", "[::1]:8000", "localhost"):
        assert api.get("/healthz", headers={"Host": host}).status_code == 200, host


def test_405_names_the_allowed_methods(api: TestClient) -> None:
    response = api.post("/healthz")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.json()["code"] == "METHOD_NOT_ALLOWED"


def test_server_limits_come_from_the_settings() -> None:
    from gateway.server import EdgeHttpProtocol, build_config

    settings = Settings(env="development", http_header_max_bytes=4096, http_max_connections=7)
    config = build_config(settings, "127.0.0.1", 0, 1)
    assert config.http is EdgeHttpProtocol
    assert config.limit_concurrency is None  # in-flight requests are counted by the protocol
    assert config.edge_limits.header_max_bytes == 4096
    assert config.edge_limits.max_connections == 7


def test_control_characters_in_the_target_are_400(api: TestClient) -> None:
    for target in ("/v1/products/x%00", "/v1/products/x%0d%0a", "/healthz?x=%00"):
        response = api.get(target)
        assert response.status_code == 400, target
        assert response.json()["detail"] == "The path or query contains a control character"
    assert api.get("/healthz?x=%2000").status_code == 200
