"""Uploads under real faults: a killed server (T32), a killed parser, the database cut at
commit (T34), a full disk (T35), a parser over its memory budget (T19)."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import make_url

from services.ingestion.models import IdempotencyRecord
from services.platform import Platform
from services.storage import service as storage_service
from services.storage.models import VersionFile
from tests.fixtures.app import ClientCredentials, MakeClient
from tests.fixtures.audit_events import events
from tests.fixtures.cli import run_cli
from tests.ingestion.helpers import police_rows, to_csv
from tests.live import LiveServer, live_token

_FAULTS_URL = "/v1/datasets/police.occurrences/uploads?mode=replace"
_FAULTS_CANARY = "Quixzebedeecanary"


def _faults_body(rows: int, seed: int) -> bytes:
    """A police CSV whose first named suspect is called by the canary (never stored in clear)."""
    data = police_rows(rows, seed=seed)
    named = next(row for row in data if row["suspect_surname"])
    named["suspect_surname"] = _FAULTS_CANARY
    return to_csv(data)


def _faults_headers(server: LiveServer, credentials: ClientCredentials, key: str) -> dict[str, str]:
    token = live_token(server, credentials.client_id, credentials.client_secret)
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "text/csv",
        "Idempotency-Key": key,
    }


def _faults_current(platform: Platform) -> storage_service.VersionInfo | None:
    with platform.sessions() as session:
        return storage_service.current_version(session, platform.storage, "police.occurrences")


def _faults_no_missing_files(platform: Platform) -> None:
    """No committed version points at a file that is not there."""
    with platform.sessions() as session:
        paths = session.execute(select(VersionFile.path)).scalars().all()
    missing = [p for p in paths if not platform.storage.absolute(p).is_file()]
    assert not missing


def _faults_clear_text_under(folder: Path) -> list[Path]:
    """Files under `folder` holding the canary name in clear."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and _FAULTS_CANARY.encode() in path.read_bytes():
            found.append(path)
    return found


def _faults_retry(
    url: str, body: bytes, headers: dict[str, str], *, within: float = 60
) -> httpx.Response:
    """Retry as a partner system would: again on 409 (in flight) and 503, until an answer."""
    deadline = time.monotonic() + within
    while True:
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=60)
            if response.status_code not in (409, 503) or time.monotonic() > deadline:
                return response
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


# T32: kill -9


@pytest.mark.slow
def test_T32_kill_during_ingest_then_retry_stores_each_batch_once(
    platform: Platform, make_client: MakeClient, tmp_path: Path
) -> None:
    """Five trials: SIGKILL the server at a random moment of an upload (body streaming, parse,
    commit), restart it, retry with the same key. Each acknowledged batch is the current
    version exactly once (one new version per batch); no version points at a missing file; no
    file under the data folder holds a name in clear (staging is ciphertext)."""
    platform.settings.idempotency_lease_seconds = 2
    credentials = make_client()
    body = _faults_body(20_000, seed=11)
    chooser = random.Random(32)
    for trial in range(5):
        key = f"t32-{trial}-{uuid.uuid4()}"
        server = LiveServer(platform.settings, tmp_path / f"server-{trial}.log")
        url = server.url + _FAULTS_URL
        try:
            headers = _faults_headers(server, credentials, key)
            outcome: dict[str, object] = {}

            def send(
                url: str = url,
                headers: dict[str, str] = headers,
                outcome: dict[str, object] = outcome,
            ) -> None:
                try:
                    outcome["response"] = httpx.post(url, content=body, headers=headers, timeout=60)
                except httpx.HTTPError as exc:
                    outcome["error"] = exc

            thread = threading.Thread(target=send)
            thread.start()
            time.sleep(chooser.uniform(0.05, 2.5))
            server.kill()
            thread.join(30)
        finally:
            server.stop()
        assert not _faults_clear_text_under(platform.settings.data_dir)
        before = _faults_current(platform)
        expected_version = trial + 1
        assert before is None or before.version in (expected_version - 1, expected_version)

        server = LiveServer(platform.settings, tmp_path / f"server-{trial}-again.log")
        try:
            url = server.url + _FAULTS_URL
            retry = _faults_retry(url, body, _faults_headers(server, credentials, key))
            assert retry.status_code == 201, retry.text
            if "response" in outcome:
                acknowledged = outcome["response"]
                assert isinstance(acknowledged, httpx.Response)
                if acknowledged.status_code == 201:
                    assert retry.json() == acknowledged.json()
        finally:
            server.stop()
        info = _faults_current(platform)
        assert info is not None and info.version == expected_version, (trial, outcome)
        assert info.row_count == 20_000
        _faults_no_missing_files(platform)
    assert len(events(platform, "dataset.ingested")) == 5


