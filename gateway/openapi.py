"""The published API description: what /openapi.json says and how /docs shows it."""

from __future__ import annotations

from fastapi import FastAPI

from services.kit.settings import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Attaches the API description to `app` (development only serves it)."""
