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
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import benchkit
import httpx
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from benchkit import BenchError, Server, create_client, run_cli, server_env, together

ROOT = Path(__file__).resolve().parent.parent
DATASET = "police.occurrences"
TARGET_RATIO = 2.5
TARGET_RSS_MB = 1.5 * 1024  # 1.5 GB, in MB of 2**20 bytes
SAMPLE_EVERY_S = 0.05
MB = 1 << 20


@dataclass
class Figures:
    rows: int
    csv_bytes: int
    generate_s: float
    baseline_s: float
    upload_s: float
    idle_rss: int
    peak_rss: int


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


def _preflight() -> None:
    """Fail before minutes of generating data if the run cannot complete."""
    together()
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

    env = server_env(workdir / "data", os.environ.get("TOGETHER_DATABASE_URL"))
    run_cli(["db", "upgrade"], env)
    client_id, secret = create_client(
        env, "bench-police", "hampshire-constabulary", "partner_system"
    )
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
                access_token = benchkit.token(client, server.base_url, client_id, secret)
                with sampler:
                    started = time.perf_counter()
                    result = benchkit.upload(
                        client, server.base_url, access_token, DATASET, csv_path
                    )
                    if result.get("rows") != rows:
                        raise BenchError(f"the upload stored {result.get('rows')} rows, not {rows}")
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
        f"ratio              {ratio:.2f}x baseline (target <= {TARGET_RATIO:g}x)"
        f"  {verdict[ratio_ok]}"
    )
    print(f"server RSS idle    {figures.idle_rss / MB:,.0f} MB")
    print(
        f"server RSS peak    {peak_mb:,.0f} MB (target < {TARGET_RSS_MB:,.0f} MB)"
        f"  {verdict[rss_ok]}"
    )
    print(f"overall            {verdict[ratio_ok and rss_ok]}")
    size = f"{figures.rows:,}-row police CSV"
    benchkit.record(
        f"ingest.push_{figures.rows}",
        f"{size} pushed end to end over HTTP",
        f"{figures.upload_s:.2f} s ({figures.rows / figures.upload_s:,.0f} rows/s)",
        f"<= {TARGET_RATIO:g}x baseline",
        ratio_ok,
        baseline=f"pyarrow read + zstd Parquet write {figures.baseline_s:.2f} s",
        ratio=ratio,
        value=figures.upload_s,
        unit="s",
    )
    benchkit.record(
        f"ingest.peak_memory_{figures.rows}",
        f"server peak memory pushing the {size}",
        f"{peak_mb:,.0f} MB (idle {figures.idle_rss / MB:,.0f} MB)",
        f"< {TARGET_RSS_MB:,.0f} MB",
        rss_ok,
        value=peak_mb,
        unit="MB",
    )


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
