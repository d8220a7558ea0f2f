"""Products benchmark: Level 1 product latency and throughput over the HTTP API.

Not a test: it prints figures and PASS/FAIL against the targets, and exits non-zero only when
something breaks (the server does not start, an upload or a product read is refused, the API
and the bare query disagree), never for a missed target.

    python scripts/bench_products.py [--rows N] [--seconds S] [--keep]

Two figures, each against a baseline measured in the same run on the same machine:

1. Latency of `sv-counts` by weekday and hour over one year, with N police rows stored (p50 and
   p95 of sequential requests as an `l1_analyst`), against the same aggregation as a bare DuckDB
   query over the same Parquet file(s). Target: API p95 < 3 x bare p95 + 20 ms.
2. Requests per second for `sv-rates` (one row per CSP) from 8 keep-alive connections, against
   the unauthenticated no-op `GET /healthz`, the server running 2 workers on PostgreSQL when
   one is reachable. Target: at least 1,000 requests/s. The load comes from a small asyncio
   HTTP/1.1 client in a process of its own, so it shares no GIL with the server or this script.

The database is TOGETHER_DATABASE_URL when set, else a throwaway schema in the PostgreSQL at
postgresql://postgres@127.0.0.1:5432/test (dropped at the end), else SQLite. One server (2
workers) serves both measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlencode

import benchkit
import httpx
from benchkit import BenchError, Server, create_client, log_tail, run_cli, server_env, together

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
POLICE = "police.occurrences"
REFERENCE_DATASETS = ("reference.population", "la.imd")
PERIOD = {"from": "2023-04-01", "to": "2024-04-01"}
COUNTS_PARAMS = {**PERIOD, "by": "weekday,hour"}
RATES_PARAMS = dict(PERIOD)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
WARMUPS = 3
RUNS = 30
LATENCY_FACTOR = 2.0
LATENCY_SLACK_S = 0.020
CACHED_TARGET_S = 0.015
WORKERS = 2
CONNECTIONS = 8
LOAD_WARMUP_S = 1.0
TARGET_RPS = 1_000.0
READERS = 50
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
MAX_ERROR_SAMPLES = 5
MB = 1 << 20

# One row per (ISO weekday, 1 = Monday; hour) of the local committed time, counting distinct
# occurrences (an offence with two suspects is two rows with the same occurrence_ref). The
# filter is the serious-violence definition of config/partnership.yaml written directly in SQL,
# one line per `any_of` entry; comparing the bare result with the API's catches a drift.
BARE_COUNTS_SQL = """
    SELECT isodow(committed_at) AS weekday, hour(committed_at) AS hour,
           count(DISTINCT occurrence_ref) AS count
    FROM read_parquet($files)
    WHERE committed_at >= CAST($start AS TIMESTAMP)
      AND committed_at < CAST($end AS TIMESTAMP)
      AND (
        msv
        OR hmic_group IN ('3a', '3b')
        OR hmic_group = '7'
        OR (hmic_group = '8' AND ho_offence_code IN ('64', '65'))
        OR (hmic_group = '1b' AND bladed_implement)
      )
    GROUP BY ALL
    ORDER BY ALL
