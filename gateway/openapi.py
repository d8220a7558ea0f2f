"""The published API description: what /openapi.json says and how /docs shows it.

FastAPI generates the document from the routes; `describe` then states, in one place, what the
generator cannot know: who must present a bearer token (every route that depends on
`authenticated`), that every error is `application/problem+json` of one shared schema, that
malformed parameters are 400 (not FastAPI's default 422 `HTTPValidationError`: see
`gateway.errors`), and which statuses every route may answer (401 where authenticated, 404
where the path names something, 400 where there are parameters or a body, 503 everywhere).
What is particular to one route (its answer's schema, its own error statuses, a body it reads
itself) is on its decorator.
The fuzz pass (tests/security/test_ingestion_openapi.py) holds the server to this document.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from gateway.deps import authenticated
from gateway.schemas import ERROR_DESCRIPTIONS, PROBLEM_JSON, ProblemDetails
from services.kit.settings import Settings

BEARER = "bearerAuth"
_PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")

# Parameters that routes take as plain strings and check themselves: what the check accepts.
PARAMETER_RULES: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("post", "/v1/datasets/{dataset}/uploads"): {
        "mode": {"schema": {"type": "string", "enum": ["append", "replace"]}},
        "Idempotency-Key": {
            "required": True,
            "description": "Required: a new unique value (e.g. a UUID) for each new file, the "
            "same value again to retry it; the same key with a different file is a 422",
            "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,200}$"},
        },
    },
    ("get", "/v1/sharing/profile"): {
        "type": {"schema": {"type": "string", "enum": ["bearer_token", "oauth_client_credentials"]}}
    },
}


def install(app: FastAPI, settings: Settings) -> None:
    """Attaches the API description to `app` (development only serves it, with /docs)."""
    app.openapi = lambda: describe(app)  # type: ignore[method-assign]
    if settings.is_development and app.openapi_url and app.docs_url:
        from gateway.routes import docs

        docs.install(app)


def describe(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of `app`, built once (routes are all added before the first call)."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            routes=app.routes,
        )
        app.openapi_schema = complete(document, public_paths(app))
    return app.openapi_schema


def public_paths(app: FastAPI) -> frozenset[str]:
    """Paths of the routes that do not depend on `authenticated` (gateway.app's PUBLIC_PATHS,
    which tests/gateway/test_routes.py pins to the same rule)."""
    found: set[str] = set()
    stack: list[Any] = list(app.router.routes)
    while stack:
        route = stack.pop()
        included = getattr(route, "original_router", None)
        if included is not None:
            stack.extend(included.routes)
        elif isinstance(route, APIRoute) and not _depends_on(route, authenticated):
            found.add(route.path)
    return frozenset(found)


def _depends_on(route: APIRoute, dependency: object) -> bool:
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        if dependant.call is dependency:
            return True
        stack.extend(dependant.dependencies)
    return False


def complete(document: dict[str, Any], public: frozenset[str]) -> dict[str, Any]:
    """States what the generator cannot know (the module docstring says what)."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["ProblemDetails"] = ProblemDetails.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A token from POST /oauth/token (client credentials). Under "
            "/delta-sharing a Delta Sharing profile's token is accepted as well.",
        }
    }
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is not None:
                _complete_operation(operation, secured=path not in public)
                _apply_rules(operation, PARAMETER_RULES.get((method, path), {}))
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and unused not in _refs(document["paths"]):
            del schemas[unused]
    return document


def _complete_operation(operation: dict[str, Any], *, secured: bool) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    default_422 = responses.get("422", {})
    if "HTTPValidationError" in str(default_422.get("content", "")):
        # FastAPI's own; malformed parameters are answered 400 (gateway.errors).
        del responses["422"]
    operation["security"] = [{BEARER: []}] if secured else []
    statuses = {503}
    if secured:
        statuses.add(401)
    parameters = operation.get("parameters", [])
    if operation.get("requestBody") or parameters:
        # Malformed parameters or body; also a path parameter holding control characters.
        statuses.add(400)
    if any(p.get("in") == "path" for p in parameters):
        # A path naming something that does not exist, or that the caller may not know of.
        statuses.add(404)
    for status in sorted(statuses):
        responses.setdefault(str(status), {"description": ERROR_DESCRIPTIONS[status]})
    for code, response in responses.items():
        if code[0] in "45" and "content" not in response:
            response["content"] = {PROBLEM_JSON: {"schema": copy.deepcopy(_PROBLEM_REF)}}


def _apply_rules(operation: dict[str, Any], rules: dict[str, dict[str, Any]]) -> None:
    for parameter in operation.get("parameters", []):
        rule = rules.get(parameter["name"])
        if rule is not None:
            parameter.update(copy.deepcopy(rule))


def _refs(node: Any) -> set[str]:
    """The component names `node` refers to."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value.rsplit("/", 1)[-1])
            else:
                found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found
