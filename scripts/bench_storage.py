"""Object storage benchmark: the same push and the same reads on S3 and on the local folder.

Not a test: it prints figures and PASS/FAIL against the targets, and exits non-zero only when
something breaks (a server does not start, an upload or a read is refused, the two backends
answer differently), never for a missed target.

    python scripts/bench_storage.py [--rows N] [--runs R] [--keep]

A real S3 server (SeaweedFS, scripts/seaweedkit.py) runs on this machine for the length of the
run. For each backend, the local folder then `TOGETHER_STORAGE_URL=s3://...`, one after the
other and otherwise alike (a SQLite database in the setup's own folder, so that the ratio is the
store's alone):

1. Push: N police rows pushed through the HTTP API to 201 (best of 2), the version's Parquet
   written, put into the store and verified before its row commits. Target: S3 <= 1.5 x local.
2. Reads: `sv-counts` by weekday and hour, p95 of R sequential requests through the API of a
   second server process (a replica) with a data folder of its own, over the same database and
   store. Each request asks for another period, so the result cache never answers and every
   request reads the version's file. Cold: the replica's read-through cache is emptied before
   each request (on S3 each then reads the columns it needs from the object in place, and
   fetches a copy after answering, which lands before the next request; the local folder is
   read in place). Warm: the cache kept. Targets: cold S3 p95 <= 2 x local; warm S3 p95 <= 1.2
   x local.
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlencode

import benchkit
import httpx
import seaweedkit
from benchkit import BenchError, Server, create_client, log_tail, run_cli, server_env, together

ROOT = Path(__file__).resolve().parent.parent
POLICE = "police.occurrences"
PERIOD_END = date(2024, 4, 1)
PERIOD_START = "2023-04-01"
WARMUPS = 2
SETTLE_SECONDS = 60.0
PUSH_TARGET = 1.5
COLD_TARGET = 2.0
WARM_TARGET = 1.2
BACKENDS = ("local", "s3")
MB = 1 << 20
# What names the store: the replica takes these from the primary.
STORE_VARIABLES = (
    "TOGETHER_STORAGE_URL",
    "TOGETHER_S3_ENDPOINT_URL",
    "TOGETHER_S3_REGION",
    "TOGETHER_S3_ACCESS_KEY_ID",
    "TOGETHER_S3_SECRET_ACCESS_KEY",
)


@dataclass
class BackendFigures:
    push_s: float
    cold: list[float]
    warm: list[float]
    # The answer to one and the same request, to compare the backends.
    answer: list[dict[str, Any]]


def _percentile(samples: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _counts_url(base_url: str, days_earlier: int) -> str:
    """sv-counts over a year that ends `days_earlier` days before the period's end: each value
    is another request for the result cache."""
    end = (PERIOD_END - timedelta(days=days_earlier)).isoformat()
    params = {"from": PERIOD_START, "to": end, "by": "weekday,hour"}
    return f"{base_url}/v1/products/sv-counts?{urlencode(params)}"


def _read(client: httpx.Client, url: str, token: str) -> list[dict[str, Any]]:
    response = client.get(url, headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        raise BenchError(f"GET {url} answered {response.status_code}: {response.text[:2000]}")
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


def _series(
    what: str,
    runs: int,
    first_day: int,
    before_each: Callable[[], None],
    read: Callable[[int], Any],
) -> list[float]:
    """Seconds of `runs` reads, each of another period (`before_each` not timed)."""
    progress = benchkit.Progress(what, runs, "reads")
    samples = []
    for run in range(runs):
        before_each()
        started = time.perf_counter()
        read(first_day + run)
        samples.append(time.perf_counter() - started)
        progress.update(run + 1)
    return samples


def _settle_cache(data_dir: Path, backend: str) -> Callable[[], None]:
    """Waits until the replica's cache holds a whole copy (S3 only): a read of an object the
    replica has no copy of reads it in place and then fetches a copy in the background. The
    copy must land before the cache is emptied (landing after, it would make the next "cold"
    read warm) and must not be fetched beside the next read."""
    cache = data_dir / "cache"

    def settle() -> None:
        if backend != "s3":
            return
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline:
            if not any(cache.rglob("*.partial")) and any(cache.rglob("*.parquet")):
                return
            time.sleep(0.05)
        raise BenchError(f"the replica's cache held no whole copy after {SETTLE_SECONDS} s")

    return settle


def _empty_cache(data_dir: Path, settle: Callable[[], None]) -> Callable[[], None]:
    """Removes the replica's cached copies (a server reads through to the store again)."""
    cache = data_dir / "cache"

    def empty() -> None:
        settle()
        for path in cache.rglob("*.parquet"):
            path.unlink(missing_ok=True)

    return empty


