"""Two replicas as real processes: one database, one S3 store, no shared folder.

Each replica is a `together serve` process with a data folder of its own (on S3 nothing in it
is shared); both run the audit sealer, the checkpoint writer and the cache-epoch watcher, as
every server process does. The test checks what an operator running N replicas relies on:
an upload on one is read on the other at once, an Idempotency-Key held by one is honoured by
the other, a revocation on one reaches the other within the epoch bound, the two keep one
audit chain and one checkpoint sequence, both materialising a shared table keep one
version of it, both running retention at once remove the expired rows once (the lease), and
a replica removes its cached copies of objects another process deleted, and fetches a version
uploaded through the other before anyone reads it there.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from services.audit.chain import verify_chain
from services.audit.models import AuditCheckpoint, AuditEvent
from services.demo.generate import generate_police
from services.ingestion.models import IdempotencyRecord, IdempotencyState
from services.kit.clock import utcnow
from services.kit.settings import Settings
from services.platform import Platform
from services.retention import certificates
from services.retention import service as retention_service
from services.retention.cutoff import cutoff_day
from services.retention.models import DataDeletion, DeletionKind
from services.storage import repository
from services.storage import service as storage_service
from tests.fixtures.app import ClientCredentials
from tests.fixtures.cli import run_cli, run_cli_bytes
from tests.fixtures.seaweedfs import SeaweedServer
from tests.ingestion.helpers import police_rows, to_csv
from tests.live import LiveServer, live_token
from tests.sharing.helpers import sharing_settings

pytestmark = pytest.mark.slow

CHECKPOINT_SECONDS = 1.0  # frequent checkpoints, so that both replicas write several
SEAL_SECONDS = 0.25
BOUND_SECONDS = 2.0  # the design bound is 0.25 s plus one query; margin for a busy machine
RETENTION_SECONDS = 1.0
QUERY = "/delta-sharing/shares/strategic/schemas/violence/tables/flags/query"


@pytest.fixture
def settings(
    request: pytest.FixtureRequest,
    data_dir: Path,
    database_url: str,
    key_file: Path,
    audit_key_file: Path,
) -> Settings:
    """Always the S3 store (whatever TOGETHER_TEST_STORAGE says), and frequent checkpoints."""
    base = sharing_settings(data_dir, database_url, key_file, audit_key_file)
    server: SeaweedServer = request.getfixturevalue("seaweedfs")
    prefix: str = request.getfixturevalue("s3_prefix")
    return base.model_copy(
        update={
            **server.settings_update(prefix),
            "idempotency_lease_seconds": 30,
            "audit_checkpoint_interval_seconds": CHECKPOINT_SECONDS,
        }
    )


class Replicas:
    """Replica A and replica B; either can be stopped and started again on its own folder."""

    def __init__(self, settings: Settings, folder: Path, **extra_env: str) -> None:
        self._settings = settings
        self._folder = folder
        self._extra_env = extra_env
        self.started: list[LiveServer] = []
        try:
            self.a = self.start("a")
            self.b = self.start("b")
        except BaseException:
            self.stop_all()
            raise

    def start(self, name: str) -> LiveServer:
        data_dir = self._folder / f"replica-{name}"
        data_dir.mkdir(exist_ok=True)
        own = self._settings.model_copy(update={"data_dir": data_dir})
        server = LiveServer(
            own, self._folder / f"{name}.log", **_env(self._settings), **self._extra_env
        )
        self.started.append(server)
        return server

    def token(self, server: LiveServer, who: ClientCredentials) -> str:
        return live_token(server, who.client_id, who.client_secret)

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()

    def logged_problems(self) -> list[str]:
        found = []
        for name in ("a", "b"):
            for line in (self._folder / f"{name}.log").read_text().splitlines():
                if " ERROR " in line or " WARNING " in line or "Traceback" in line:
                    found.append(f"{name}: {line}")
        return found


def _env(settings: Settings) -> dict[str, str]:
    return {
        "TOGETHER_SHARING_FILE": str(settings.sharing_file),
        "TOGETHER_SHARING_REFRESH_SECONDS": str(settings.sharing_refresh_seconds),
        "TOGETHER_AUDIT_CHECKPOINT_INTERVAL_SECONDS": str(CHECKPOINT_SECONDS),
        # Sealing rounds often, so that the two replicas' rounds meet.
        "TOGETHER_AUDIT_SEAL_INTERVAL_SECONDS": str(SEAL_SECONDS),
    }


def _running(platform: Platform, folder: Path, **extra_env: str) -> Iterator[Replicas]:
    started = Replicas(platform.settings, folder, **extra_env)
    try:
        yield started
    finally:
        started.stop_all()
    # Neither replica logged a failed round (a sealer or checkpoint conflict, say).
    assert started.logged_problems() == []


@pytest.fixture
def replicas(platform: Platform, tmp_path: Path) -> Iterator[Replicas]:
    yield from _running(platform, tmp_path)


@pytest.fixture
def retaining_replicas(platform: Platform, tmp_path: Path) -> Iterator[Replicas]:
    """Both replicas run retention every second: their runs meet at the lease."""
    yield from _running(
        platform, tmp_path, TOGETHER_RETENTION_INTERVAL_SECONDS=str(RETENTION_SECONDS)
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _upload(
    server: LiveServer, token: str, dataset: str, body: bytes, key: str | None = None
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/datasets/{dataset}/uploads?mode=replace",
        content=body,
        headers={
            **_bearer(token),
            "Content-Type": "text/csv",
            "Idempotency-Key": key or str(uuid.uuid4()),
        },
        timeout=60,
    )


def _current_version(server: LiveServer, token: str, dataset: str) -> int | None:
    response = httpx.get(f"{server.url}/v1/datasets/{dataset}", headers=_bearer(token))
    assert response.status_code == 200, response.text
    current = response.json()["current_version"]
    return None if current is None else int(current["version"])


def test_an_upload_on_one_replica_is_read_on_the_other_at_once(
    replicas: Replicas, make_client: Callable[..., ClientCredentials]
) -> None:
    police = make_client()
    token_a, token_b = replicas.token(replicas.a, police), replicas.token(replicas.b, police)
    body = to_csv(police_rows(300, seed=3))
    for round_ in range(3):
        # B has read the dataset (and holds it in memory) before each upload on A.
        before = _current_version(replicas.b, token_b, "police.occurrences")
        accepted = _upload(replicas.a, token_a, "police.occurrences", body)
        assert accepted.status_code == 201, accepted.text
        version = accepted.json()["version"]
        assert before is None or version == before + 1, (round_, before, version)
        # The very next request on B, with no wait.
        assert _current_version(replicas.b, token_b, "police.occurrences") == version


def test_an_idempotency_key_held_by_one_replica_is_honoured_by_the_other(
    platform: Platform, replicas: Replicas, make_client: Callable[..., ClientCredentials]
) -> None:
    police = make_client()
    token_a, token_b = replicas.token(replicas.a, police), replicas.token(replicas.b, police)
    # Large enough that A holds the key for a while after receiving the body.
    body = to_csv(police_rows(30000, seed=11))
    key = str(uuid.uuid4())
    on_a: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: on_a.append(_upload(replicas.a, token_a, "police.occurrences", body, key))
    )
    sender.start()

    def state() -> str | None:
        with platform.sessions() as session:
            record = session.execute(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.client_id == police.client_id, IdempotencyRecord.key == key
                )
            ).scalar_one_or_none()
            return None if record is None else record.state

    deadline = time.monotonic() + 30
    while state() is None:
        assert time.monotonic() < deadline, "A never claimed the key"
        time.sleep(0.01)
    in_flight = _upload(replicas.b, token_b, "police.occurrences", body, key)
    # Looked at after B answered: A still held the key then, so B must have refused.
    still_held = state() == IdempotencyState.IN_FLIGHT
    sender.join(timeout=60)
    assert not sender.is_alive() and len(on_a) == 1
    first = on_a[0]
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    if still_held:
        assert in_flight.status_code == 409, in_flight.text
        assert in_flight.headers["content-type"].startswith("application/problem+json")
    else:  # A finished before B answered: B replayed (checked below) rather than refused
        assert in_flight.status_code in (409, 201), in_flight.text
    assert in_flight.status_code == 409 or in_flight.json() == first.json()

    replayed = _upload(replicas.b, token_b, "police.occurrences", body, key)
    assert replayed.status_code == 201, replayed.text
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert replayed.json() == first.json()
    # Stored once: one version, the one A published.
    dataset = httpx.get(
        f"{replicas.b.url}/v1/datasets/police.occurrences", headers=_bearer(token_b)
    )
    assert dataset.json()["current_version"]["version"] == first.json()["version"] == 1
    assert dataset.json()["current_version"]["upload_id"] == first.json()["upload_id"]


def _until_refused(client: httpx.Client) -> float:
    started = time.monotonic()
    while time.monotonic() - started < BOUND_SECONDS:
        if client.get("/v1/products").status_code == 401:
            return time.monotonic() - started
        time.sleep(0.005)
    raise AssertionError(f"the disabled client still accepted after {BOUND_SECONDS} s")


def test_a_client_disabled_on_one_replica_is_refused_by_the_other_within_the_bound(
    replicas: Replicas, make_client: Callable[..., ClientCredentials]
) -> None:
    admin = make_client(org="vru", roles=("admin",))
    reader = make_client(org="vru", roles=("l1_reader",))
    admin_token = replicas.token(replicas.a, admin)
    headers_a = _bearer(replicas.token(replicas.a, reader))
    headers_b = _bearer(replicas.token(replicas.b, reader))
    with (
        httpx.Client(base_url=replicas.a.url, headers=headers_a) as on_a,
        httpx.Client(base_url=replicas.b.url, headers=headers_b) as on_b,
    ):
        for _ in range(10):  # both hold the principal in memory by now
            assert on_a.get("/v1/products").status_code == 200
            assert on_b.get("/v1/products").status_code == 200
        disabled = httpx.post(
            f"{replicas.a.url}/v1/admin/clients/{reader.client_id}/disable",
            headers=_bearer(admin_token),
        )
        assert disabled.status_code == 200, disabled.text
        # A, which made the change, refuses the very next request.
        assert on_a.get("/v1/products").status_code == 401
        seen_after = _until_refused(on_b)
        assert all(on_b.get("/v1/products").status_code == 401 for _ in range(10))
    print(f"disabled on A, refused by B after {seen_after:.3f} s")


def _checkpoints(platform: Platform) -> list[tuple[int, int, datetime]]:
    with platform.sessions() as session:
        rows = session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)).scalars()
        return [(c.seq, c.tree_size, c.issued_at) for c in rows]


def test_both_replicas_keep_one_audit_chain_and_one_checkpoint_sequence(
    platform: Platform,
    replicas: Replicas,
    make_client: Callable[..., ClientCredentials],
    tmp_path: Path,
) -> None:
    reader = make_client(org="vru", roles=("l1_reader",))
    ig_lead = make_client(org="vru", roles=("ig_lead",))

    def traffic(servers: list[LiveServer], seconds: float, at_least: int = 24) -> int:
        """Audited reads and denials on each server in turn, for `seconds` and `at_least` as
        many requests (however slow a busy machine makes them)."""
        tokens = {s.url: replicas.token(s, reader) for s in servers}
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline or count < at_least:
            for server in servers:
                headers = _bearer(tokens[server.url])
                assert httpx.get(f"{server.url}/v1/products", headers=headers).status_code == 200
                denied = httpx.get(f"{server.url}/v1/admin/clients", headers=headers)
                assert denied.status_code == 403, denied.text
                count += 2
            time.sleep(0.02)
        return count

    # Both replicas seal and sign at once for a few checkpoint intervals.
    traffic([replicas.a, replicas.b], 3 * CHECKPOINT_SECONDS)
    together_ = len(_checkpoints(platform))
    assert together_ >= 3
    # Each replica signs on its own: B alone while A is stopped, then A alone again.
    replicas.a.stop()
    traffic([replicas.b], 2 * CHECKPOINT_SECONDS)
    by_b = len(_checkpoints(platform))
    assert by_b > together_
    replicas.a = replicas.start("a")
    replicas.b.stop()
    traffic([replicas.a], 2 * CHECKPOINT_SECONDS)
    written = _checkpoints(platform)
    assert len(written) > by_b

    with platform.sessions() as session:
        check = verify_chain(session)
    assert check.ok, check
    # One sequence: no gap, no checkpoint signed twice (the tree only grew, and no two were
    # issued within one interval, as two replicas racing for the same slot would).
    seqs = [seq for seq, _, _ in written]
    assert seqs == list(range(len(seqs))), seqs
    sizes = [size for _, size, _ in written]
    assert sizes == sorted(sizes), sizes
    issued = [at for _, _, at in written]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(issued)]
    assert min(gaps) >= CHECKPOINT_SECONDS, gaps

    # The IG lead's path: export, then verify offline against the published checkpoints.
    published = httpx.get(
        f"{replicas.a.url}/v1/audit/checkpoints",
        headers=_bearer(replicas.token(replicas.a, ig_lead)),
    )
    assert published.status_code == 200, published.text
    saved = tmp_path / "checkpoints.json"
    saved.write_text(published.text)
    exported = run_cli_bytes(platform.settings, "audit", "export")
    assert exported.returncode == 0, exported.stderr
    export = tmp_path / "audit.ndjson"
    export.write_bytes(exported.stdout)
    verified = run_cli(
        platform.settings, "audit", "verify", str(export), "--key", str(saved),
        "--checkpoints", str(saved),
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK:")


def test_two_replicas_materialising_one_table_at_once_keep_one_version(
    platform: Platform, replicas: Replicas, make_client: Callable[..., ClientCredentials]
) -> None:
    police = make_client()
    accepted = _upload(
        replicas.a,
        replicas.token(replicas.a, police),
        "police.occurrences",
        to_csv(police_rows(1500, seed=5)),
    )
    assert accepted.status_code == 201, accepted.text
    reader = make_client(org="vru", roles=("l1_reader",))
    tokens = {s.url: replicas.token(s, reader) for s in (replicas.a, replicas.b)}
    answers: dict[str, list[dict[str, Any]]] = {}
    barrier = threading.Barrier(2)

    def query(server: LiveServer) -> None:
        barrier.wait()
        response = httpx.post(
            server.url + QUERY, json={}, headers=_bearer(tokens[server.url]), timeout=60
        )
        assert response.status_code == 200, response.text
        answers[server.url] = [json.loads(line) for line in response.text.splitlines()]

    threads = [threading.Thread(target=query, args=(s,)) for s in (replicas.a, replicas.b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 2

    def described(lines: list[dict[str, Any]]) -> tuple[Any, ...]:
        file = lines[2]["file"]
        return (file["id"], file["size"], file.get("version"), json.dumps(lines[1]))

    a, b = (described(answers[s.url]) for s in (replicas.a, replicas.b))
    assert a == b
    # One object in the store for the one version: the loser's is gone.
    objects = list(platform.sharing.store.list("sharing"))
    assert [item.size for item in objects] == [a[1]], objects


def _retention_deletions(platform: Platform, dataset: str) -> list[DataDeletion]:
    with platform.sessions() as session:
        return list(
            session.execute(
                select(DataDeletion).where(
                    DataDeletion.dataset_id == dataset,
                    DataDeletion.kind == DeletionKind.RETENTION.value,
                )
            ).scalars()
        )


def test_both_replicas_running_retention_at_once_remove_expired_rows_once(
    platform: Platform,
    retaining_replicas: Replicas,
    make_client: Callable[..., ClientCredentials],
) -> None:
    dataset = "police.occurrences"
    rows = [
        row | {"occurrence_ref": f"R-{row['occurrence_ref']}"}
        for row in generate_police(400, seed=21, start=date(2019, 6, 1), end=date(2021, 6, 1))
    ]
    contract = platform.governance.active_contract(dataset)
    cutoff = cutoff_day(contract.retention, utcnow().date()).isoformat()
    expired = sum(1 for row in rows if row["recorded_date"] < cutoff)
    assert 0 < expired < len(rows)
    police = make_client()
    replicas = retaining_replicas
    accepted = _upload(replicas.a, replicas.token(replicas.a, police), dataset, to_csv(rows))
    assert accepted.status_code == 201, accepted.text

    deadline = time.monotonic() + 60
    while not any(d.state == "certified" for d in _retention_deletions(platform, dataset)):
        assert time.monotonic() < deadline, "no retention run certified a deletion in 60 s"
        time.sleep(0.2)
    # Several more rounds of each replica, each finding the lease free or the rows gone.
    time.sleep(4 * RETENTION_SECONDS)

    (deletion,) = _retention_deletions(platform, dataset)
    assert deletion.state == "certified" and deletion.rows_removed == expired
    assert deletion.body is not None and deletion.signature is not None
    keys = {k.key_id: k.raw for k in platform.audit_signer.published_keys()}
    document = certificates.published(deletion.body, deletion.signature)
    assert certificates.verify(document, keys) == []
    assert document["certificate"]["criteria"]["cutoff"] == cutoff
    with platform.sessions() as session:
        started = session.execute(
            select(AuditEvent).where(
                AuditEvent.action == "deletion.started", AuditEvent.resource == dataset
            )
        ).scalars()
        assert [event.details["deletion"] for event in started] == [deletion.id]
        info = storage_service.current_version(session, platform.storage, dataset)
        check = verify_chain(session)
    assert info is not None and info.version == deletion.to_version
    current = pa.concat_tables([pq.read_table(path) for path in info.files])
    assert current.num_rows == len(rows) - expired
    assert pc.min(current.column("recorded_date")).as_py().isoformat() >= cutoff
    assert check.ok, check
    assert replicas.logged_problems() == []


@pytest.fixture
def forgetting_replicas(platform: Platform, tmp_path: Path) -> Iterator[Replicas]:
    """Both replicas look for other replicas' deletions twice a second."""
    yield from _running(platform, tmp_path, TOGETHER_DELETED_COPIES_INTERVAL_SECONDS="0.5")


