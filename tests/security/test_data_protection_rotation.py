"""Rotation of the data encryption key (security-tests T42, data-key part).

`together keys rotate` adds a key to the key file and makes it current; a restarted platform
writes new ciphertext under it (format 2, key id in the header) and still reads what the
original key wrote (format 1) and every other key it holds. Level 3 products decrypt both in
one read. A ciphertext under a key the platform does not hold is a clear error, a ciphertext
moved to another column or dataset does not decrypt, and `together keys retire` refuses a key
that stored files still hold ciphertext under.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from gateway.app import create_app
from services.contracts.protection import DecryptionError, Protector, ciphertext_key_id
from services.ingestion.key_usage import encryption_keys_in_use
from services.kit.errors import ConfigurationError
from services.kit.keys import EncryptionKeys, load_keys, write_key_file
from services.kit.settings import Settings
from services.platform import Platform, build_platform, build_store
from tests.fixtures.app import ClientCredentials, MakeClient, TokenFor
from tests.fixtures.cli import run_cli
from tests.products.test_engine import occ
from tests.products.test_level3 import (
    ALL_AREAS,
    PURPOSE,
    entry_rows,
    exclusion_rows,
    occurrences,
    police,
)
from tests.products.test_level3 import A as _KEYS_PERSON_A
from tests.products.test_level3 import to_csv as _keys_to_csv

_KEYS_HMAC = b"h" * 32
_KEYS_AAD = "police.occurrences/suspect_surname"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A key file of this test's own: rotation changes it."""
    path = tmp_path / "keys" / "keys.json"
    write_key_file(path)
    return path