@pytest.mark.slow
def test_T32_crash_leaves_only_ciphertext_in_staging_and_the_sweep_removes_it(
    platform: Platform, make_client: MakeClient, tmp_path: Path
) -> None:
    """Attacker finding 5 (the T41 canary for staging): a server killed while a body streams in
    leaves its staging file behind; the file does not hold the canary name (it is encrypted
    under a key that died with the process), and `together storage sweep` removes it."""
    platform.settings.idempotency_lease_seconds = 1
    credentials = make_client()
    body = _faults_body(30_000, seed=12)
    server = LiveServer(platform.settings, tmp_path / "server.log")
    staging = platform.settings.staging_dir
    try:
        sent = threading.Event()

        def slow_body() -> Iterator[bytes]:
            step = 256 * 1024
            for offset in range(0, len(body), step):
                yield body[offset : offset + step]
                if offset > len(body) // 2:
                    sent.set()
                    time.sleep(0.05)

        def send() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(
                    server.url + _FAULTS_URL,
                    content=slow_body(),
                    headers=_faults_headers(server, credentials, "t32-staging"),
                    timeout=60,
                )

        thread = threading.Thread(target=send)
        thread.start()
        assert sent.wait(60)
        time.sleep(0.3)
        server.kill()
        thread.join(30)
    finally:
        server.stop()
    left = [path for path in staging.iterdir() if path.is_file()]
    assert left, "the crash should have left the staging file behind"
    assert sum(path.stat().st_size for path in left) > 1_000_000
    assert not _faults_clear_text_under(staging)
    assert not _faults_clear_text_under(platform.settings.data_dir)
    time.sleep(1.1)  # past the grace period
    swept = run_cli(platform.settings, "storage", "sweep", "--older-than", "0")
    assert swept.returncode == 0, swept.stderr
    # Every process that starts on the data folder (this command included) sweeps staging first,
    # so the file is gone whichever sweep took it.
    assert "staging file(s)" in swept.stdout
    assert not [path for path in staging.iterdir() if path.is_file()]
    assert not any(staging.iterdir())


# The parser in a child process


