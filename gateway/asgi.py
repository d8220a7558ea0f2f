"""The ASGI entry point for uvicorn workers: `gateway.asgi:app`."""

from gateway.app import create_app

app = create_app()
