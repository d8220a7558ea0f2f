"""Ingestion benchmark: a million-row police CSV pushed through the HTTP API, end to end.

Not a test: it prints figures and PASS/FAIL against the targets, and exits non-zero only when
something breaks (the server does not start, an upload is refused), never for a missed target.

    python scripts/bench_ingest.py [--rows N] [--keep]

The figure that matters is the ratio to a bare baseline measured in the same run on the same
machine (pyarrow reads the CSV and writes zstd Parquet, nothing else): absolute times say more
about the machine than about the platform.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
DATASET = "police.occurrences"
TARGET_RATIO = 4.0
TARGET_RSS_MB = 1.5 * 1024  # 1.5 GB, in MB of 2**20 bytes
SAMPLE_EVERY_S = 0.05
START_TIMEOUT_S = 60.0
UPLOAD_TIMEOUT_S = 600.0
MB = 1 << 20


class BenchError(Exception):
    """Something broke: the run has no meaningful figures."""


@dataclass
class Figures:
    rows: int
    csv_bytes: int
    generate_s: float
    baseline_s: float
    upload_s: float
    idle_rss: int
    peak_rss: int


def _together() -> Path:
    # The console script lives beside the interpreter running the benchmark, so the server
    # runs from the same installation as the code being measured.
    path = Path(sys.executable).parent / "together"
    if not path.exists():
        raise BenchError(f"{path} not found: install the project (make install) first")
    return path


def _server_env(data_dir: Path) -> dict[str, str]:
    # Other TOGETHER_* settings from the caller's shell (the Makefile exports a data dir) must
    # not leak into the measured server; only the database URL is deliberately passed on.
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOGETHER_")}
    env.update(
        TOGETHER_ENV="development",
        TOGETHER_DATA_DIR=str(data_dir),
        TOGETHER_UPLOAD_MAX_BYTES="2000000000",
    )
    database_url = os.environ.get("TOGETHER_DATABASE_URL")
    if database_url:
        env["TOGETHER_DATABASE_URL"] = database_url
    return env


def _run_cli(args: list[str], env: dict[str, str]) -> str:
    command = [str(_together()), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(
            f"`together {' '.join(args)}` exited {done.returncode}:\n{done.stderr.strip()}"
        )
    return done.stdout


def _create_client(env: dict[str, str]) -> tuple[str, str]:
    output = _run_cli(
        [
            "clients",
            "create",
            "bench-police",
            "--org",
            "hampshire-constabulary",
            "--role",
            "partner_system",
        ],
        env,
    )
    # Tolerate log lines around the JSON object the command prints.
    start, end = output.find("{"), output.rfind("}")
    try:
        created = json.loads(output[start : end + 1])
        return str(created["client_id"]), str(created["client_secret"])
    except (ValueError, KeyError) as exc:
        raise BenchError(f"unexpected output from `together clients create`: {output!r}") from exc


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


class Server:
    """`together serve` in its own process group, so stopping it takes its children too."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [str(_together()), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
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
                    f"server exited with {self.process.returncode}:\n{_log_tail(self.log_path)}"
                )
            try:
                if client.get(f"{self.base_url}/healthz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise BenchError(
            f"server not healthy after {START_TIMEOUT_S:.0f} s:\n{_log_tail(self.log_path)}"
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


class RssSampler:
    """Peak resident memory of a process and its children, sampled on a background thread."""

    def __init__(self, pid: int) -> None:
        # A dev extra, imported late so that --help and the preflight message work without it.
        import psutil

        self._psutil = psutil
        self._root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> int:
        total = 0
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except self._psutil.Error:
            return 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except self._psutil.Error:
                # A child may exit between listing and reading; it no longer holds memory.
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> RssSampler:
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._stop.clear()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.current())


def _best_of(times: int, action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def _baseline(csv_path: Path, parquet_path: Path) -> float:
    def run() -> None:
        table = pacsv.read_csv(
            csv_path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True)
        )
        pq.write_table(table, parquet_path, compression="zstd")

    seconds = _best_of(3, run)
    parquet_path.unlink(missing_ok=True)
    return seconds


def _token(client: httpx.Client, base_url: str, client_id: str, secret: str) -> str:
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


