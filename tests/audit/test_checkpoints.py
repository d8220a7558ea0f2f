"""Checkpoints are signed, published, written while idle; the app's database user cannot
change audit rows (security-tests T27, T28, T30)."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from services.audit import chain as audit_chain
from services.audit import checkpoints
from services.audit import service as audit_service
from services.audit.checkpoints import verify_signature
from services.audit.sealer import Sealer
from services.audit.service import AuditRecord
from services.kit.app_role import grant_app_role
from services.kit.db import make_engine
from services.kit.errors import ConfigurationError
from services.kit.settings import Environment, Settings
from services.platform import Platform
from tests.fixtures.app import ClientCredentials, cli_context

AUDIT_TABLES = ("audit_events", "audit_chain", "audit_subjects", "audit_checkpoints")


def test_T27_checkpoints_are_signed_and_published(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
) -> None:
    assert api.get("/v1/audit/checkpoints").status_code == 401
    token = token_for(make_client(org="hiwfrs", roles=("l1_reader",)))
    audit_chain.seal_all(platform.sessions)
    with platform.sessions() as session:
        first = checkpoints.write_checkpoint(session, platform.audit_signer)
        second = checkpoints.write_checkpoint(session, platform.audit_signer)
        session.commit()
    assert first is not None and second is not None
    assert (first.seq, second.seq) == (0, 1) and second.issued_at > first.issued_at

    answer = api.get("/v1/audit/checkpoints", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["log"] == "together-audit"
    [key] = body["keys"]
    assert key["kid"] == platform.audit_signer.key_id and key["crv"] == "Ed25519"
    keys = {key["kid"]: checkpoints.parse_public_key(key["x"])}
    assert keys[key["kid"]] == checkpoints.parse_public_key(key["public_key"])
    published = body["checkpoints"]
    assert [c["body"]["seq"] for c in published] == [0, 1]
    for item in published:
        assert verify_signature(item["body"], item["signature"], keys)
        assert item["body"]["tree_size"] == first.tree_size
    forged = dict(published[0]["body"], tree_size=published[0]["body"]["tree_size"] + 1)
    assert not verify_signature(forged, published[0]["signature"], keys)

    page = api.get(
        "/v1/audit/checkpoints?after=0&limit=1", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert [c["body"]["seq"] for c in page["checkpoints"]] == [1]
    assert page["next_after"] == 1
    with platform.sessions() as session:
        listed = session.execute(
            text("SELECT count(*) FROM audit_events WHERE action = 'audit.checkpoints_listed'")
        ).scalar_one()
    assert listed == 2


def test_T28_the_sealer_signs_checkpoints_while_idle(platform: Platform) -> None:
    audit_service.record_committed(
        platform.sessions,
        cli_context(),
        AuditRecord(audit_service.AuditAction.CLIENT_CREATED, audit_service.Outcome.SUCCESS),
    )
    sealer = Sealer(platform.sessions, 0.05, platform.audit_signer, 0.3)
    sealer.start()
    try:
        deadline = time.monotonic() + 20
        count = 0
        while time.monotonic() < deadline and count < 3:
            time.sleep(0.1)
            with platform.sessions() as session:
                count = session.execute(text("SELECT count(*) FROM audit_checkpoints")).scalar_one()
    finally:
        sealer.stop()
    assert count >= 3
    with platform.sessions() as session:
        rows = checkpoints.listing(session, after=None, limit=10)
    # Nothing happened after the first event, and checkpoints kept coming, all of size 1.
    assert {row.tree_size for row in rows} == {1}
    gaps = [(b.issued_at - a.issued_at).total_seconds() for a, b in itertools.pairwise(rows)]
    assert all(gap >= 0.3 for gap in gaps)


def test_the_signing_key_is_required_outside_development(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ConfigurationError, match="signing key"):
        checkpoints.load_signer(Settings(env=Environment.production, data_dir=tmp_path))
    signer = checkpoints.load_signer(Settings(env=Environment.development, data_dir=tmp_path))
    again = checkpoints.load_signer(Settings(env=Environment.development, data_dir=tmp_path))
    assert signer.key_id == again.key_id  # generated once, in the data folder, then reused


def test_the_benchmark_switch_is_refused_outside_development() -> None:
    for env in (Environment.production, Environment.test):
        with pytest.raises(ValueError, match="BENCHMARK_ONLY"):
            Settings(env=env, benchmark_only_skip_audit=True)
    assert Settings(env=Environment.development, benchmark_only_skip_audit=True)


def test_T30_the_app_database_user_cannot_change_audit_rows(
    api: TestClient, platform: Platform
) -> None:
    api.get("/v1/contracts")  # one authentication.failed event
    audit_chain.seal_all(platform.sessions)
    with platform.sessions() as session:
        checkpoints.write_checkpoint(session, platform.audit_signer)
        session.execute(
            text(
                "INSERT INTO audit_subjects (event_seq, person_id) "
                "SELECT min(seq), 'p1' FROM audit_events"
            )
        )
        session.commit()
    if platform.engine.dialect.name == "sqlite":
        # SQLite has no users: the app's connection is the only one, and triggers refuse.
        _assert_refused(platform.engine.url.render_as_string(hide_password=False), "append-only")
        return
    role = "together_app_" + uuid.uuid4().hex[:12]
    password = uuid.uuid4().hex
    with platform.engine.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
    try:
        grants = grant_app_role(platform.engine, role)
        assert set(AUDIT_TABLES) <= set(grants.append_only)
        assert "clients" in grants.read_write and "alembic_version" not in grants.read_write
        url = make_url(platform.engine.url).set(username=role, password=password)
        app_url = url.render_as_string(hide_password=False)
        # The app's own path works as that role: an event is recorded and committed.
        engine = make_engine(app_url)
        try:
            from sqlalchemy.orm import sessionmaker

            audit_service.record_committed(
                sessionmaker(bind=engine),
                cli_context(),
                AuditRecord(
                    audit_service.AuditAction.CLIENT_CREATED, audit_service.Outcome.SUCCESS
                ),
            )
        finally:
            engine.dispose()
        _assert_refused(app_url, "permission denied")
    finally:
        with platform.engine.begin() as connection:
            connection.execute(text(f"DROP OWNED BY {role}"))
            connection.execute(text(f"DROP ROLE {role}"))


def _assert_refused(url: str, reason: str) -> None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    statements = []
    for table in AUDIT_TABLES:
        statements += [
            f"UPDATE {table} SET {_column(table)} = {_column(table)}",  # noqa: S608
            f"DELETE FROM {table}",  # noqa: S608
        ]
        if engine.dialect.name == "postgresql":
            statements += [f"TRUNCATE {table}", f"ALTER TABLE {table} DISABLE TRIGGER ALL"]
    try:
        for statement in statements:
            with pytest.raises(DBAPIError) as refused, engine.begin() as connection:
                changed = connection.execute(text(statement))
                assert changed.rowcount != 0, f"{statement} found nothing to change"
            assert reason in str(refused.value) or "must be owner" in str(refused.value), statement
        with engine.begin() as connection:
            assert connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one() >= 1
    finally:
        engine.dispose()


def _column(table: str) -> str:
    return {"audit_events": "action", "audit_chain": "hash", "audit_subjects": "person_id"}.get(
        table, "root_hash"
    )