def test_a_replica_removes_its_copies_of_what_another_process_deleted(
    platform: Platform,
    forgetting_replicas: Replicas,
    make_client: Callable[..., ClientCredentials],
    tmp_path: Path,
) -> None:
    dataset = "police.occurrences"
    rows = [
        row | {"occurrence_ref": f"C-{row['occurrence_ref']}"}
        for row in generate_police(300, seed=23, start=date(2019, 6, 1), end=date(2021, 6, 1))
    ]
    replicas = forgetting_replicas
    police = make_client()
    # Uploaded through B: B keeps a read-through copy of the version's file in its cache.
    accepted = _upload(replicas.b, replicas.token(replicas.b, police), dataset, to_csv(rows))
    assert accepted.status_code == 201, accepted.text
    with platform.sessions() as session:
        version = repository.get_version(session, dataset, accepted.json()["version"])
        assert version is not None
        keys = [f.path for f in repository.version_files(session, version.id)]
    cache = tmp_path / "replica-b" / "cache"
    copies = [cache / key for key in keys]
    assert copies and all(path.is_file() for path in copies), copies

    # Another process (here the test's own) removes the expired rows: the files go from S3.
    outcomes = retention_service.run_retention(platform.governance)
    assert outcomes is not None
    (deletion,) = _retention_deletions(platform, dataset)
    assert deletion.state == "certified"
    deleted = {str(item["key"]) for item in deletion.files}
    assert set(keys) <= deleted

    deadline = time.monotonic() + 30
    while any(path.exists() for path in copies):
        assert time.monotonic() < deadline, "replica B still holds copies of deleted objects"
        time.sleep(0.1)
    # B still answers from the new version (fetched again from the store).
    token_b = replicas.token(replicas.b, police)
    assert _current_version(replicas.b, token_b, dataset) == deletion.to_version


def test_a_version_uploaded_through_one_replica_is_fetched_into_the_others_cache(
    platform: Platform,
    replicas: Replicas,
    make_client: Callable[..., ClientCredentials],
    tmp_path: Path,
) -> None:
    police = make_client()
    body = to_csv(police_rows(200, seed=31))
    accepted = _upload(replicas.a, replicas.token(replicas.a, police), "police.occurrences", body)
    assert accepted.status_code == 201, accepted.text
    with platform.sessions() as session:
        version = repository.get_version(session, "police.occurrences", accepted.json()["version"])
        assert version is not None
        files = repository.version_files(session, version.id)
    copies = [(tmp_path / "replica-b" / "cache" / f.path, f.size_bytes) for f in files]
    assert copies
    # Nobody reads through B: it fetches the new version on its own, whole.
    deadline = time.monotonic() + 20
    while not all(path.is_file() and path.stat().st_size == size for path, size in copies):
        assert time.monotonic() < deadline, "replica B did not fetch the new version"
        time.sleep(0.1)