def _faults_parse_child(server_pid: int) -> psutil.Process | None:
    for child in psutil.Process(server_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                return child
    return None


@pytest.mark.slow
def test_T32_parser_killed_mid_parse_is_422_and_the_server_keeps_serving(
    platform: Platform, make_client: MakeClient, tmp_path: Path
) -> None:
    """Attacker finding 1: a native crash while parsing must not take the server down. The test
    makes the crash real by SIGKILLing the parse child (a native fault in Arrow ends the child
    the same way): the upload is answered 422 'could not be read', audited, nothing stored,
    the server still answers, and a retry with the same key runs again and succeeds."""
    credentials = make_client()
    first = _faults_body(200, seed=13)
    body = _faults_body(150_000, seed=14)
    server = LiveServer(platform.settings, tmp_path / "server.log")
    try:
        url = server.url + _FAULTS_URL
        created = httpx.post(
            url, content=first, headers=_faults_headers(server, credentials, "t32-v1"), timeout=60
        )
        assert created.status_code == 201, created.text
        headers = _faults_headers(server, credentials, "t32-parse")
        outcome: dict[str, httpx.Response] = {}

        def send() -> None:
            outcome["response"] = httpx.post(url, content=body, headers=headers, timeout=120)

        thread = threading.Thread(target=send)
        thread.start()
        child = None
        deadline = time.monotonic() + 60
        while child is None and time.monotonic() < deadline:
            child = _faults_parse_child(server.process.pid)
            time.sleep(0.01)
        assert child is not None, "no parse child appeared"
        time.sleep(0.2)
        child.kill()
        thread.join(60)
        response = outcome["response"]
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "UNREADABLE_FILE"
        assert "SIGKILL" in response.json()["detail"]
        assert server.process.poll() is None
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
        info = _faults_current(platform)
        assert info is not None and info.version == 1
        refused = [e for e in events(platform, "dataset.rejected") if e.reason == "unreadable file"]
        assert len(refused) == 1
        retry = httpx.post(url, content=body, headers=headers, timeout=120)
        assert retry.status_code == 201, retry.text
    finally:
        server.stop()
    info = _faults_current(platform)
    assert info is not None and info.version == 2 and info.row_count == 150_000
    assert not any(platform.settings.staging_dir.iterdir())
    leftovers = [
        p for p in platform.storage.dataset_dir("police.occurrences").iterdir() if p.name[0] == "."
    ]
    assert not leftovers


def test_T19_parser_over_its_memory_budget_is_422_and_the_server_unaffected(
    api: TestClient, police_token: str, platform: Platform
) -> None:
    """The parse child runs under an address-space limit (RLIMIT_AS): a file whose parse needs
    more than the budget ends the child (MemoryError or an abort), not the server."""
    platform.ingestion.parse_memory_bytes = 4 << 20
    body = to_csv(police_rows(60_000, seed=15))
    response = api.post(
        "/v1/datasets/police.occurrences/uploads",
        params={"mode": "replace"},
        content=body,
        headers={
            "Authorization": f"Bearer {police_token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": "t19-memory",
        },
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "UNREADABLE_FILE"
    assert _faults_current(platform) is None
    assert api.get("/healthz").status_code == 200
    platform.ingestion.parse_memory_bytes = 4 << 30
    again = api.post(
        "/v1/datasets/police.occurrences/uploads",
        params={"mode": "replace"},
        content=body,
        headers={
            "Authorization": f"Bearer {police_token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": "t19-memory",
        },
    )
    assert again.status_code == 201, again.text


# T34: the database cut at commit


class _FaultsProxy:
    """A TCP proxy between the server and PostgreSQL that the test can cut: a real network
    fault (every open connection reset, new ones closed at once) until `heal`."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for end in sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


@pytest.mark.slow
def test_T34_database_cut_at_commit_is_never_a_false_201(
    platform: Platform, make_client: MakeClient, tmp_path: Path
) -> None:
    """The server reaches PostgreSQL through a proxy that the test cuts once the upload has
    claimed its key (while it parses, before its commit): the client gets 503, never a 201;
    nothing is half-written (the previous version is current, no orphan file stays, no event
    for the upload); once the network is back, a retry with the same key stores the batch
    exactly once."""
    url = make_url(platform.settings.resolved_database_url)
    if not url.drivername.startswith("postgresql"):
        pytest.skip("a network cut needs a database over the network (PostgreSQL)")
    platform.settings.idempotency_lease_seconds = 2
    credentials = make_client()
    proxy = _FaultsProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    body = _faults_body(100_000, seed=16)
    key = "t34-commit"
    server = LiveServer(platform.settings, tmp_path / "server.log", TOGETHER_DATABASE_URL=proxied)
    try:
        target = server.url + _FAULTS_URL
        first = httpx.post(
            target,
            content=_faults_body(300, seed=17),
            headers=_faults_headers(server, credentials, "t34-v1"),
            timeout=60,
        )
        assert first.status_code == 201, first.text
        headers = _faults_headers(server, credentials, key)
        outcome: dict[str, httpx.Response] = {}

        def send() -> None:
            outcome["response"] = httpx.post(target, content=body, headers=headers, timeout=120)

        thread = threading.Thread(target=send)
        thread.start()
        deadline = time.monotonic() + 60
        claimed = False
        while not claimed and time.monotonic() < deadline:
            with platform.sessions() as session:
                claimed = (
                    session.execute(
                        select(IdempotencyRecord).where(IdempotencyRecord.key == key)
                    ).first()
                    is not None
                )
            time.sleep(0.02)
        assert claimed
        proxy.cut()
        thread.join(120)
        response = outcome["response"]
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        info = _faults_current(platform)
        assert info is not None and info.version == 1
        assert len(events(platform, "dataset.ingested")) == 1
        _faults_no_missing_files(platform)
        stored = {p.name for p in platform.storage.dataset_dir("police.occurrences").iterdir()}
        assert len(stored) == 1, stored  # the first version's file only: no orphan

        proxy.heal()
        retry = _faults_retry(target, body, headers)
        assert retry.status_code == 201, retry.text
        again = httpx.post(target, content=body, headers=headers, timeout=120)
        assert again.status_code == 201 and again.json() == retry.json()
    finally:
        server.stop()
        proxy.close()
    info = _faults_current(platform)
    assert info is not None and info.version == 2 and info.row_count == 100_000
    assert len(events(platform, "dataset.ingested")) == 2


# T35: the disk full


@contextlib.contextmanager
def _faults_small_folder(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs mounted at `path` (we run as root); skip where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _faults_fill(folder: Path, leave: int) -> Path:
    """Fill `folder`'s file system until about `leave` bytes are free."""
    filler = folder / "filler"
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(bytes(256 * 1024))
            handle.flush()
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    if free < leave:
        with open(filler, "r+b") as handle:
            handle.truncate(max(0, filler.stat().st_size - (leave - free)))
    return filler


@pytest.mark.parametrize("full", ["staging", "datasets"])
def test_T35_disk_full_during_an_upload_is_507_clean_and_audited(
    api: TestClient,
    police_token: str,
    platform: Platform,
    tmp_path: Path,
    full: str,
) -> None:
    """Real ENOSPC from a size-limited tmpfs: the staging folder full while the body streams
    in, or the datasets folder full while the parser writes Parquet. The client gets 507
    problem+json; no staging or partial file stays; the previous version is current and
    readable; the failure is audited; once space is freed, a retry with the same key succeeds
    without any repair."""
    settings = platform.settings
    mounts = {"staging": tmp_path / "small-staging", "datasets": tmp_path / "small-datasets"}
    with (
        _faults_small_folder(mounts["staging"], "8m"),
        _faults_small_folder(mounts["datasets"], "8m"),
    ):
        # Where the parser writes Parquet: the datasets folder, or the cache of an S3 store.
        local = {"staging": settings.staging_dir, "datasets": platform.storage.root}
        for name, mount in mounts.items():
            real = local[name]
            if real.exists():
                real.rmdir()
            (mount / "data").mkdir()
            real.symlink_to(mount / "data")

        def send(body: bytes, key: str) -> httpx.Response:
            return api.post(
                "/v1/datasets/police.occurrences/uploads",
                params={"mode": "replace"},
                content=body,
                headers={
                    "Authorization": f"Bearer {police_token}",
                    "Content-Type": "text/csv",
                    "Idempotency-Key": key,
                },
            )

        first = send(_faults_body(300, seed=18), "t35-v1")
        assert first.status_code == 201, first.text
        body = _faults_body(20_000, seed=19)  # 3-4 MB of CSV, a few hundred KB of Parquet
        filler = _faults_fill(mounts[full], leave=64 * 1024)
        response = send(body, "t35-full")
        assert response.status_code == 507, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "INSUFFICIENT_STORAGE"
        assert not any(settings.staging_dir.iterdir())
        dataset_dir = platform.storage.dataset_dir("police.occurrences")
        assert [p.name for p in dataset_dir.iterdir() if p.name.startswith(".")] == []
        info = _faults_current(platform)
        assert info is not None and info.version == 1
        assert sum(pq.read_metadata(path).num_rows for path in info.files) == 300
        refused = [
            e for e in events(platform, "dataset.rejected") if e.reason == "insufficient_storage"
        ]
        assert len(refused) == 1

        filler.unlink()
        retry = send(body, "t35-full")
        assert retry.status_code == 201, retry.text
        info = _faults_current(platform)
        assert info is not None and info.version == 2 and info.row_count == 20_000
        _faults_no_missing_files(platform)
        for name in mounts:
            local[name].unlink()