"""


@dataclass
class Latency:
    api: list[float]  # each request a different period: computed afresh, never from the cache
    api_cached: list[float]  # the same request repeated: served from the result cache
    bare: list[float]
    mismatches: list[str]
    # Level 3 products over the same rows: seconds of each sequential read, by product.
    level3: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class LoadSpec:
    host: str
    port: int
    path: str
    headers: dict[str, str]
    connections: int
    warmup_s: float
    seconds: float
    # Spread the connections evenly over this many server processes (0: as they come).
    workers: int = 0
    # The server's process (its workers are its children): its CPU is measured when given.
    server_pid: int = 0
    # Different requests, one per connection in turn (path, headers); `path` and `headers`
    # are then unused. Connections are not spread over workers in that case.
    mix: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@dataclass
class LoadResult:
    # Every 2xx answer received, warm-up included (what the audit trail must hold).
    answered: int = 0
    ok: int = 0
    not_ok: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    # Connections held by each server process (largest first), when they were spread.
    split: list[int] = field(default_factory=list)
    # CPU seconds used while counting (Linux), by the server process and its children, by
    # every local PostgreSQL process, and by the whole machine; None where not measured.
    server_cpu_s: float | None = None
    postgres_cpu_s: float | None = None
    machine_cpu_s: float | None = None

    def per_request_ms(self, cpu_s: float | None) -> float | None:
        return None if cpu_s is None or not self.ok else cpu_s / self.ok * 1000

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def note_error(self, error: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES and error not in self.error_samples:
            self.error_samples.append(error)


@dataclass
class Throughput:
    rates: LoadResult
    health: LoadResult


@dataclass
class Database:
    """Where the server keeps its metadata; `schema` is ours to drop at the end."""

    url: str | None
    description: str
    admin_url: str | None = None
    schema: str | None = None

    @property
    def kind(self) -> str:
        return "PostgreSQL" if self.url and self.url.startswith("postgresql") else "SQLite"


# ---------------------------------------------------------------------------------------------
# The server and its clients


def _product_path(product: str, params: dict[str, str]) -> str:
    return f"/v1/products/{product}?{urlencode(params)}"


def _read_product(client: httpx.Client, url: str, token: str) -> dict[str, Any]:
    response = client.get(url, headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        raise BenchError(f"GET {url} answered {response.status_code}: {response.text[:2000]}")
    body: dict[str, Any] = response.json()
    return body


# ---------------------------------------------------------------------------------------------
# The database: PostgreSQL in a schema of our own when reachable, else SQLite


def _schema_url(base_url: str, schema: str) -> str:
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}options=-csearch_path%3D{schema}"


def _choose_database() -> Database:
    configured = os.environ.get("TOGETHER_DATABASE_URL")
    if configured:
        return Database(url=configured, description="TOGETHER_DATABASE_URL from the environment")
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(DEFAULT_POSTGRES_URL, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"PostgreSQL unreachable at {DEFAULT_POSTGRES_URL} ({reason}): using SQLite")
        return Database(url=None, description="SQLite (PostgreSQL unreachable)")
    return Database(
        url=_schema_url(DEFAULT_POSTGRES_URL, schema),
        description=f"PostgreSQL, schema {schema} at {DEFAULT_POSTGRES_URL}",
        admin_url=DEFAULT_POSTGRES_URL,
        schema=schema,
    )


def _drop_schema(database: Database) -> None:
    if database.admin_url is None or database.schema is None:
        return
    import psycopg

    try:
        with psycopg.connect(database.admin_url, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{database.schema}" CASCADE')
    except psycopg.Error as exc:
        print(f"could not drop schema {database.schema}: {exc}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# 1. Latency: the API against a bare DuckDB query over the same Parquet


def _percentile(samples: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _timed(runs: int, warmups: int, action: Callable[[], T]) -> tuple[list[float], T]:
    """Seconds per run after the warm-ups, and the last run's result."""
    for _ in range(warmups):
        action()
    samples = []
    for _ in range(runs - 1):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    started = time.perf_counter()
    result = action()
    samples.append(time.perf_counter() - started)
    return samples, result


def _parquet_files(data_dir: Path) -> list[Path]:
    files = sorted((data_dir / "datasets" / POLICE).glob("*.parquet"))
    if len(files) != 1:
        raise BenchError(
            f"expected one Parquet file for {POLICE} after one replace upload, found "
            f"{len(files)} in {data_dir / 'datasets' / POLICE}"
        )
    return files


def _bare_counts(files: list[Path]) -> list[tuple[int, int, int]]:
    import duckdb

    # A fresh connection each run, as a request to a server that keeps nothing would pay.
    with duckdb.connect() as conn:
        rows = conn.execute(
            BARE_COUNTS_SQL,
            {
                "files": [str(path) for path in files],
                "start": PERIOD["from"],
                "end": PERIOD["to"],
            },
        ).fetchall()
    return [(int(weekday), int(hour), int(count)) for weekday, hour, count in rows]


def _compare(api_body: dict[str, Any], bare: list[tuple[int, int, int]]) -> list[str]:
    """Cells where the API and the bare query disagree (empty when they agree).

    The product names weekdays Mon to Sun; the bare query gives ISO numbers, 1 = Monday.
    """
    try:
        api = {
            (WEEKDAYS.index(row["weekday"]) + 1, int(row["hour"])): int(row["count"] or 0)
            for row in api_body["rows"]
        }
    except (KeyError, TypeError, ValueError) as exc:
        return [f"unexpected sv-counts rows ({exc!r}): {json.dumps(api_body)[:500]}"]
    expected = {(weekday, hour): count for weekday, hour, count in bare}
    differences = []
    for cell in sorted(set(api) | set(expected)):
        got, want = api.get(cell, 0), expected.get(cell, 0)
        if got != want:
            day = WEEKDAYS[cell[0] - 1]
            differences.append(f"{day} hour {cell[1]:>2}: API {got:,}, bare {want:,}")
    return differences