def _upload(client: httpx.Client, base_url: str, token: str, csv_path: Path, rows: int) -> None:
    with csv_path.open("rb") as body:
        # A file object makes httpx send Content-Length and stream 64 KiB reads.
        response = client.post(
            f"{base_url}/v1/datasets/{DATASET}/uploads",
            params={"mode": "replace"},
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "text/csv",
                "Idempotency-Key": str(uuid.uuid4()),
            },
            content=body,
            timeout=UPLOAD_TIMEOUT_S,
        )
    if response.status_code != 201:
        raise BenchError(f"upload refused: {response.status_code} {response.text[:2000]}")
    payload: dict[str, Any] = response.json()
    if payload.get("status") != "accepted" or payload.get("rows") != rows:
        raise BenchError(f"unexpected upload result: {json.dumps(payload)[:2000]}")


def _preflight() -> None:
    """Fail before minutes of generating data if the run cannot complete."""
    _together()
    try:
        import psutil  # noqa: F401
    except ImportError as exc:
        raise BenchError("psutil is missing: install the dev extras (make install)") from exc


def _measure(workdir: Path, rows: int) -> Figures:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from services.demo.generate import write_police_csv

    csv_path = workdir / f"{DATASET}.csv"
    print(f"generating {rows:,} police rows ...", flush=True)
    started = time.perf_counter()
    write_police_csv(csv_path, rows, seed=1)
    generate_s = time.perf_counter() - started

    print("measuring the baseline (pyarrow read_csv + zstd Parquet, best of 3) ...", flush=True)
    baseline_s = _baseline(csv_path, workdir / "baseline.parquet")

    env = _server_env(workdir / "data")
    _run_cli(["db", "upgrade"], env)
    client_id, secret = _create_client(env)
    server = Server(env, workdir / "server.log")
    try:
        with httpx.Client(timeout=30.0) as client:
            server.wait_ready(client)
            sampler = RssSampler(server.process.pid)
            idle_rss = sampler.current()
            print("uploading through the API (best of 2) ...", flush=True)
            upload_s = float("inf")
            peak = 0
            for _ in range(2):
                # Tokens are short-lived and an upload can be slow: one fresh token each.
                token = _token(client, server.base_url, client_id, secret)
                with sampler:
                    started = time.perf_counter()
                    _upload(client, server.base_url, token, csv_path, rows)
                    upload_s = min(upload_s, time.perf_counter() - started)
                peak = max(peak, sampler.peak)
    finally:
        server.stop()
    return Figures(
        rows=rows,
        csv_bytes=csv_path.stat().st_size,
        generate_s=generate_s,
        baseline_s=baseline_s,
        upload_s=upload_s,
        idle_rss=idle_rss,
        peak_rss=peak,
    )


def _report(figures: Figures) -> None:
    ratio = figures.upload_s / figures.baseline_s
    peak_mb = figures.peak_rss / MB
    ratio_ok = ratio <= TARGET_RATIO
    rss_ok = peak_mb < TARGET_RSS_MB
    verdict = {True: "PASS", False: "FAIL"}
    print()
    print(f"rows               {figures.rows:,}")
    print(f"csv size           {figures.csv_bytes / MB:,.1f} MB")
    print(f"generation         {figures.generate_s:.2f} s (not part of any figure)")
    print(f"baseline           {figures.baseline_s:.2f} s (pyarrow read + zstd Parquet, best of 3)")
    print(f"end-to-end         {figures.upload_s:.2f} s (HTTP upload to 201, best of 2)")
    print(f"throughput         {figures.rows / figures.upload_s:,.0f} rows/s")
    print(
        f"ratio              {ratio:.2f}x baseline (target <= {TARGET_RATIO:.0f}x)"
        f"  {verdict[ratio_ok]}"
    )
    print(f"server RSS idle    {figures.idle_rss / MB:,.0f} MB")
    print(
        f"server RSS peak    {peak_mb:,.0f} MB (target < {TARGET_RSS_MB:,.0f} MB)"
        f"  {verdict[rss_ok]}"
    )
    print(f"overall            {verdict[ratio_ok and rss_ok]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="police rows to upload")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")

    try:
        _preflight()
    except BenchError as exc:
        print(f"bench error: {exc}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="together-bench-"))
    try:
        figures = _measure(workdir, args.rows)
    except BenchError as exc:
        print(f"bench error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    _report(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
