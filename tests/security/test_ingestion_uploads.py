"""Uploads against an attacker: Idempotency-Key semantics (T33), client-supplied names (T20),
decompression bombs (T19), staging at rest, and new versions visible at once."""

from __future__ import annotations

import gzip
import re
import threading
import uuid
import zlib
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from services.demo.generate import write_dataset_csv
from services.platform import Platform
from services.storage import service as storage_service
from tests.fixtures.app import MakeClient, TokenFor
from tests.fixtures.audit_events import events
from tests.ingestion.helpers import police_rows, to_csv

_INGESTION_URL = "/v1/datasets/police.occurrences/uploads"


def _ingestion_post(
    api: TestClient,
    token: str,
    body: bytes,
    *,
    key: str | None,
    mode: str = "replace",
    url: str = _INGESTION_URL,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {"Authorization": f"Bearer {token}", "Content-Type": "text/csv"}
    if key is not None:
        sent["Idempotency-Key"] = key
    sent.update(headers or {})
    return api.post(url, params={"mode": mode}, content=body, headers=sent)


def _ingestion_version(platform: Platform, dataset: str = "police.occurrences") -> int | None:
    with platform.sessions() as session:
        info = storage_service.current_version(session, platform.storage, dataset)
    return None if info is None else info.version


# T33: Idempotency-Key


def test_T33_missing_key_is_400_naming_the_header(
    api: TestClient, police_token: str, platform: Platform
) -> None:
    response = _ingestion_post(api, police_token, to_csv(police_rows(20)), key=None)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert "Idempotency-Key" in problem["detail"]
    assert problem["header"] == "Idempotency-Key"
    assert _ingestion_version(platform) is None
    refused = events(platform, "dataset.rejected")
    assert [event.reason for event in refused] == ["bad_request"]


def test_T33_same_key_different_payload_is_422(
    api: TestClient, police_token: str, platform: Platform
) -> None:
    first = _ingestion_post(api, police_token, to_csv(police_rows(30)), key="t33-a")
    assert first.status_code == 201, first.text
    other = _ingestion_post(api, police_token, to_csv(police_rows(31)), key="t33-a")
    assert other.status_code == 422, other.text
    assert other.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert other.json()["differs"] == ["content"]
    assert first.json()["upload_id"] not in other.text
    assert _ingestion_version(platform) == 1


def test_T33_same_key_value_from_two_organisations_is_independent(
    api: TestClient,
    platform: Platform,
    make_client: MakeClient,
    token_for: TokenFor,
    tmp_path: Path,
) -> None:
    police = token_for(make_client())
    council = token_for(make_client(org="vru"))
    police_body = to_csv(police_rows(25))
    imd = tmp_path / "imd.csv"
    write_dataset_csv("la.imd", imd, rows=50)
    shared = "batch-2026-12-04"

    first = _ingestion_post(api, police, police_body, key=shared)
    assert first.status_code == 201, first.text
    # The other organisation, the same key value, its own dataset: a new upload, not a replay.
    second = _ingestion_post(
        api, council, imd.read_bytes(), key=shared, url="/v1/datasets/la.imd/uploads"
    )
    assert second.status_code == 201, second.text
    assert "idempotent-replayed" not in second.headers
    assert second.json()["dataset"] == "la.imd"
    assert second.json()["upload_id"] != first.json()["upload_id"]
    # The other organisation replaying the first one's exact request learns nothing from it.
    stolen = _ingestion_post(api, council, police_body, key=shared)
    assert stolen.status_code == 403, stolen.text
    assert first.json()["upload_id"] not in stolen.text
    assert first.json()["content_sha256"] not in stolen.text
    assert _ingestion_version(platform) == 1
    assert _ingestion_version(platform, "la.imd") == 1


def test_T33_ten_concurrent_retries_execute_once(
    api: TestClient, police_token: str, platform: Platform
) -> None:
    """Ten copies of one request at once: one runs; the others are told it is in flight (409)
    or, once it has finished, answered with its stored 201; a retry after a 409 gets that 201."""
    body = to_csv(police_rows(40_000, seed=5))
    key = f"t33-{uuid.uuid4()}"
    start = threading.Barrier(10)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        start.wait(30)
        response = _ingestion_post(api, police_token, body, key=key)
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=send) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == 10
    executed = [
        r for r in answers if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    in_flight = [r for r in answers if r.status_code == 409]
    replayed = [r for r in answers if r.status_code == 201 and "idempotent-replayed" in r.headers]
    assert len(executed) == 1, [(r.status_code, r.text[:200]) for r in answers]
    assert len(in_flight) + len(replayed) == 9, [(r.status_code, r.text[:200]) for r in answers]
    assert in_flight, "the nine copies all arrived after the first had finished"
    for response in in_flight:
        assert response.json()["code"] == "IDEMPOTENCY_IN_FLIGHT"
        assert response.headers["content-type"].startswith("application/problem+json")
    stored = executed[0].json()
    for response in replayed:
        assert response.json() == stored
    retry = _ingestion_post(api, police_token, body, key=key)
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == stored
    assert len(events(platform, "dataset.ingested")) == 1
    assert _ingestion_version(platform) == 1


# T19: decompression bombs


def _ingestion_gzip_bomb(decompressed: int) -> bytes:
    """Zeros compressed at level 9: about 1,000 to 1 (10 MiB of gzip is 10 GiB of zeros)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(decompressed >> 20)]
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.mark.parametrize("nested", [False, True], ids=["gzip", "nested-gzip"])
def test_T19_gzip_bomb_stops_at_the_decompressed_budget(
    api: TestClient, police_token: str, platform: Platform, nested: bool
) -> None:
    budget = 4 << 20
    platform.settings.upload_max_decompressed_bytes = budget
    bomb = _ingestion_gzip_bomb(64 << 20)
    if nested:
        bomb = gzip.compress(bomb)
    response = _ingestion_post(
        api,
        police_token,
        bomb,
        key=f"t19-{nested}",
        headers={"Content-Encoding": "gzip"},
    )
    # One layer is undone, and only up to the budget: the inner gzip of the nested bomb is just
    # bytes that no reader accepts as CSV.
    assert response.status_code in {413, 422}, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if not nested:
        assert response.status_code == 413
    assert _ingestion_version(platform) is None
    staging = platform.settings.staging_dir
    assert not staging.exists() or not any(staging.iterdir())


# T20: client-supplied names never become paths

_INGESTION_HOSTILE_NAMES = [
    "../../x",
    "../../../etc/passwd",
    "..\\..\\x",
    "C:\\Windows\\x",
    "\\\\server\\share\\x",
    "x\x00.csv",
    "a" * 4096,
]


def _ingestion_tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.mark.parametrize("name", _INGESTION_HOSTILE_NAMES, ids=range(len(_INGESTION_HOSTILE_NAMES)))
def test_T20_client_names_never_become_paths(
    api: TestClient, police_token: str, platform: Platform, tmp_path: Path, name: str
) -> None:
    """A name in Content-Disposition, the Idempotency-Key, a query parameter or the dataset path
    segment: files are stored under server ids only, inside the data folder, and nothing is
    written anywhere else. (Names the HTTP layer cannot carry, NUL and other control bytes in
    a header, are refused before the request is sent or answered 400.)"""
    outside = tmp_path.parent
    before_outside = {p.name for p in outside.iterdir()}
    quoted = name.encode("unicode_escape").decode("ascii")
    headers = {"Content-Disposition": f'attachment; filename="{quoted}"'}
    response = api.post(
        _INGESTION_URL,
        params={"mode": "replace", "filename": name, "name": name},
        content=to_csv(police_rows(20)),
        headers={
            "Authorization": f"Bearer {police_token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": f"t20-{uuid.uuid4()}",
            **headers,
        },
    )
    # A NUL in the query is refused at the edge (400); every other name is just a value.
    assert response.status_code == (400 if "\x00" in name else 201), response.text
    # The same name (escaped to printable ASCII) as the Idempotency-Key: a value, not a path.
    keyed = _ingestion_post(api, police_token, to_csv(police_rows(21)), key=quoted[:200])
    assert keyed.status_code == 201, keyed.text
    # As the dataset segment: never a file name.
    segment = api.post(
        f"/v1/datasets/{quoted[:300]}/uploads",
        params={"mode": "replace"},
        content=b"a\n1\n",
        headers={
            "Authorization": f"Bearer {police_token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": f"t20-{uuid.uuid4()}",
        },
    )
    assert segment.status_code in {400, 404}, segment.text

    data_dir = platform.settings.data_dir
    for relative in _ingestion_tree(data_dir):
        assert ".." not in relative.split("/")
        assert "\\" not in relative and "\x00" not in relative and "passwd" not in relative
        assert "filename" not in relative and len(Path(relative).name) <= 80
    stored = _ingestion_tree(platform.storage.dataset_dir("police.occurrences"))
    id_name = re.compile(r"^[0-9a-f-]{36}\.parquet$")
    assert stored and all(id_name.match(entry) for entry in stored), stored
    assert {p.name for p in outside.iterdir()} == before_outside
    assert not (data_dir.parent / "x").exists() and not (data_dir.parent.parent / "x").exists()


# New versions "at once"


def test_new_version_is_seen_by_every_immediate_read_on_the_replica_that_took_it(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    """Issue 17: after an upload's 201, 3 of 8 immediate reads returned the previous version.
    The upload commits in the server process (the parse child touches no database), and a
    commit of this process forgets its cache-epoch reading: every read after the 201 on this
    replica sees the new version. Other replicas see it within the epoch watcher's max_age."""
    police = token_for(make_client())
    reader = {"Authorization": f"Bearer {token_for(make_client(org='vru', roles=('l1_analyst',)))}"}
    period = {"from": "2020-01-01", "to": "2030-01-01", "by": "csp"}
    seen: list[int] = []
    for seed in range(1, 5):
        uploaded = _ingestion_post(
            api, police, to_csv(police_rows(200, seed=seed)), key=f"at-once-{seed}"
        )
        assert uploaded.status_code == 201, uploaded.text
        version = uploaded.json()["version"]
        for _ in range(8):
            answer = api.get("/v1/products/sv-counts", params=period, headers=reader)
            assert answer.status_code == 200, answer.text
            seen.append(answer.json()["sources"]["police.occurrences"] - version)
    assert seen == [0] * 32
