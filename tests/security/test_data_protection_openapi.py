"""T45: outside development the server publishes no description of itself: no /openapi.json,
no /docs (nor its assets, nor the 3.0 rendition), no /redoc. A probe learns nothing of the
routes, parameters or schemas from the server itself."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.routes.docs import ASSET_PREFIX, RENDITION_PATH
from services.kit.settings import Environment, Settings
from services.platform import Platform

_OPENAPI_DOC_PATHS = (
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    RENDITION_PATH,
    ASSET_PREFIX + "swagger-ui-bundle.js",
    ASSET_PREFIX + "init.js",
)


@pytest.mark.parametrize("env", [Environment.production, Environment.test])
def test_T45_no_api_description_outside_development(
    settings: Settings, platform: Platform, env: Environment
) -> None:
    deployed = settings.model_copy(update={"env": env})
    with TestClient(create_app(deployed, platform)) as client:
        for path in _OPENAPI_DOC_PATHS:
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 404, path
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "swagger" not in response.text.lower(), path


def test_T45_the_description_is_served_in_development_only(
    settings: Settings, platform: Platform
) -> None:
    """The same paths answer in development: the 404s above are the environment's doing."""
    development = settings.model_copy(update={"env": Environment.development})
    with TestClient(create_app(development, platform)) as client:
        for path in _OPENAPI_DOC_PATHS:
            if path == "/docs/oauth2-redirect":
                continue  # not used: the bearer scheme needs no OAuth redirect page
            response = client.get(path, follow_redirects=False)
            assert response.status_code in (200, 307), path
