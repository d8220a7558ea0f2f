"""What both benchmarks need: the `together` CLI, a server process, tokens and uploads.

Imported by the scripts beside it (`python scripts/bench_*.py` puts this folder on sys.path).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT_S = 60.0
UPLOAD_TIMEOUT_S = 600.0


class BenchError(Exception):
    """Something broke: the run has no meaningful figures."""


def together() -> Path:
    # The console script lives beside the interpreter running the benchmark, so the server
    # runs from the same installation as the code being measured.
    path = Path(sys.executable).parent / "together"
    if not path.exists():
        raise BenchError(f"{path} not found: install the project (make install) first")
    return path


def server_env(data_dir: Path, database_url: str | None) -> dict[str, str]:
    # Other TOGETHER_* settings from the caller's shell (the Makefile exports a data dir) must
    # not leak into the measured server; only the database URL is deliberately passed on.
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOGETHER_")}
    env.update(
        TOGETHER_ENV="development",
        TOGETHER_DATA_DIR=str(data_dir),
        TOGETHER_UPLOAD_MAX_BYTES=str(8 << 30),
        TOGETHER_UPLOAD_MAX_DECOMPRESSED_BYTES=str(64 << 30),
    )
    if database_url:
        env["TOGETHER_DATABASE_URL"] = database_url
    return env


def run_cli(args: list[str], env: dict[str, str]) -> str:
    command = [str(together()), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(
            f"`together {' '.join(args)}` exited {done.returncode}:\n{done.stderr.strip()}"
        )
    return done.stdout


def create_client(
    env: dict[str, str], name: str, org: str, role: str, *, area: str | None = None
) -> tuple[str, str]:
    extra = ["--area", area] if area else []
    output = run_cli(["clients", "create", name, "--org", org, "--role", role, *extra], env)
    # Tolerate log lines around the JSON object the command prints.
    start, end = output.find("{"), output.rfind("}")
    try:
        created = json.loads(output[start : end + 1])
        return str(created["client_id"]), str(created["client_secret"])
    except (ValueError, KeyError) as exc:
        raise BenchError(f"unexpected output from `together clients create`: {output!r}") from exc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


class Server:
    """`together serve` in its own process group, so stopping it takes its workers too."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.base_url = f"http://{self.host}:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                str(together()),
                "serve",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, client: httpx.Client) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(
                    f"server exited with {self.process.returncode}:\n{log_tail(self.log_path)}"
                )
            try:
                if client.get(f"{self.base_url}/healthz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise BenchError(
            f"server not healthy after {START_TIMEOUT_S:.0f} s:\n{log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
            except ProcessLookupError:
                pass
        self._log.close()


def token(client: httpx.Client, base_url: str, client_id: str, secret: str) -> str:
    response = client.post(
        f"{base_url}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
        },
    )
    if response.status_code != 200:
        raise BenchError(f"token request failed: {response.status_code} {response.text[:500]}")
    return str(response.json()["access_token"])


def upload(
    client: httpx.Client, base_url: str, access_token: str, dataset: str, csv_path: Path
) -> dict[str, Any]:
    """Push a CSV (replace); the accepted upload's JSON, or BenchError."""
    with csv_path.open("rb") as body:
        # A file object makes httpx send Content-Length and stream 64 KiB reads.
        response = client.post(
            f"{base_url}/v1/datasets/{dataset}/uploads",
            params={"mode": "replace"},
            headers={
                "Authorization": f"Bearer {access_token}",
                "Content-Type": "text/csv",
                "Idempotency-Key": str(uuid.uuid4()),
            },
            content=body,
            timeout=UPLOAD_TIMEOUT_S,
        )
    if response.status_code != 201:
        raise BenchError(
            f"upload of {dataset} refused: {response.status_code} {response.text[:2000]}"
        )
    payload: dict[str, Any] = response.json()
    if payload.get("status") != "accepted":
        raise BenchError(f"unexpected upload result for {dataset}: {json.dumps(payload)[:2000]}")
    return payload


# Results: every figure of a `make bench` run in one JSON file, the README's table made from it.

ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = ROOT / "var" / "bench" / "results.json"
# The last published run, kept in the repository: the README's table is rendered from it.
PUBLISHED_FILE = ROOT / "docs" / "benchmarks.json"
FIELDS = ("figure", "measured", "baseline", "ratio", "target", "result")


def record(
    key: str,
    figure: str,
    measured: str,
    target: str,
    passed: bool | None,
    *,
    baseline: str = "",
    ratio: float | None = None,
    value: float | None = None,
    unit: str = "",
) -> None:
    """Adds one figure to this run's results file (created by `bench_report.py --reset`).

    `measured`, `baseline` and `target` are as a reader wants them (with units); `value` and
    `unit` the bare number, for tools. `passed` None: a figure printed for information only.
    """
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    try:
        document: dict[str, Any] = json.loads(RESULTS_FILE.read_text())
    except (OSError, ValueError):
        document = {"started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    document.setdefault("figures", {})[key] = {
        "figure": figure,
        "measured": measured,
        "baseline": baseline,
        "ratio": None if ratio is None else round(ratio, 2),
        "target": target,
        "result": "info" if passed is None else ("PASS" if passed else "FAIL"),
        "value": value,
        "unit": unit,
    }
    temporary = RESULTS_FILE.with_suffix(".partial")
    temporary.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    temporary.replace(RESULTS_FILE)


class Progress:
    """One line of progress for a long step: done, rate and seconds left, at most once a second."""

    def __init__(self, what: str, total: int, unit: str) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.started = time.monotonic()
        self._shown = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self._shown < 1.0 and done < self.total:
            return
        self._shown = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else float("inf")
        sys.stderr.write(
            f"\r  {self.what}: {done:,} of {self.total:,} {self.unit} "
            f"({rate:,.0f}/s, {left:,.0f} s left)   "
        )
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
