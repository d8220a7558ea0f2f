"""A real server process on a free port, for tests that need real HTTP or a real crash."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.kit.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def together_bin() -> str:
    return str(Path(sys.executable).parent / "together")


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "TOGETHER_ENV": settings.env.value,
            "TOGETHER_DATA_DIR": str(settings.data_dir),
            "TOGETHER_DATABASE_URL": settings.resolved_database_url,
            "TOGETHER_IDEMPOTENCY_LEASE_SECONDS": str(settings.idempotency_lease_seconds),
        }
    )
    # The store the test's settings use (a local folder, or the test's S3 prefix).
    for name in ("storage_url", "s3_endpoint_url", "s3_region"):
        value = getattr(settings, name)
        if value is not None:
            env[f"TOGETHER_{name.upper()}"] = str(value)
    for name in ("s3_access_key_id", "s3_secret_access_key"):
        secret = getattr(settings, name)
        if secret is not None:
            env[f"TOGETHER_{name.upper()}"] = secret.get_secret_value()
    if settings.key_file is not None:
        env["TOGETHER_KEY_FILE"] = str(settings.key_file)
    if settings.audit_key_file is not None:
        env["TOGETHER_AUDIT_KEY_FILE"] = str(settings.audit_key_file)
    env.update(extra)
    return env


def live_token(server: LiveServer, client_id: str, client_secret: str) -> str:
    response = httpx.post(
        server.url + "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, client_secret),
    )
    response.raise_for_status()
    value: str = response.json()["access_token"]
    return value


class LiveServer:
    def __init__(self, settings: Settings, log_path: Path, **extra_env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [together_bin(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=settings_env(settings, **extra_env),
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            self._log.close()
            raise
        try:
            self._wait_until_healthy(log_path)
        except BaseException:
            # Ended, and its log closed, before the error reaches the test.
            self.stop()
            raise

    def _wait_until_healthy(self, log_path: Path) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {log_path}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start in 30 s; see {log_path}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._log.close()
