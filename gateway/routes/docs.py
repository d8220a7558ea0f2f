"""/docs without the internet: Swagger UI from the installed `swagger_ui_bundle` package.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, and are blank where the network does
not reach one. Here the page and its scripts come from this server alone: no inline script, and
a Content-Security-Policy that allows nothing from elsewhere. Development only (as /openapi.json).

The packaged Swagger UI (4.15) reads OpenAPI 3.0 only, and /openapi.json is 3.1: the page is
given a 3.0 rendition of the same document (`rendition_30`: `nullable` for a null alternative,
one `example` for `examples`). /openapi.json stays the authoritative 3.1 document. ReDoc has no
packaged copy, so /redoc leads to /docs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from swagger_ui_bundle import swagger_ui_path

ASSET_PREFIX = "/docs/assets/"
RENDITION_PATH = "/docs/openapi-3.0.json"
# The files the page uses, and nothing else of the package's folder.
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
_INIT = "init.js"
# Swagger UI sets style attributes and draws icons from data: URLs; nothing else is allowed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - API</title>
<link rel="stylesheet" href="{assets}swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}swagger-ui-bundle.js"></script>
<script src="{assets}init.js"></script>
</body>
</html>
"""

_INIT_SCRIPT = """window.ui = SwaggerUIBundle({
  url: %s,
  dom_id: "#swagger-ui",
  deepLinking: true,
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis],
});
"""


def install(app: FastAPI) -> None:
    """Replaces FastAPI's CDN pages (/docs, its OAuth redirect, /redoc) with packaged ones."""
    docs_url = app.docs_url or "/docs"
    replaced = {docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.router.routes[:] = [r for r in app.router.routes if _path(r) not in replaced]
    title = app.title

    async def page(request: Request) -> HTMLResponse:
        html = _PAGE.format(title=title, assets=_root(request) + ASSET_PREFIX)
        return HTMLResponse(html, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name == _INIT:
            url = json.dumps(_root(request) + RENDITION_PATH)
            return Response(_INIT_SCRIPT % url, media_type="text/javascript; charset=utf-8")
        if name not in _ASSETS:
            return Response(status_code=404)
        return FileResponse(Path(str(swagger_ui_path)) / name, media_type=_ASSETS[name])

    async def rendition(request: Request) -> Response:
        document = rendition_30(app.openapi())
        return Response(json.dumps(document), media_type="application/json")

    async def redoc(request: Request) -> RedirectResponse:
        return RedirectResponse(_root(request) + docs_url)

    app.router.routes.extend(
        [
            Route(docs_url, page, methods=["GET"], include_in_schema=False),
            Route(ASSET_PREFIX + "{name}", asset, methods=["GET"], include_in_schema=False),
            Route(RENDITION_PATH, rendition, methods=["GET"], include_in_schema=False),
        ]
    )
    if app.redoc_url:
        app.router.routes.append(
            Route(app.redoc_url, redoc, methods=["GET"], include_in_schema=False)
        )


def _path(route: BaseRoute) -> str | None:
    return getattr(route, "path", None)


def _root(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def rendition_30(document: dict[str, Any]) -> dict[str, Any]:
    """The same document in OpenAPI 3.0 terms, for a viewer that reads no 3.1."""
    converted: dict[str, Any] = _to_30(document)
    converted["openapi"] = "3.0.3"
    return converted


def _to_30(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _to_30(value) for key, value in node.items()}
    for key in ("anyOf", "oneOf"):
        choices = out.get(key)
        if isinstance(choices, list) and {"type": "null"} in choices:
            rest = [c for c in choices if c != {"type": "null"}]
            del out[key]
            if len(rest) == 1:
                out.update(rest[0])
            else:
                out[key] = rest
            out["nullable"] = True
    if out.get("type") == "null":
        out.pop("type")
        out["nullable"] = True
    examples = out.get("examples")
    if isinstance(examples, list):
        del out["examples"]
        if examples:
            out["example"] = examples[0]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out