def _keys_upload(
    api: TestClient, token: str, dataset: str, rows: list[dict[str, str]], mode: str = "replace"
) -> None:
    response = api.post(
        f"/v1/datasets/{dataset}/uploads",
        params={"mode": mode},
        content=_keys_to_csv(rows),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert response.status_code == 201, response.text


def _keys_rows(
    api: TestClient,
    token: str,
    product: str,
    params: dict[str, str],
    headers: dict[str, str] | None = None,
) -> list[Any]:
    response = api.get(
        f"/v1/products/{product}",
        params=params,
        headers={"Authorization": f"Bearer {token}", **PURPOSE, **(headers or {})},
    )
    assert response.status_code == 200, response.text
    rows: list[Any] = response.json()["rows"]
    return rows


@pytest.fixture
def _keys_restarted(settings: Settings) -> Iterator[list[Platform]]:
    """Platforms started during a test (a restart after rotation), closed at its end."""
    started: list[Platform] = []
    yield started
    for item in started:
        item.close()


def _keys_restart(settings: Settings, started: list[Platform]) -> TestClient:
    platform = build_platform(settings)
    started.append(platform)
    return TestClient(create_app(settings, platform))


def test_T42_rotated_key_writes_new_data_and_level3_reads_old_and_new(
    api: TestClient,
    settings: Settings,
    make_client: MakeClient,
    token_for: TokenFor,
    _keys_restarted: list[Platform],
) -> None:
    def token(org: str, roles: tuple[str, ...] = ("partner_system",)) -> str:
        credentials: ClientCredentials = make_client(org=org, roles=roles)
        return token_for(credentials)

    police_token = token("hampshire-constabulary")
    council_token = token("hampshire-cc")
    yjs_token = token("yjs-hampshire")
    reader = token_for(make_client(org="vru", roles=("l3_practitioner",), areas=ALL_AREAS))

    # Before rotation: police data under the original key (format 1).
    _keys_upload(api, police_token, "police.occurrences", police(occurrences()))
    assert set(encryption_keys_in_use(build_store(settings))) == {0}

    rotated = run_cli(settings, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new_id = json.loads(rotated.stdout)["encryption_key_id"]
    assert new_id == 1
    assert load_keys(settings).encryption_key.current_id == 1

    # After a restart, new uploads are under key 1 (format 2); the police files keep key 0.
    with _keys_restart(settings, _keys_restarted) as restarted:
        _keys_upload(restarted, council_token, "education.exclusions", exclusion_rows())
        _keys_upload(restarted, yjs_token, "youth_justice.first_time_entrants", entry_rows())
        # A police version that adds to the old one: its rows are under both keys.
        later = occ("L80", "2024-06-25 09:00:00", "3b", "34B", suspects=[_KEYS_PERSON_A])
        _keys_upload(restarted, police_token, "police.occurrences", police([later]), "append")
        store = build_store(settings)
        assert set(encryption_keys_in_use(store, "police.occurrences")) == {0, 1}
        usage = encryption_keys_in_use(store)
        assert set(usage) == {0, 1}
        assert usage[1] >= 2

        # One Level 3 read decrypts the police names (key 0) and the partners' (key 1).
        suspects = _keys_rows(restarted, reader, "repeat-suspects", {"as_of": "2024-07-01"})
        person = next(row for row in suspects if row["nominal_ref"] == _KEYS_PERSON_A.ref)
        profile = _keys_rows(
            restarted, reader, "person-profile", {}, {"X-Person-Id": person["person_id"]}
        )
        references = {(row["source"], row["reference"]) for row in profile}
        assert {source for source, _ in references} == {
            "police.occurrences",
            "education.exclusions",
            "youth_justice.first_time_entrants",
        }
        assert {("police.occurrences", "L01"), ("police.occurrences", "L80")} <= references
        assert all(row["surname"] for row in profile)
        assert {row["surname"] for row in profile} == {_KEYS_PERSON_A.surname}

        # Retiring a key that stored files are under is refused, as is retiring the current key.
        for key_id in (0, 1):
            refused = run_cli(settings, "keys", "retire", str(key_id))
            assert refused.returncode == 2, refused.stdout
            assert "stored file" in refused.stderr
        assert load_keys(settings).encryption_key.keys.keys() == {0, 1}


def test_T42_rotate_then_retire_an_unused_key(settings: Settings, platform: Platform) -> None:
    """The key file is replaced durably (mode 0600); `keys list` shows ids and no secrets; a key
    nothing is stored under is retired; the current one never is."""
    key_file = settings.key_file
    assert key_file is not None
    original = json.loads(key_file.read_text())["encryption_key"]
    for expected in (1, 2):
        result = run_cli(settings, "keys", "rotate")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["encryption_key_id"] == expected
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    document = json.loads(key_file.read_text())
    assert document["encryption_key"] == original
    assert [entry["id"] for entry in document["encryption_keys"]] == [1, 2]
    assert all(entry["created"] for entry in document["encryption_keys"])

    listed = run_cli(settings, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(row["id"], row["current"]) for row in rows] == [(0, False), (1, False), (2, True)]
    assert original not in listed.stdout
    assert all(entry["key"] not in listed.stdout for entry in document["encryption_keys"])

    current = run_cli(settings, "keys", "retire", "2")
    assert current.returncode == 2 and "current" in current.stderr
    retired = run_cli(settings, "keys", "retire", "1")
    assert retired.returncode == 0, retired.stderr
    assert load_keys(settings).encryption_key.keys.keys() == {0, 2}
    again = run_cli(settings, "keys", "retire", "1")
    assert again.returncode == 2 and "no encryption key 1" in again.stderr
    # A rotation that finds another under way stops rather than lose either key.
    pending = key_file.with_name(key_file.name + ".pending")
    pending.write_text("{}")
    busy = run_cli(settings, "keys", "rotate")
    assert busy.returncode == 2 and "under way" in busy.stderr
    assert load_keys(settings).encryption_key.current_id == 2
    # Every key operation is audited, naming the key (never the key material).
    with platform.sessions() as session:
        done = session.execute(
            text(
                "SELECT action, resource, canonical FROM audit_events "
                "WHERE action LIKE 'key.%' ORDER BY seq"
            )
        ).all()
    assert [(action, resource) for action, resource, _ in done] == [
        ("key.rotated", "1"),
        ("key.rotated", "2"),
        ("key.retired", "1"),
    ]
    assert all(entry["key"] not in str(done) for entry in document["encryption_keys"])


def _keys_protector(current: int, held: tuple[int, ...]) -> Protector:
    keys = {key_id: bytes([key_id + 1]) * 32 for key_id in held}
    return Protector(_KEYS_HMAC, EncryptionKeys(current_id=current, keys=keys))


def test_T42_old_format_ciphertext_still_decrypts_after_rotation() -> None:
    before = _keys_protector(0, (0,))
    old = before.encrypt_value("O'Brien", aad=_KEYS_AAD)
    assert old[0] == 1 and ciphertext_key_id(old) == 0
    after = _keys_protector(3, (0, 3))
    new = after.encrypt_value("O'Brien", aad=_KEYS_AAD)
    assert new[0] == 2 and ciphertext_key_id(new) == 3 and new[1:5] == b"\0\0\0\3"
    assert new != old
    column = pa.array([old, new, None, old], pa.binary())
    assert after.decrypt(column, aad=_KEYS_AAD).to_pylist() == [
        "O'Brien",
        "O'Brien",
        None,
        "O'Brien",
    ]
    # Equal values under one key still encrypt equally (once per distinct value).
    assert after.encrypt_value("O'Brien", aad=_KEYS_AAD) == new


def test_T42_ciphertext_under_an_unknown_key_is_a_clear_error() -> None:
    token = _keys_protector(7, (0, 7)).encrypt_value("Zoe", aad=_KEYS_AAD)
    with pytest.raises(
        DecryptionError, match="encryption key 7, which this platform does not hold"
    ):
        _keys_protector(0, (0,)).decrypt_value(token, aad=_KEYS_AAD)
    # A key of the same id but other bytes (another installation) does not authenticate.
    other = Protector(_KEYS_HMAC, EncryptionKeys(7, {0: b"x" * 32, 7: b"y" * 32}))
    with pytest.raises(DecryptionError, match="does not authenticate"):
        other.decrypt_value(token, aad=_KEYS_AAD)
    # A key id forged onto an old ciphertext does not authenticate either.
    old = _keys_protector(0, (0, 7)).encrypt_value("Zoe", aad=_KEYS_AAD)
    forged = b"\x02\0\0\0\7" + old[1:]
    with pytest.raises(DecryptionError):
        _keys_protector(7, (0, 7)).decrypt_value(forged, aad=_KEYS_AAD)


def test_T42_rotated_ciphertext_moved_to_another_column_does_not_decrypt() -> None:
    """The AAD binds dataset and field. Rows are not bound: encryption is deterministic per
    column by design (one ciphertext per distinct value), so a value copied to another row of
    the same column is that same value."""
    protector = _keys_protector(2, (0, 2))
    token = protector.encrypt_value("Zoe", aad=_KEYS_AAD)
    for aad in ("police.occurrences/suspect_forename", "education.exclusions/surname"):
        with pytest.raises(DecryptionError, match="does not authenticate"):
            protector.decrypt_value(token, aad=aad)
    assert protector.decrypt_value(token, aad=_KEYS_AAD) == "Zoe"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"current_encryption_key": 5}, "current encryption key 5 is not in the file"),
        ({"encryption_keys": [{"id": 1, "key": "AA=="}]}, "must be 32 bytes"),
        ({"encryption_keys": [{"id": "1", "key": "AA=="}]}, "list of {id, key, created}"),
        (
            {"encryption_keys": [{"id": 1, "key": "A" * 44}, {"id": 1, "key": "B" * 44}]},
            "one id twice",
        ),
    ],
)
def test_T42_a_key_file_with_bad_rotated_keys_stops_the_start(
    settings: Settings, change: dict[str, Any], message: str
) -> None:
    key_file = settings.key_file
    assert key_file is not None
    document = json.loads(key_file.read_text())
    key_file.write_text(json.dumps({**document, **change}))
    with pytest.raises(ConfigurationError, match=message):
        build_platform(settings)
