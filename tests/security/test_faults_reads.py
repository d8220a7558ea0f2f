"""Faults on the read side, with real processes (security-tests T34 and T36).

T34: a real TCP proxy between a live server and PostgreSQL, cut by the test, is a real network
partition (the server's connections die mid-use and new ones are refused): reads answer 503 in
bounded time with no data, nothing is half-written, and once the link heals reads resume with
no restart. T36: `together db upgrade` killed (SIGKILL) at different moments leaves PostgreSQL
at the old revision or the new one, never between: the migrations run in one transaction
(transactional DDL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from services.kit.db import normalise_url
from services.kit.migrate import current_heads
from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.live import LiveServer, free_port, live_token, together_bin

pytestmark = pytest.mark.slow


class _FaultsReadsProxy:
    """Forwards 127.0.0.1:port to a target; `cut()` drops every open connection and refuses
    new ones (accepted, then closed at once) until `heal()`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            ends, self._open = self._open, set()
        for end in ends:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                end.close()

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()


def _faults_reads_wait(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def _faults_reads_proxy(platform: Platform) -> Iterator[_FaultsReadsProxy]:
    if platform.engine.dialect.name != "postgresql":
        pytest.skip("a network partition needs a database over the network (PostgreSQL)")
    url = make_url(platform.settings.resolved_database_url)
    proxy = _FaultsReadsProxy(url.host or "127.0.0.1", url.port or 5432)
    yield proxy
    proxy.close()


def test_T34_postgresql_cut_mid_read_answers_503_then_reads_resume_without_restart(
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    _faults_reads_proxy: _FaultsReadsProxy,
    tmp_path: Path,
) -> None:
    proxy = _faults_reads_proxy
    reader = make_client(org="vru", roles=("l1_reader",))
    proxied = (
        make_url(platform.settings.resolved_database_url)
        .set(host="127.0.0.1", port=proxy.port)
        .render_as_string(hide_password=False)
    )
    server = LiveServer(platform.settings, tmp_path / "server.log", TOGETHER_DATABASE_URL=proxied)
    try:
        token = live_token(server, reader.client_id, reader.client_secret)
        headers = {"Authorization": f"Bearer {token}"}

        def read() -> httpx.Response:
            return httpx.get(server.url + "/v1/audit/checkpoints", headers=headers, timeout=30)

        assert read().status_code == 200
        served_before = _faults_reads_count(platform, "audit.checkpoints_listed")

        proxy.cut()
        started = time.monotonic()
        answers = [read() for _ in range(3)]
        assert time.monotonic() - started < 30  # bounded: answered, not hung
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert "checkpoints" not in answer.json()
        assert httpx.get(server.url + "/readyz", timeout=30).status_code == 503
        # Nothing half-written: no read was recorded as served while the link was down.
        assert _faults_reads_count(platform, "audit.checkpoints_listed") == served_before

        proxy.heal()
        assert _faults_reads_wait(lambda: read().status_code == 200, 30)
        assert httpx.get(server.url + "/readyz", timeout=30).status_code == 200
        assert server.process.poll() is None  # the same process: no restart
    finally:
        server.stop()
    assert _faults_reads_count(platform, "audit.checkpoints_listed") >= served_before + 1


def _faults_reads_count(platform: Platform, action: str) -> int:
    with platform.engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT count(*) FROM audit_events WHERE action = :a"), {"a": action}
            ).scalar_one()
        )


def test_T36_a_migration_killed_mid_run_leaves_the_old_or_the_new_revision(
    platform: Platform, tmp_path: Path
) -> None:
    if platform.engine.dialect.name != "postgresql":
        pytest.skip("transactional DDL across the whole upgrade is PostgreSQL's")
    admin = create_engine(
        normalise_url(platform.settings.resolved_database_url), isolation_level="AUTOCOMMIT"
    )
    (head,) = current_heads()
    name = f"together_kill_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = make_url(platform.settings.resolved_database_url).set(database=name)
    states = []
    try:
        admin.connect().execute(text(f'CREATE DATABASE "{name}"')).close()
        environment = dict(os.environ)
        environment.update(
            {
                "TOGETHER_ENV": "test",
                "TOGETHER_DATA_DIR": str(tmp_path / "var"),
                "TOGETHER_DATABASE_URL": url.render_as_string(hide_password=False),
            }
        )
        for delay in (0.5, 1.0, 1.5, 2.0, 2.5, 3.5):
            process = subprocess.Popen(
                [together_bin(), "db", "upgrade"],
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            states.append(_faults_reads_state(url.render_as_string(hide_password=False)))
            if states[-1][0] == head:
                break
        for revision, tables in states:
            assert revision in (None, head), states
            if revision is None:
                assert tables == set(), states  # old: nothing of the new schema
            else:
                assert {"audit_events", "audit_checkpoints"} <= tables
        finished = subprocess.run(
            [together_bin(), "db", "upgrade"], env=environment, capture_output=True, timeout=120
        )
        assert finished.returncode == 0, finished.stderr
        assert _faults_reads_state(url.render_as_string(hide_password=False))[0] == head
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _faults_reads_state(url: str) -> tuple[str | None, set[str]]:
    """The revision a database is at and its tables (alembic's own table aside)."""
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
            revision = None
            if inspect(connection).has_table("alembic_version"):
                revision = connection.execute(
                    text("SELECT version_num FROM alembic_version")
                ).scalar_one_or_none()
        return revision, tables
    finally:
        engine.dispose()
