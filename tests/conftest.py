"""Fixtures: the real migrations on the real database (SQLite, or PostgreSQL when
TOGETHER_TEST_DATABASE_URL is set), a fresh database and data folder per test."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from gateway.app import create_app
from gateway.platform import Platform, build_platform
from services.audit.checkpoints import write_signing_key
from services.audit.service import RequestContext
from services.authz.vocabulary import ROLES
from services.identity import service as identity_service
from services.identity.schemas import RoleGrant
from services.kit.db import normalise_url
from services.kit.keys import write_key_file
from services.kit.migrate import upgrade
from services.kit.settings import Environment, Settings

POSTGRES_URL = os.environ.get("TOGETHER_TEST_DATABASE_URL")


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    write_key_file(path)
    return path


@pytest.fixture(scope="session")
def audit_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audit-keys") / "audit-signing-key.pem"
    write_signing_key(path)
    return path


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "together.db"
    upgrade(f"sqlite:///{path}")
    return path


def _postgres_schema_url(schema: str) -> str:
    assert POSTGRES_URL is not None
    separator = "&" if "?" in POSTGRES_URL else "?"
    return normalise_url(POSTGRES_URL) + separator + "options=" + quote(f"-csearch_path={schema}")


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    if POSTGRES_URL is None:
        path = tmp_path / "together.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    schema = "t_" + uuid.uuid4().hex[:16]
    admin = create_engine(normalise_url(POSTGRES_URL))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = _postgres_schema_url(schema)
    upgrade(url)
    try:
        yield url
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, key_file: Path, audit_key_file: Path) -> Settings:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    return Settings(
        env=Environment.test,
        data_dir=data_dir,
        database_url=database_url,
        key_file=key_file,
        audit_key_file=audit_key_file,
        idempotency_lease_seconds=30,
    )


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    built = build_platform(settings)
    yield built
    built.close()


@pytest.fixture
def api(settings: Settings, platform: Platform) -> Iterator[TestClient]:
    with TestClient(create_app(settings, platform)) as client:
        yield client


@dataclass
class ClientCredentials:
    client_id: str
    client_secret: str
    organisation: str


@pytest.fixture
def make_client(platform: Platform) -> Callable[..., ClientCredentials]:
    def factory(
        org: str = "hampshire-constabulary",
        roles: tuple[str, ...] = ("partner_system",),
        areas: tuple[str, ...] = (),
        name: str = "test client",
    ) -> ClientCredentials:
        grants = [RoleGrant(r, a) for r in roles for a in (areas or (None,))]
        with platform.sessions() as session:
            created = identity_service.create_client(
                session, name=name, organisation=org, grants=grants, known_roles=ROLES
            )
            session.commit()
        return ClientCredentials(created.client_id, created.client_secret, org)

    return factory


@pytest.fixture
def token_for(api: TestClient) -> Callable[[ClientCredentials], str]:
    def issue(credentials: ClientCredentials) -> str:
        response = api.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": credentials.client_id,
                "client_secret": credentials.client_secret,
            },
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    return issue


@pytest.fixture
def police_token(
    make_client: Callable[..., ClientCredentials], token_for: Callable[[ClientCredentials], str]
) -> str:
    return token_for(make_client())


def cli_context() -> RequestContext:
    return RequestContext(actor="test", actor_org="vru", actor_roles=["admin"])
