"""A platform whose contracts folder is a copy the test may change, as an owner proposing a new
version would, and clients for the two IG leads a sign-off needs."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from services.audit.service import RequestContext
from services.kit.settings import Settings
from services.lifecycle import service as lifecycle
from services.lifecycle.service import LoadResult
from services.platform import Platform, build_platform
from tests.fixtures.app import MakeClient, TokenFor, client_maker, token_issuer

POLICE = "police.occurrences"
POLICE_FILE = f"{POLICE}.yaml"


@dataclass
class World:
    settings: Settings
    platform: Platform
    api: TestClient
    make: MakeClient
    token_for: TokenFor

    @property
    def contracts(self) -> Path:
        return self.settings.contracts_dir

    def edit(self, name: str, change: Callable[[str], str]) -> None:
        path = self.contracts / name
        path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")

    def load(self) -> list[LoadResult]:
        ctx = RequestContext(actor="cli:contracts-load", actor_org="vru", actor_roles=["admin"])
        return lifecycle.load_directory(self.platform.lifecycle, ctx, self.contracts)

    def token(self, org: str, *roles: str) -> str:
        return self.token_for(self.make(org=org, roles=roles or ("ig_lead",), name=f"{org} lead"))

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def versions(self, dataset: str = POLICE) -> list[dict[str, Any]]:
        response = self.api.get(
            f"/v1/contracts/{dataset}/versions",
            headers=self.bearer(self.token("hiwfrs", "l1_reader")),
        )
        assert response.status_code == 200, response.text
        versions: list[dict[str, Any]] = response.json()["versions"]
        return versions

    def sign(self, token: str, version: str, dataset: str = POLICE, **body: str):  # type: ignore[no-untyped-def]
        return self.api.post(
            f"/v1/contracts/{dataset}/signoffs",
            json={"version": version, **body},
            headers=self.bearer(token),
        )

    def activate(self, token: str, version: str, dataset: str = POLICE):  # type: ignore[no-untyped-def]
        return self.api.post(
            f"/v1/contracts/{dataset}/activations",
            json={"version": version},
            headers=self.bearer(token),
        )


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> Iterator[World]:
    contracts = tmp_path / "contracts"
    shutil.copytree(settings.contracts_dir, contracts)
    changed = settings.model_copy(update={"contracts_dir": contracts})
    platform = build_platform(changed)
    try:
        with TestClient(create_app(changed, platform)) as api:
            yield World(changed, platform, api, client_maker(platform), token_issuer(api))
    finally:
        platform.close()