def _measure_backend(
    backend: str, workdir: Path, csv_path: Path, rows: int, runs: int, s3: seaweedkit.SeaweedServer
) -> BackendFigures:
    print(f"== {backend} ==", flush=True)
    folder = workdir / backend
    primary_dir, replica_dir = folder / "primary", folder / "replica"
    env = server_env(primary_dir, None)
    env.update(TOGETHER_UPLOAD_MAX_ROWS=str(rows + 1), TOGETHER_UPLOAD_PARSE_MEMORY_BYTES="0")
    if backend == "s3":
        env.update(s3.environment(f"bench-{uuid.uuid4().hex[:12]}"))
    else:
        # Named, not defaulted, so that the replica (another data folder) reads the same one.
        env["TOGETHER_STORAGE_URL"] = (primary_dir / "datasets").resolve().as_uri()
    run_cli(["db", "upgrade"], env)
    police = create_client(env, "bench-police", "hampshire-constabulary", "partner_system")
    analyst = create_client(env, "bench-analyst", "vru", "l1_analyst")

    server = Server(env, folder / "primary.log")
    try:
        with httpx.Client(timeout=60.0) as client:
            server.wait_ready(client)
            print(f"pushing {rows:,} police rows through the API (best of 2) ...", flush=True)
            push_s = float("inf")
            for _ in range(2):
                # Tokens are short-lived and an upload can be slow: one fresh token each.
                token = benchkit.token(client, server.base_url, *police)
                started = time.perf_counter()
                result = benchkit.upload(client, server.base_url, token, POLICE, csv_path)
                elapsed = time.perf_counter() - started
                if result.get("rows") != rows:
                    raise BenchError(f"the upload stored {result.get('rows')} rows, not {rows}")
                push_s = min(push_s, elapsed)
                print(f"  pushed in {elapsed:.2f} s", flush=True)
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- server log (tail) ---\n{log_tail(server.log_path)}") from exc
    finally:
        server.stop()

    # The replica: the same database, keys and store; a data folder (and cache) of its own.
    replica_env = server_env(replica_dir, f"sqlite:///{(primary_dir / 'together.db').resolve()}")
    replica_env.update(
        {key: value for key, value in env.items() if key in STORE_VARIABLES},
        TOGETHER_KEY_FILE=str(primary_dir / "keys" / "keys.json"),
        TOGETHER_AUDIT_KEY_FILE=str(primary_dir / "keys" / "audit-signing-key.pem"),
    )
    replica_dir.mkdir()
    replica = Server(replica_env, folder / "replica.log")
    try:
        with httpx.Client(timeout=60.0) as client:
            replica.wait_ready(client)
            token = benchkit.token(client, replica.base_url, *analyst)

            def read(days_earlier: int) -> list[dict[str, Any]]:
                return _read(client, _counts_url(replica.base_url, days_earlier), token)

            settle = _settle_cache(replica_dir, backend)
            empty = _empty_cache(replica_dir, settle)
            # Warm-ups pay the process's first-request costs, not the store's.
            for day in range(WARMUPS):
                empty()
                read(2 * runs + 1 + day)
            empty()
            answer = read(0)
            cold = _series("cold reads", runs, 1, empty, read)
            warm = _series("warm reads", runs, 1 + runs, settle, read)
    except BenchError as exc:
        raise BenchError(
            f"{exc}\n--- replica log (tail) ---\n{log_tail(replica.log_path)}"
        ) from exc
    finally:
        replica.stop()
    return BackendFigures(push_s=push_s, cold=cold, warm=warm, answer=answer)


def _preflight() -> None:
    """Fail before minutes of generating data if the run cannot complete."""
    together()
    try:
        seaweedkit.weed_binary()
    except seaweedkit.WeedMissing as exc:
        raise BenchError(str(exc)) from exc


