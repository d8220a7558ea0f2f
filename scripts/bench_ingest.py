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
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    peak_shmem: int = 0
    large: LargeFigures | None = None


@dataclass
class LargeFigures:
    """The large push: a gzip body of many more rows, through the same server."""

    rows: int
    csv_bytes: int
    gzip_bytes: int
    upload_s: float
    peak_rss: int
    peak_shmem: int


class RssSampler:
    """Peak resident memory of a process and its children, sampled on a background thread."""

    def __init__(self, pid: int) -> None:
        # A dev extra, imported late so that --help and the preflight message work without it.
        import psutil

        self._psutil = psutil
        self._root = psutil.Process(pid)
        self.peak = 0
        # Memory of in-memory files (memfd) is shared memory, not the resident set of any
        # process: sampled machine-wide, above what it was at the start.
        self.shmem_start = _shmem()
        self.peak_shmem = 0
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
            self.peak_shmem = max(self.peak_shmem, _shmem() - self.shmem_start)
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> RssSampler:
        self.peak = self.current()
        self.shmem_start = _shmem()
        self.peak_shmem = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._stop.clear()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.current())


def _shmem() -> int:
    """The machine's shared memory in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("Shmem:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class FileProgress:
    """Progress of a file being written by someone else, against the size it will reach."""

    def __init__(self, what: str, path: Path, expected_bytes: int, rows: int) -> None:
        self._path, self._expected, self._rows = path, max(expected_bytes, 1), rows
        self._progress = benchkit.Progress(what, rows, "rows")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                size = self._path.stat().st_size
            except OSError:
                continue
            self._progress.update(min(self._rows - 1, int(self._rows * size / self._expected)))

    def __enter__(self) -> FileProgress:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._progress.update(self._rows)


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


def _gzip(source: Path, target: Path, rows: int) -> None:
    """Compress as a partner system would before sending (level 1: fast), showing progress."""
    progress = benchkit.Progress("compressing", rows, "rows")
    total = source.stat().st_size
    done = 0
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with source.open("rb") as reading, target.open("wb") as writing:
        while chunk := reading.read(8 * MB):
            writing.write(compressor.compress(chunk))
            done += len(chunk)
            progress.update(min(rows - 1, rows * done // total))
        writing.write(compressor.flush())
    progress.update(rows)


def _push_gzip(
    client: httpx.Client, base_url: str, token: str, path: Path, rows: int
) -> dict[str, Any]:
    """Upload a gzip body in 1 MiB chunks, showing rows sent (estimated from bytes)."""
    total = path.stat().st_size
    progress = benchkit.Progress("pushing", rows, "rows")

    def body() -> Iterator[bytes]:
        sent = 0
        with path.open("rb") as handle:
            while chunk := handle.read(MB):
                sent += len(chunk)
                progress.update(min(rows - 1, rows * sent // total))
                yield chunk

    response = client.post(
        f"{base_url}/v1/datasets/{DATASET}/uploads",
        params={"mode": "replace"},
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "text/csv",
            "Content-Encoding": "gzip",
            "Content-Length": str(total),
            "Idempotency-Key": str(uuid.uuid4()),
        },
        content=body(),
        timeout=benchkit.UPLOAD_TIMEOUT_S * 4,
    )
    progress.update(rows)
    if response.status_code != 201:
        raise BenchError(f"the large upload was refused: {response.status_code} {response.text}")
    payload: dict[str, Any] = response.json()
    return payload


def _measure_large(
    workdir: Path,
    rows: int,
    small_csv: Path,
    small_rows: int,
    push: Callable[[Path], tuple[float, dict[str, Any], RssSampler]],
) -> LargeFigures:
    from services.demo.generate import write_police_csv

    csv_path = workdir / f"{DATASET}-{rows}.csv"
    expected = small_csv.stat().st_size * rows // small_rows
    print(f"generating {rows:,} police rows (about {expected / MB:,.0f} MB) ...", flush=True)
    with FileProgress("generating", csv_path, expected, rows):
        write_police_csv(csv_path, rows, seed=2)
    gzip_path = csv_path.with_suffix(".csv.gz")
    _gzip(csv_path, gzip_path, rows)
    csv_bytes = csv_path.stat().st_size
    csv_path.unlink()
    print(
        f"pushing {rows:,} rows as gzip ({gzip_path.stat().st_size / MB:,.0f} MB on the wire, "
        f"{csv_bytes / MB:,.0f} MB of CSV) ...",
        flush=True,
    )
    upload_s, result, sampler = push(gzip_path)
    if result.get("rows") != rows:
        raise BenchError(f"the large upload stored {result.get('rows')} rows, not {rows}")
    return LargeFigures(
        rows=rows,
        csv_bytes=csv_bytes,
        gzip_bytes=gzip_path.stat().st_size,
        upload_s=upload_s,
        peak_rss=sampler.peak,
        peak_shmem=sampler.peak_shmem,
    )


def _measure(workdir: Path, rows: int, large_rows: int) -> Figures:
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
    # The large push has more rows than the platform's default allows (5M).
    env.update(
        TOGETHER_UPLOAD_MAX_ROWS=str(max(rows, large_rows) + 1),
        TOGETHER_UPLOAD_PARSE_MEMORY_BYTES="0",
    )
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
            peak = peak_shmem = 0
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
                peak_shmem = max(peak_shmem, sampler.peak_shmem)
            large = None
            if large_rows:

                def push(path: Path) -> tuple[float, dict[str, Any], RssSampler]:
                    access_token = benchkit.token(client, server.base_url, client_id, secret)
                    with sampler:
                        started = time.perf_counter()
                        result = _push_gzip(client, server.base_url, access_token, path, large_rows)
                        elapsed = time.perf_counter() - started
                    return elapsed, result, sampler

                large = _measure_large(workdir, large_rows, csv_path, rows, push)
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
        peak_shmem=peak_shmem,
        large=large,
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
    print(f"in-memory files    {figures.peak_shmem / MB:,.0f} MB at the peak (upload bodies)")
    large_ok = True
    if figures.large is not None:
        large_ok = _report_large(figures)
    print(f"overall            {verdict[ratio_ok and rss_ok and large_ok]}")
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


def _report_large(figures: Figures) -> bool:
    large = figures.large
    assert large is not None
    verdict = {True: "PASS", False: "FAIL"}
    small_rate = figures.rows / figures.upload_s
    rate = large.rows / large.upload_s
    held = large.peak_rss + large.peak_shmem
    small_held = figures.peak_rss + figures.peak_shmem
    memory_ok = held < TARGET_RSS_MB * MB and held <= small_held * 1.2
    rate_ok = rate >= small_rate * 0.8
    print(
        f"large push         {large.rows:,} rows, gzip {large.gzip_bytes / MB:,.0f} MB "
        f"({large.csv_bytes / MB:,.0f} MB of CSV): {large.upload_s:.1f} s, {rate:,.0f} rows/s "
        f"({rate / small_rate:.2f} of the {figures.rows:,}-row push)  {verdict[rate_ok]}"
    )
    print(
        f"  memory           {large.peak_rss / MB:,.0f} MB resident + {large.peak_shmem / MB:,.0f} "
        f"MB in in-memory files = {held / MB:,.0f} MB (the smaller push: {small_held / MB:,.0f} "
        f"MB; target < {TARGET_RSS_MB:,.0f} MB and within 20%)  {verdict[memory_ok]}"
    )
    benchkit.record(
        f"ingest.push_gzip_{large.rows}",
        f"{large.rows:,}-row police CSV pushed as gzip: rows/s against the smaller push",
        f"{large.upload_s:.1f} s ({rate:,.0f} rows/s)",
        ">= 0.8 of the smaller push's rows/s",
        rate_ok,
        baseline=f"{figures.rows:,}-row push {small_rate:,.0f} rows/s",
        ratio=rate / small_rate,
        value=rate,
        unit="rows/s",
    )
    benchkit.record(
        f"ingest.push_gzip_memory_{large.rows}",
        f"server memory pushing {large.rows:,} rows (resident + in-memory files)",
        f"{held / MB:,.0f} MB ({large.peak_rss / MB:,.0f} resident, "
        f"{large.peak_shmem / MB:,.0f} in-memory files)",
        f"< {TARGET_RSS_MB:,.0f} MB and <= 1.2x the smaller push",
        memory_ok,
        baseline=f"{figures.rows:,}-row push {small_held / MB:,.0f} MB",
        ratio=held / small_held if small_held else None,
        value=held / MB,
        unit="MB",
    )
    return rate_ok and memory_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="police rows to upload")
    parser.add_argument(
        "--large-rows",
        type=int,
        default=10_000_000,
        help="rows of the large gzip push through the same server (0: none)",
    )
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
        figures = _measure(workdir, args.rows, args.large_rows)
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