def _measure_latency(client: httpx.Client, base_url: str, token: str, files: list[Path]) -> Latency:
    url = base_url + _product_path("sv-counts", COUNTS_PARAMS)
    print(f"timing GET {url} ({WARMUPS} warm-ups, {RUNS} runs) ...", flush=True)
    cached, api_body = _timed(RUNS, WARMUPS, lambda: _read_product(client, url, token))
    # The platform caches a result per (product, parameters, source versions): to time the
    # aggregation itself, every cold request asks for a period that ends a day earlier.
    end = date.fromisoformat(PERIOD["to"])
    periods = iter(range(1, 10_000))

    def cold() -> dict[str, Any]:
        shifted = dict(COUNTS_PARAMS, to=(end - timedelta(days=next(periods))).isoformat())
        return _read_product(client, base_url + _product_path("sv-counts", shifted), token)

    print(f"timing {RUNS} cold requests (a different period each) ...", flush=True)
    api, _ = _timed(RUNS, WARMUPS, cold)
    print(f"timing the bare DuckDB query ({WARMUPS} warm-ups, {RUNS} runs) ...", flush=True)
    bare, bare_rows = _timed(RUNS, WARMUPS, lambda: _bare_counts(files))
    return Latency(api=api, api_cached=cached, bare=bare, mismatches=_compare(api_body, bare_rows))


LEVEL3_PRODUCTS = ("repeat-suspects", "habitual-knife-carriers")
LEVEL3_RUNS = 20  # with the warm-ups, within one reader's hourly Level 3 quota (50)
LEVEL3_TARGET_S = 1.5
LEVEL3_HEADERS = {"X-Purpose": "high-intensity-programme", "X-Case-Reference": "BENCH-0001"}


def _measure_level3(
    client: httpx.Client, base_url: str, login: Callable[[str], str]
) -> dict[str, list[float]]:
    """Each Level 3 product, read again and again (never cached: it names people), by a
    practitioner of its own (each within the hourly quota), with a token taken just before
    (slow reads can outlast the one before)."""
    timings: dict[str, list[float]] = {}
    for product in LEVEL3_PRODUCTS:
        url = base_url + _product_path(product, {"as_of": PERIOD["to"]})
        headers = {"Authorization": f"Bearer {login(product)}", **LEVEL3_HEADERS}
        print(f"timing GET {url} ({WARMUPS} warm-ups, {LEVEL3_RUNS} runs) ...", flush=True)

        def read(url: str = url, headers: dict[str, str] = headers) -> int:
            response = client.get(url, headers=headers)
            if response.status_code != 200:
                raise BenchError(f"GET {url} answered {response.status_code}: {response.text}")
            return len(response.json()["rows"])

        timings[product], rows = _timed(LEVEL3_RUNS, WARMUPS, read)
        print(f"  {rows:,} people listed", flush=True)
    return timings