def _measure(workdir: Path, rows: int, runs: int) -> dict[str, BackendFigures]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from services.demo.generate import write_police_csv

    csv_path = workdir / f"{POLICE}.csv"
    print(f"generating {rows:,} police rows ...", flush=True)
    started = time.perf_counter()
    write_police_csv(csv_path, rows, seed=1)
    print(
        f"generated in {time.perf_counter() - started:.1f} s "
        f"({csv_path.stat().st_size / MB:,.0f} MB of CSV)",
        flush=True,
    )
    print("starting SeaweedFS (S3) ...", flush=True)
    s3 = seaweedkit.SeaweedServer(workdir / "seaweedfs")
    try:
        s3.start()
    except RuntimeError as exc:
        raise BenchError(str(exc)) from exc
    try:
        figures = {
            backend: _measure_backend(backend, workdir, csv_path, rows, runs, s3)
            for backend in BACKENDS
        }
    finally:
        s3.stop()
    if figures["s3"].answer != figures["local"].answer:
        raise BenchError("sv-counts answered differently on S3 and on the local folder")
    return figures


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _report(figures: dict[str, BackendFigures], rows: int, runs: int) -> None:
    verdict = {True: "PASS", False: "FAIL"}
    local, s3 = figures["local"], figures["s3"]
    push_ratio = s3.push_s / local.push_s
    push_ok = push_ratio <= PUSH_TARGET
    print()
    print(f"rows               {rows:,}")
    print(
        f"push               S3 {s3.push_s:.2f} s, local {local.push_s:.2f} s "
        f"(HTTP upload to 201, best of 2): {push_ratio:.2f}x (target <= {PUSH_TARGET:g}x)  "
        f"{verdict[push_ok]}"
    )
    size = f"{rows:,}-row police CSV"
    benchkit.record(
        f"storage.push_s3_{rows}",
        f"{size} pushed end to end, S3 (SeaweedFS)",
        f"{s3.push_s:.2f} s ({rows / s3.push_s:,.0f} rows/s)",
        f"<= {PUSH_TARGET:g}x local",
        push_ok,
        baseline=f"local folder {local.push_s:.2f} s",
        ratio=push_ratio,
        value=s3.push_s,
        unit="s",
    )
    all_ok = push_ok
    for label, target, pick in (
        ("cold", COLD_TARGET, lambda f: f.cold),
        ("warm", WARM_TARGET, lambda f: f.warm),
    ):
        s3_p95, local_p95 = _percentile(pick(s3), 0.95), _percentile(pick(local), 0.95)
        s3_p50, local_p50 = _percentile(pick(s3), 0.50), _percentile(pick(local), 0.50)
        ratio = s3_p95 / local_p95
        passed = ratio <= target
        all_ok = all_ok and passed
        cache = "emptied before each" if label == "cold" else "kept"
        print(
            f"sv-counts {label:<8} S3 p95 {_ms(s3_p95)} (p50 {_ms(s3_p50)}), local p95 "
            f"{_ms(local_p95)} (p50 {_ms(local_p50)}); {runs} reads, replica's cache {cache}: "
            f"{ratio:.2f}x (target <= {target:g}x)  {verdict[passed]}"
        )
        benchkit.record(
            f"storage.sv_counts_{label}_{rows}",
            f"`sv-counts` over {rows:,} rows on S3, {label} replica cache, API p95",
            f"{_ms(s3_p95)} (p50 {_ms(s3_p50)})",
            f"<= {target:g}x local",
            passed,
            baseline=f"local folder p95 {_ms(local_p95)}",
            ratio=ratio,
            value=s3_p95 * 1000,
            unit="ms",
        )
    print(f"overall            {verdict[all_ok]}")


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the servers and clean up.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="police rows to push")
    parser.add_argument("--runs", type=int, default=30, help="reads timed per series")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    if args.runs < 2:
        parser.error("--runs must be at least 2")

    try:
        _preflight()
    except BenchError as exc:
        print(f"bench error: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="together-bench-storage-"))
    try:
        figures = _measure(workdir, args.rows, args.runs)
    except BenchError as exc:
        print(f"bench error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    _report(figures, args.rows, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
