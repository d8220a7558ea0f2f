"""Data protection at rest, key history and transport to the database (security-tests T41, T42,
T44).

T41: canary names and dates of birth uploaded through the API appear nowhere in clear: not in
the database (the SQLite file's bytes, every PostgreSQL table's rows) and not in the dataset
Parquet files (their raw bytes, and every value they decode to). T42 (checkpoint key part): a
rotated audit signing key leaves the old checkpoints verifiable from the published key history.
T44: the PostgreSQL `sslmode` of TOGETHER_DATABASE_URL reaches the driver.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError

from services.audit import chain as audit_chain
from services.audit import checkpoints as audit_checkpoints
from services.audit.export import verify_export, write_export
from services.kit.db import make_engine
from services.platform import Platform, build_platform
from tests.ingestion.helpers import police_rows, to_csv

_DPK_SURNAME = "Qzwcanaryvoss"
_DPK_FORENAME = "Xylocanarine"
_DPK_DOB = "1971-03-29"


def _dpk_upload_canaries(api: TestClient, token: str) -> None:
    rows = police_rows(120, seed=23)
    for row in rows[::3]:
        row["suspect_surname"] = _DPK_SURNAME
        row["suspect_forename"] = _DPK_FORENAME
        row["suspect_dob"] = _DPK_DOB
    response = api.post(
        "/v1/datasets/police.occurrences/uploads",
        params={"mode": "replace"},
        content=to_csv(rows),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert response.status_code == 201, response.text


def _dpk_canaries() -> list[str]:
    return [_DPK_SURNAME, _DPK_FORENAME, _DPK_DOB, _DPK_SURNAME.lower(), _DPK_SURNAME.upper()]


def test_T41_canary_names_and_dates_of_birth_are_nowhere_in_clear(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    _dpk_upload_canaries(api, police_token)
    canaries = _dpk_canaries()
    scanned = 0
    # Every file of the data folder, raw bytes: Parquet, staging, keys, the SQLite database.
    for path in Path(platform.settings.data_dir).rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            scanned += 1
            for canary in canaries:
                assert canary.encode() not in raw, (canary, path.name)
    assert scanned > 0
    # Parquet pages may be compressed: what they decode to, value by value.
    parquet_files = list(Path(platform.settings.data_dir).rglob("*.parquet"))
    assert parquet_files, "the upload wrote no Parquet file"
    for path in parquet_files:
        table = pq.read_table(path)
        for name in table.column_names:
            column = table.column(name)
            values = {str(value) for value in column.to_pylist()}
            for canary in canaries:
                assert not any(canary in value for value in values), (canary, path.name, name)
    # The database, row by row (on PostgreSQL the pages are the server's; the rows are what
    # any dump would hold).
    with platform.engine.connect() as connection:
        tables = inspect(connection).get_table_names()
        for table_name in tables:
            rows = connection.execute(text(f'SELECT * FROM "{table_name}"')).all()  # noqa: S608
            dumped = "\n".join(repr(tuple(row)) for row in rows)
            for canary in canaries:
                assert canary not in dumped, (canary, table_name)


def test_T42_a_rotated_checkpoint_key_leaves_old_checkpoints_verifiable(
    api: TestClient, platform: Platform, tmp_path: Path
) -> None:
    for _ in range(3):
        assert api.get("/v1/contracts", headers={"Authorization": "Bearer x"}).status_code == 401
    audit_chain.seal_all(platform.sessions)
    with platform.sessions() as session:
        audit_checkpoints.write_checkpoint(session, platform.audit_signer)
        session.commit()
    old = platform.audit_signer
    # Rotation: a new key file, the old public key published as retired.
    new_key = tmp_path / "new-audit-key.pem"
    audit_checkpoints.write_signing_key(new_key)
    settings = platform.settings.model_copy(
        update={
            "audit_key_file": new_key,
            "audit_retired_public_keys": audit_checkpoints.PublicKey(
                old.key_id, old.public.raw, "retired"
            ).jwk()["public_key"],
        }
    )
    rotated = build_platform(settings)
    try:
        assert rotated.audit_signer.key_id != old.key_id
        published = {key.key_id: key.status for key in rotated.audit_signer.published_keys()}
        assert published == {rotated.audit_signer.key_id: "current", old.key_id: "retired"}
        for _ in range(2):
            api.get("/v1/contracts", headers={"Authorization": "Bearer x"})
        audit_chain.seal_all(rotated.sessions)
        with rotated.sessions() as session:
            written = audit_checkpoints.write_checkpoint(session, rotated.audit_signer)
            session.commit()
        assert written is not None and written.key_id == rotated.audit_signer.key_id
        out = io.BytesIO()
        with rotated.sessions() as session:
            write_export(session, out, rotated.audit_signer.published_keys())
        lines = out.getvalue().splitlines(keepends=True)
        history = {key.key_id: key.raw for key in rotated.audit_signer.published_keys()}
        result = verify_export(lines, keys=history)
        assert result.ok, result.failure
        assert result.checkpoints == 2
        # Without the key history the old checkpoint no longer verifies: the history matters.
        current_only = {rotated.audit_signer.key_id: rotated.audit_signer.public.raw}
        failed = verify_export(lines, keys=current_only)
        assert failed.failure is not None and "unknown key" in failed.failure.message
    finally:
        rotated.close()


def test_T44_the_postgresql_sslmode_reaches_the_driver(platform: Platform) -> None:
    """`sslmode=require` against this machine's PostgreSQL, which has no TLS: the connection
    fails saying so, which proves the setting was passed through, not dropped."""
    if platform.engine.dialect.name != "postgresql":
        pytest.skip("sslmode is a PostgreSQL connection setting")
    url = platform.settings.resolved_database_url
    separator = "&" if "?" in url else "?"
    with platform.engine.connect() as connection:
        tls = connection.execute(text("SHOW ssl")).scalar_one()
    if tls == "on":
        pytest.skip("this PostgreSQL offers TLS: sslmode=require would connect")
    engine = make_engine(url + separator + "sslmode=require")
    try:
        with pytest.raises(OperationalError, match="SSL"), engine.connect():
            pass
    finally:
        engine.dispose()
    # The same through the settings: the platform's readiness says the database is unreachable.
    settings = platform.settings.model_copy(
        update={"database_url": SecretStr(url + separator + "sslmode=require")}
    )
    required = build_platform(settings)
    try:
        with pytest.raises(Exception, match="does not answer"):
            required.ready()
    finally:
        required.close()
    # And `sslmode=disable` connects: the parameter is honoured both ways.
    engine = make_engine(url + separator + "sslmode=disable")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