# ---------------------------------------------------------------------------------------------
# 2. Throughput: a keep-alive HTTP/1.1 load generator in a process of its own


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; returns its status and whether the connection stays open."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed by the server")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"bad status line {status_line[:80]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    keep_alive = True
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed inside the headers")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            keep_alive = value != b"close"
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";", 1)[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            await reader.readexactly(size + 2)
    elif length is not None:
        await reader.readexactly(length)
    else:
        raise ValueError("response with neither Content-Length nor chunked encoding")
    return status, keep_alive


def _socket_owner(server_port: int, client_port: int) -> int | None:
    """The pid of the process holding the server's end of a local TCP connection (Linux)."""
    wanted = f":{server_port:04X}", f":{client_port:04X}"
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(wanted[0]) and fields[2].endswith(wanted[1]):
                inode = fields[9]
                break
        if inode is not None:
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    return int(proc.name)
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class CpuSample:
    server: float
    postgres: float
    machine: float


def _cpu_sample(server_pid: int) -> CpuSample | None:
    """CPU seconds so far of the server's process tree, of local PostgreSQL processes, and of
    the machine (busy time of all cores), from /proc; None where /proc cannot be read."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[int, tuple[int, str, float]] = {}  # pid -> (parent, name, cpu seconds)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            text = (proc / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        used[int(proc.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick)
    try:
        busy = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    except OSError:
        return None
    if server_pid not in used:
        return None
    tree, grew = {server_pid}, True
    while grew:
        children = {pid for pid, (parent, _, _) in used.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    # Idle, I/O wait and steal (time the hypervisor gave to others) are not work done here.
    user, nice, system, _idle, _iowait, irq, softirq, _steal = (int(v) for v in busy)
    return CpuSample(
        server=sum(used[pid][2] for pid in tree),
        postgres=sum(cpu for _, name, cpu in used.values() if name.startswith("postgres")),
        machine=(user + nice + system + irq + softirq) / tick,
    )


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _spread_connections(spec: LoadSpec, request: bytes, result: LoadResult) -> list[Stream]:
    """Open the connections so that each server process holds its share.

    Worker processes that share one listening socket accept a burst of new connections
    unevenly (the first to wake takes most of them), and keep-alive connections stay where
    they landed: with 8 connections and 2 workers, runs held 7+1 or 4+4 at random and
    measured up to 2x apart. A load balancer in front of a real deployment spreads them; here
    each connection makes one request, the process holding its server end is looked up in
    /proc, and a connection to a process that has its share already is closed and made again.
    """
    streams: list[Stream] = []
    if spec.workers <= 1 or not Path("/proc/net/tcp").exists():
        for _ in range(spec.connections):
            streams.append(await asyncio.open_connection(spec.host, spec.port))
        return streams
    share = -(-spec.connections // spec.workers)
    held: dict[int | None, list[Stream]] = {}
    for _ in range(spec.connections * 25):
        if len(streams) == spec.connections:
            break
        reader, writer = await asyncio.open_connection(spec.host, spec.port)
        writer.write(request)
        await _read_response(reader)  # accepted and served: its owner is settled
        owner = _socket_owner(spec.port, writer.get_extra_info("sockname")[1])
        if owner is not None and len(held.get(owner, [])) < share:
            held.setdefault(owner, []).append((reader, writer))
            streams.append((reader, writer))
        else:
            writer.close()
    while len(streams) < spec.connections:  # could not spread them: take what comes
        stream = await asyncio.open_connection(spec.host, spec.port)
        held.setdefault(None, []).append(stream)
        streams.append(stream)
    result.split = sorted((len(group) for group in held.values()), reverse=True)
    return streams


async def _connection_loop(
    spec: LoadSpec,
    request: bytes,
    result: LoadResult,
    counting_from: float,
    until: float,
    stream: Stream | None = None,
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    if stream is not None:
        reader, writer = stream
    while time.monotonic() < until:
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection(spec.host, spec.port)
            writer.write(request)
            status, keep_alive = await _read_response(reader)
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as exc:
            if time.monotonic() >= counting_from:
                result.note_error(f"{type(exc).__name__}: {exc}")
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)  # a refused connection must not spin
            continue
        now = time.monotonic()
        if 200 <= status < 300:
            result.answered += 1
        if counting_from <= now < until:
            if 200 <= status < 300:
                result.ok += 1
            else:
                result.not_ok += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
        if not keep_alive:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def _request_bytes(spec: LoadSpec, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {spec.host}:{spec.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _generate_load(spec: LoadSpec) -> LoadResult:
    request = _request_bytes(spec, spec.path, spec.headers)
    result = LoadResult()
    if spec.mix:
        requests = [
            _request_bytes(spec, *spec.mix[i % len(spec.mix)]) for i in range(spec.connections)
        ]
        streams = [
            await asyncio.open_connection(spec.host, spec.port) for _ in range(spec.connections)
        ]
    else:
        requests = [request] * spec.connections
        streams = await _spread_connections(spec, request, result)
    cpu_at_start: float | None = None
    sample_at_start: CpuSample | None = None
    started = time.monotonic()
    counting_from = started + spec.warmup_s
    until = counting_from + spec.seconds

    async def note_cpu() -> None:
        nonlocal cpu_at_start, sample_at_start
        await asyncio.sleep(max(0.0, counting_from - time.monotonic()))
        cpu_at_start = time.process_time()
        if spec.server_pid:
            sample_at_start = _cpu_sample(spec.server_pid)

    cpu_task = asyncio.create_task(note_cpu())
    await asyncio.gather(
        *(
            _connection_loop(spec, each, result, counting_from, until, stream)
            for each, stream in zip(requests, streams, strict=True)
        )
    )
    await cpu_task
    sample_at_end = _cpu_sample(spec.server_pid) if spec.server_pid else None
    result.elapsed_s = spec.seconds
    result.cpu_s = time.process_time() - (cpu_at_start or 0.0)
    if sample_at_start is not None and sample_at_end is not None:
        result.server_cpu_s = sample_at_end.server - sample_at_start.server
        result.postgres_cpu_s = sample_at_end.postgres - sample_at_start.postgres
        result.machine_cpu_s = sample_at_end.machine - sample_at_start.machine
    return result


def _load_process(spec: LoadSpec, pipe: Connection) -> None:
    """Entry point of the load-generator process: run, then send the result back."""
    # Ctrl-C is the parent's to handle: it terminates this process when it unwinds.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            pipe.send(runner.run(_generate_load(spec)))
    except Exception as exc:
        pipe.send(f"load generator failed: {type(exc).__name__}: {exc}")
    finally:
        pipe.close()


def _run_load(spec: LoadSpec) -> LoadResult:
    # Spawned, not forked: a fresh interpreter with nothing of this process's threads or state.
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_load_process, args=(spec, sender), name="bench-load")
    process.start()
    sender.close()
    try:
        if not receiver.poll(spec.warmup_s + spec.seconds + 60.0):
            raise BenchError("the load generator did not report back")
        outcome = receiver.recv()
    except EOFError as exc:
        raise BenchError(f"the load generator died (exit code {process.exitcode})") from exc
    finally:
        receiver.close()
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)
    if not isinstance(outcome, LoadResult):
        raise BenchError(str(outcome))
    return outcome


def _measure_throughput(server: Server, token: str, seconds: float) -> Throughput:
    def spec(path: str, headers: dict[str, str]) -> LoadSpec:
        return LoadSpec(
            host=server.host,
            port=server.port,
            path=path,
            headers=headers,
            connections=CONNECTIONS,
            warmup_s=LOAD_WARMUP_S,
            seconds=seconds,
            workers=WORKERS,
            server_pid=server.process.pid,
        )

    rates_path = _product_path("sv-rates", RATES_PARAMS)
    print(f"loading GET {rates_path} ({CONNECTIONS} connections, {seconds:g} s) ...", flush=True)
    rates = _run_load(spec(rates_path, {"Authorization": f"Bearer {token}"}))
    print(f"loading GET /healthz ({CONNECTIONS} connections, {seconds:g} s) ...", flush=True)
    health = _run_load(spec("/healthz", {}))
    return Throughput(rates=rates, health=health)


@dataclass
class Readers:
    result: LoadResult
    audited: int  # product.read events written while the readers ran
    requests: int  # distinct requests in the mix


def _audited_reads(database: Database, data_dir: Path) -> int:
    """How many product reads the audit trail holds (read straight from the database)."""
    from sqlalchemy import create_engine, text

    from services.kit.db import normalise_url

    url = database.url or f"sqlite:///{(data_dir / 'together.db').resolve()}"
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as connection:
            found = connection.execute(
                text("SELECT count(*) FROM audit_events WHERE action = 'product.read'")
            ).scalar_one()
    finally:
        engine.dispose()
    return int(found)


def _reader_mix(l1: dict[str, str], l2: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """Different products and questions, as a partnership's dashboards ask them at once."""
    periods = [
        ("2023-04-01", "2024-04-01"),
        ("2022-04-01", "2023-04-01"),
        ("2023-01-01", "2024-01-01"),
        ("2023-10-01", "2024-04-01"),
        ("2022-10-01", "2023-10-01"),
    ]
    mix: list[tuple[str, dict[str, str]]] = []
    for start, end in periods:
        period = {"from": start, "to": end}
        mix += [
            (_product_path("sv-counts", {**period, "by": "weekday,hour"}), l1),
            (_product_path("sv-counts", {**period, "by": "csp"}), l1),
            (_product_path("sv-rates", period), l1),
            (_product_path("sv-flags", period), l1),
            (_product_path("hotspots", period), l2),
        ]
    mix.append((_product_path("hkc-summary", {"as_of": "2024-04-01"}), l1))
    return mix


def _measure_readers(
    server: Server, database: Database, data_dir: Path, l1: str, l2: str, seconds: float
) -> Readers:
    mix = _reader_mix({"Authorization": f"Bearer {l1}"}, {"Authorization": f"Bearer {l2}"})
    with httpx.Client(timeout=60.0) as client:
        for path, headers in mix:  # each answers before the load (a refusal says so plainly)
            response = client.get(server.base_url + path, headers=headers)
            if response.status_code != 200:
                raise BenchError(f"GET {path} answered {response.status_code}: {response.text}")
    before = _audited_reads(database, data_dir)
    print(f"{READERS} readers of {len(mix)} different requests for {seconds:g} s ...", flush=True)
    result = _run_load(
        LoadSpec(
            host=server.host,
            port=server.port,
            path="",
            headers={},
            connections=READERS,
            warmup_s=LOAD_WARMUP_S,
            seconds=seconds,
            server_pid=server.process.pid,
            mix=mix,
        )
    )
    audited = _audited_reads(database, data_dir) - before
    return Readers(result=result, audited=audited, requests=len(mix))


# ---------------------------------------------------------------------------------------------
# The run


def _preflight() -> None:
    """Fail before minutes of generating data if the run cannot complete."""
    together()
    try:
        import duckdb  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise BenchError(f"{exc.name} is missing: install the project (make install)") from exc


def _generate(workdir: Path, rows: int) -> dict[str, Path]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from services.demo.generate import write_dataset_csv, write_police_csv

    paths = {dataset: workdir / f"{dataset}.csv" for dataset in (POLICE, *REFERENCE_DATASETS)}
    print(f"generating {rows:,} police rows ...", flush=True)
    started = time.perf_counter()
    write_police_csv(paths[POLICE], rows, seed=1)
    for dataset in REFERENCE_DATASETS:
        write_dataset_csv(dataset, paths[dataset], seed=1)
    print(
        f"generated in {time.perf_counter() - started:.1f} s "
        f"({paths[POLICE].stat().st_size / MB:,.0f} MB of police CSV)",
        flush=True,
    )
    return paths


def _measure(
    workdir: Path, database: Database, rows: int, seconds: float, readers_seconds: float
) -> tuple[Latency, Throughput, Readers | None]:
    csvs = _generate(workdir, rows)
    data_dir = workdir / "data"
    env = server_env(data_dir, database.url)
    env.update(TOGETHER_UPLOAD_MAX_ROWS=str(rows + 1), TOGETHER_UPLOAD_PARSE_MEMORY_BYTES="0")
    run_cli(["db", "upgrade"], env)
    police = create_client(env, "bench-police", "hampshire-constabulary", "partner_system")
    vru = create_client(env, "bench-vru", "vru", "partner_system")
    analyst = create_client(env, "bench-analyst", "vru", "l1_analyst")
    hotspots = create_client(env, "bench-hotspots", "vru", "l2_reader", area="all")
    practitioners = {
        product: create_client(
            env, f"bench-{product}", "hampshire-constabulary", "l3_practitioner", area="all"
        )
        for product in LEVEL3_PRODUCTS
    }
    server = Server(env, workdir / "server.log", WORKERS)
    try:
        with httpx.Client(timeout=60.0) as client:
            server.wait_ready(client)
            token = benchkit.token(client, server.base_url, *vru)
            for dataset in REFERENCE_DATASETS:
                benchkit.upload(client, server.base_url, token, dataset, csvs[dataset])
            print(f"uploading {rows:,} police rows through the API ...", flush=True)
            started = time.perf_counter()
            token = benchkit.token(client, server.base_url, *police)
            benchkit.upload(client, server.base_url, token, POLICE, csvs[POLICE])
            print(f"uploaded in {time.perf_counter() - started:.1f} s", flush=True)
            files = _parquet_files(data_dir)
            # Tokens are short-lived and the upload can be slow: a fresh one for the reads.
            token = benchkit.token(client, server.base_url, *analyst)
            latency = _measure_latency(client, server.base_url, token, files)
            latency.level3 = _measure_level3(
                client,
                server.base_url,
                lambda product: benchkit.token(client, server.base_url, *practitioners[product]),
            )
            # Before the load, so a refusal is reported plainly rather than as a count of 4xx.
            _read_product(client, server.base_url + _product_path("sv-rates", RATES_PARAMS), token)
            throughput = _measure_throughput(server, token, seconds)
            readers = None
            if readers_seconds > 0:
                token = benchkit.token(client, server.base_url, *analyst)
                l2 = benchkit.token(client, server.base_url, *hotspots)
                readers = _measure_readers(server, database, data_dir, token, l2, readers_seconds)
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- server log (tail) ---\n{log_tail(server.log_path)}") from exc
    finally:
        server.stop()
    return latency, throughput, readers


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _load_line(label: str, result: LoadResult) -> str:
    statuses = ", ".join(f"{status}: {n:,}" for status, n in sorted(result.statuses.items()))
    cpu = result.cpu_s / result.elapsed_s * 100 if result.elapsed_s else 0.0
    split = f"; connections per worker {'+'.join(map(str, result.split))}" if result.split else ""
    line = (
        f"{label:<19}{result.rps:,.0f} requests/s ({result.ok:,} 2xx, {result.not_ok:,} other"
        f", {result.errors:,} errors; statuses {statuses or 'none'}; load generator CPU {cpu:.0f}%"
        f"{split})"
    )
    costs = [
        (what, result.per_request_ms(cpu_s))
        for what, cpu_s in (
            ("server", result.server_cpu_s),
            ("PostgreSQL", result.postgres_cpu_s),
            ("whole machine", result.machine_cpu_s),
        )
    ]
    if all(ms is not None for _, ms in costs):
        line += (
            "\n" + " " * 19 + "CPU a request: " + ", ".join(f"{w} {ms:.3f} ms" for w, ms in costs)
        )
    return line


def _report(
    database: Database, rows: int, latency: Latency, throughput: Throughput, seconds: float
) -> bool:
    """Print the figures; returns False when the run showed errors (not missed targets)."""
    verdict = {True: "PASS", False: "FAIL"}
    api_p50, api_p95 = _percentile(latency.api, 0.50), _percentile(latency.api, 0.95)
    bare_p50, bare_p95 = _percentile(latency.bare, 0.50), _percentile(latency.bare, 0.95)
    limit = LATENCY_FACTOR * bare_p95 + LATENCY_SLACK_S
    latency_ok = api_p95 < limit
    rates, health = throughput.rates, throughput.health
    rates_ok = rates.rps >= TARGET_RPS and rates.not_ok == 0 and rates.errors == 0
    print()
    print(f"database           {database.description}")
    print(f"police rows        {rows:,}")
    print(
        f"sv-counts          by=weekday,hour from {PERIOD['from']} to {PERIOD['to']}, "
        f"{RUNS} sequential runs after {WARMUPS} warm-ups"
    )
    print(f"  API, computed    p50 {_ms(api_p50)}, p95 {_ms(api_p95)} (a different period each)")
    cached_p50 = _percentile(latency.api_cached, 0.50)
    cached_p95 = _percentile(latency.api_cached, 0.95)
    print(f"  API, cached      p50 {_ms(cached_p50)}, p95 {_ms(cached_p95)} (the same request)")
    print(f"  bare DuckDB      p50 {_ms(bare_p50)}, p95 {_ms(bare_p95)} (fresh connection each)")
    print(
        f"  target           API p95 < {LATENCY_FACTOR:g} x bare p95 + "
        f"{_ms(LATENCY_SLACK_S)} = {_ms(limit)}  {verdict[latency_ok]}"
    )
    level3_ok = True
    for product, samples in latency.level3.items():
        p50, p95 = _percentile(samples, 0.50), _percentile(samples, 0.95)
        passed = p95 < LEVEL3_TARGET_S
        level3_ok = level3_ok and passed
        print(
            f"  {product:<24} p50 {_ms(p50)}, p95 {_ms(p95)} (Level 3, never cached; target "
            f"p95 < {_ms(LEVEL3_TARGET_S)})  {verdict[passed]}"
        )
        benchkit.record(
            f"products.{product}_{rows}",
            f"`{product}` (Level 3, never cached) over {rows:,} rows, API p95",
            f"{_ms(p95)} (p50 {_ms(p50)})",
            f"< {_ms(LEVEL3_TARGET_S)}",
            passed,
            value=p95 * 1000,
            unit="ms",
        )
    if latency.mismatches:
        print(f"  results          DIFFER in {len(latency.mismatches)} cell(s):")
        for line in latency.mismatches[:10]:
            print(f"                   {line}")
    else:
        print("  results          API and bare query agree")
    print(
        f"throughput         {CONNECTIONS} keep-alive connections, {seconds:g} s each "
        f"after {LOAD_WARMUP_S:g} s warm-up, server --workers {WORKERS}"
    )
    print(_load_line("  sv-rates", rates))
    print(_load_line("  /healthz", health))
    ratio = rates.rps / health.rps if health.rps else 0.0
    print(f"  ratio            sv-rates / healthz = {ratio:.3f}")
    print(f"  target           sv-rates >= {TARGET_RPS:,.0f} requests/s  {verdict[rates_ok]}")
    for label, result in (("sv-rates", rates), ("/healthz", health)):
        for sample in result.error_samples:
            print(f"  {label} error   {sample}")
    overall = latency_ok and rates_ok and level3_ok and not latency.mismatches
    print(f"overall            {verdict[overall]}")
    benchkit.record(
        f"products.sv_counts_{rows}",
        f"`sv-counts` by weekday and hour over {rows:,} rows, API p95 computed",
        f"{_ms(api_p95)} (p50 {_ms(api_p50)})",
        f"< {LATENCY_FACTOR:g} x bare + {_ms(LATENCY_SLACK_S)} = {_ms(limit)}",
        latency_ok and not latency.mismatches,
        baseline=f"bare DuckDB p95 {_ms(bare_p95)}",
        ratio=api_p95 / bare_p95 if bare_p95 else None,
        value=api_p95 * 1000,
        unit="ms",
    )
    benchkit.record(
        f"products.sv_counts_cached_{rows}",
        f"`sv-counts` over {rows:,} rows, API p95 from the cache",
        f"{_ms(cached_p95)} (p50 {_ms(cached_p50)})",
        f"< {_ms(CACHED_TARGET_S)}",
        cached_p95 < CACHED_TARGET_S,
        value=cached_p95 * 1000,
        unit="ms",
    )
    benchkit.record(
        "products.sv_rates_8_clients",
        f"`sv-rates` audited, {CONNECTIONS} clients, {WORKERS} workers, {database.kind}",
        f"{rates.rps:,.0f} requests/s",
        f">= {TARGET_RPS:,.0f} requests/s",
        rates_ok,
        baseline=f"`/healthz` {health.rps:,.0f} requests/s",
        ratio=ratio,
        value=rates.rps,
        unit="requests/s",
    )
    clean = not latency.mismatches and not any(
        result.not_ok or result.errors for result in (rates, health)
    )
    if not clean:
        print(
            "bench error: wrong results, non-2xx responses or connection errors (above)",
            file=sys.stderr,
        )
    return clean


def _report_readers(readers: Readers, seconds: float) -> bool:
    """Print the concurrent readers' figures; False when the run showed errors."""
    result = readers.result
    print(f"readers            {READERS} connections, {readers.requests} different requests")
    print(_load_line("  mixed products", result))
    matches = readers.audited == result.answered
    print(
        f"  audit            {readers.audited:,} product.read events for {result.answered:,} "
        f"answers ({'equal' if matches else 'DIFFERENT'})"
    )
    passed = result.not_ok == 0 and result.errors == 0 and matches and result.ok > 0
    print(f"  target           no error, no 5xx, audit = reads  {'PASS' if passed else 'FAIL'}")
    statuses = ", ".join(f"{status}: {n:,}" for status, n in sorted(result.statuses.items()))
    benchkit.record(
        f"products.readers_{READERS}",
        f"{READERS} concurrent readers of {readers.requests} different requests for {seconds:g} s",
        f"{result.rps:,.0f} requests/s; {statuses or 'no answers'}; {result.errors} errors; "
        f"{readers.audited:,} audited of {result.answered:,} answered",
        "no error, no 5xx, audit count = reads",
        passed,
        value=result.rps,
        unit="requests/s",
    )
    return passed


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the server and clean up.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=10_000_000, help="police rows to store")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="duration of each throughput run"
    )
    parser.add_argument(
        "--readers-seconds",
        type=float,
        default=60.0,
        help=f"how long {READERS} readers of different products run (0: not at all)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (and database schema)"
    )
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")

    try:
        _preflight()
    except BenchError as exc:
        print(f"bench error: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="together-bench-products-"))
    database = Database(url=None, description="(not chosen yet)")
    try:
        database = _choose_database()
        print(f"database: {database.description}", flush=True)
        latency, throughput, readers = _measure(
            workdir, database, args.rows, args.seconds, args.readers_seconds
        )
    except BenchError as exc:
        print(f"bench error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}")
            if database.schema is not None:
                print(f"kept schema {database.schema} (drop it with DROP SCHEMA ... CASCADE)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            _drop_schema(database)
    clean = _report(database, args.rows, latency, throughput, args.seconds)
    if readers is not None:
        clean = _report_readers(readers, args.readers_seconds) and clean
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
