"""Audit benchmark: what the audit write costs a read, and how fast an export verifies.

Not a test: it prints figures and PASS/FAIL against the targets, and exits non-zero only when
something breaks, never for a missed target.

    python scripts/bench_audit.py [--rows N] [--seconds S] [--events N] [--keep]

1. Audit overhead: requests per second of the small Level 1 product `sv-rates` (one row per
   CSP) from 8 keep-alive connections against a 2-worker server, with the audit write on, and
   the same server with `TOGETHER_BENCHMARK_ONLY_SKIP_AUDIT=true` (a benchmark-only switch the
   settings refuse outside development), on the same database and data in the same run; the
   audit-on server is measured before and after the audit-off one and the two averaged, so
   drift on a shared machine does not favour either. Target: audit costs under 25% of the
   throughput.
2. Offline verification: an export of N events (default 1,000,000; realistic `product.read`
   events in canonical form, chained, with a signed checkpoint every 10,000 events) written
   with the platform's own functions, then `together audit verify FILE --key KEY` timed as a
   separate process. Target: under 10 s for 1,000,000 events.

The database is TOGETHER_DATABASE_URL when set, else a throwaway schema in the PostgreSQL at
postgresql://postgres@127.0.0.1:5432/test (dropped at the end), else SQLite.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import benchkit
import httpx
from bench_products import (
    CONNECTIONS,
    LOAD_WARMUP_S,
    RATES_PARAMS,
    REFERENCE_DATASETS,
    WORKERS,
    Database,
    LoadResult,
    LoadSpec,
    _choose_database,
    _drop_schema,
    _generate,
    _load_line,
    _product_path,
    _read_product,
    _run_load,
)
from benchkit import BenchError, Server, create_client, log_tail, run_cli, server_env

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

POLICE = "police.occurrences"
OVERHEAD_TARGET = 0.25
VERIFY_TARGET_S = 4.0
CPU_TARGET_MS = 0.6
CHECKPOINT_EVERY = 10_000


# ---------------------------------------------------------------------------------------------
# 1. Audit overhead


MANY_CONNECTIONS = 64
TARGET_RPS_AUDITED = 1_000.0


@dataclass
class Overhead:
    """One client count: audit on, off, and on again (averaged against the drift of a run)."""

    connections: int
    on_before: LoadResult
    off: LoadResult
    on_after: LoadResult
    # Audit events a durable commit carried on average while the audit was on (PostgreSQL:
    # events over distinct inserting transactions); None on SQLite.
    batch: float | None

    @property
    def on_rps(self) -> float:
        return (self.on_before.rps + self.on_after.rps) / 2

    @property
    def overhead(self) -> float:
        return 1 - self.on_rps / self.off.rps if self.off.rps else 1.0

    @property
    def clean(self) -> bool:
        runs = (self.on_before, self.off, self.on_after)
        return all(not r.not_ok and not r.errors for r in runs)


def _commits(database: Database, data_dir: Path) -> tuple[int, int] | None:
    """(audit events, distinct transactions that inserted them): PostgreSQL only."""
    if database.url is None:
        return None
    from sqlalchemy import create_engine, text

    from services.kit.db import normalise_url

    engine = create_engine(normalise_url(database.url))
    try:
        with engine.connect() as connection:
            events, commits = connection.execute(
                text("SELECT count(*), count(DISTINCT xmin::text) FROM audit_events")
            ).one()
    finally:
        engine.dispose()
    return int(events), int(commits)


def _throughput(
    env: dict[str, str],
    workdir: Path,
    label: str,
    analyst: tuple[str, str],
    seconds: float,
    connections: int,
) -> LoadResult:
    server = Server(env, workdir / f"server-{label}-{connections}.log", WORKERS)
    try:
        with httpx.Client(timeout=60.0) as client:
            server.wait_ready(client)
            token = benchkit.token(client, server.base_url, *analyst)
            url = server.base_url + _product_path("sv-rates", RATES_PARAMS)
            _read_product(client, url, token)  # a refusal shows plainly, not as a count of 4xx
        print(
            f"loading sv-rates, audit {label} ({connections} connections, {seconds:g} s) ...",
            flush=True,
        )
        return _run_load(
            LoadSpec(
                host=server.host,
                port=server.port,
                path=_product_path("sv-rates", RATES_PARAMS),
                headers={"Authorization": f"Bearer {token}"},
                connections=connections,
                warmup_s=LOAD_WARMUP_S,
                seconds=seconds,
                workers=WORKERS,
                server_pid=server.process.pid,
            )
        )
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- server log (tail) ---\n{log_tail(server.log_path)}") from exc
    finally:
        server.stop()


def measure_overhead(
    workdir: Path, database: Database, rows: int, seconds: float
) -> list[Overhead]:
    csvs = _generate(workdir, rows)
    data_dir = workdir / "data"
    env = server_env(data_dir, database.url)
    run_cli(["db", "upgrade"], env)
    police = create_client(env, "bench-police", "hampshire-constabulary", "partner_system")
    vru = create_client(env, "bench-vru", "vru", "partner_system")
    analyst = create_client(env, "bench-analyst", "vru", "l1_analyst")
    server = Server(env, workdir / "server-upload.log", 1)
    try:
        with httpx.Client(timeout=600.0) as client:
            server.wait_ready(client)
            token = benchkit.token(client, server.base_url, *vru)
            for dataset in REFERENCE_DATASETS:
                benchkit.upload(client, server.base_url, token, dataset, csvs[dataset])
            token = benchkit.token(client, server.base_url, *police)
            benchkit.upload(client, server.base_url, token, POLICE, csvs[POLICE])
    finally:
        server.stop()
    off_env = dict(env, TOGETHER_BENCHMARK_ONLY_SKIP_AUDIT="true")
    found: list[Overhead] = []
    for connections in (CONNECTIONS, MANY_CONNECTIONS):
        before = _commits(database, data_dir)
        on_before = _throughput(env, workdir, "on", analyst, seconds, connections)
        after = _commits(database, data_dir)
        off = _throughput(off_env, workdir, "off", analyst, seconds, connections)
        on_after = _throughput(env, workdir, "on-again", analyst, seconds, connections)
        batch = None
        if before is not None and after is not None and after[1] > before[1]:
            batch = (after[0] - before[0]) / (after[1] - before[1])
        found.append(Overhead(connections, on_before, off, on_after, batch))
    return found


# ---------------------------------------------------------------------------------------------
# 2. Offline verification of a large export


def write_synthetic_export(path: Path, events: int, key_path: Path) -> str:
    """An export of `events` product reads, built with the platform's own canonical form, chain,
    Merkle tree and signer; returns the base64 public key."""
    from services.audit import merkle
    from services.audit.canonical import canonical_bytes, canonical_json
    from services.audit.checkpoints import checkpoint_body, write_signing_key
    from services.audit.export import FORMAT

    signer = write_signing_key(key_path)
    template = canonical_json(
        {
            "event_id": "EVENTID",
            "occurred_at": "OCCURRED",
            "action": "product.read",
            "outcome": "success",
            "reason": None,
            "actor": "8c3f1a52-6f0e-4a55-9a39-5b7de0c8e9aa",
            "actor_org": "vru",
            "actor_roles": ["l1_analyst"],
            "resource_type": "product",
            "resource": "sv-rates",
            "resource_org": None,
            "level": 1,
            "purpose": None,
            "case_reference": None,
            "parameters": {"from": "2023-04-01", "to": "2024-04-01", "format": "json"},
            "rows": 14,
            "matched_rule": "p, l1_analyst, product, level1, read, allow",
            "policy_version": "3f0c2d8e9b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d",
            "request_id": "REQUESTID",
            "client_address": "10.0.0.7",
            "details": {
                "sources": {"police.occurrences": 3, "reference.population": 1},
                "suppressed": False,
                "areas": None,
            },
            "subjects": [],
        }
    )
    template = template.replace('"EVENTID"', '"%s"').replace('"OCCURRED"', '"%s"')
    template = template.replace('"REQUESTID"', '"%s"')
    start = datetime(2026, 1, 1, tzinfo=UTC)
    compact = merkle.CompactRange()
    chain = b"0" * 64
    sha256 = hashlib.sha256
    seq = 0
    with path.open("wb") as out:
        header = {
            "type": "header",
            "format": FORMAT,
            "log": "together-audit",
            "first_leaf": 0,
            "tree_size": events,
            "since": None,
            "exported_at": None,
            "compact_range": [],
            "chain_hash": chain.decode(),
            "keys": [],
        }
        out.write(json.dumps(header).encode() + b"\n")
        chunk: list[bytes] = []
        for leaf in range(events):
            moment = (start + timedelta(milliseconds=leaf * 50)).isoformat(timespec="microseconds")
            canonical = (
                template % (uuid.UUID(int=leaf).hex[:32], moment, uuid.UUID(int=leaf).hex)
            ).encode()
            chain = sha256(chain + b"\n" + canonical).hexdigest().encode()
            compact.append(sha256(b"\x00" + canonical).digest())
            chunk.append(
                b'{"type":"event","leaf":%d,"chain":"%s","event":%s}\n' % (leaf, chain, canonical)
            )
            if compact.size % CHECKPOINT_EVERY == 0 or compact.size == events:
                body = checkpoint_body(
                    seq=seq,
                    tree_size=compact.size,
                    root=compact.root(),
                    chain_hash=chain.decode(),
                    issued_at=start + timedelta(seconds=seq + 1, milliseconds=leaf * 50),
                    kid=signer.key_id,
                )
                signature = base64.b64encode(signer.sign(canonical_bytes(body))).decode()
                chunk.append(
                    b'{"type":"checkpoint","body":%s,"signature":"%s"}\n'
                    % (canonical_bytes(body), signature.encode())
                )
                seq += 1
                out.write(b"".join(chunk))
                chunk = []
        out.write(b"".join(chunk))
    return base64.b64encode(signer.public.raw).decode()


def measure_verify(workdir: Path, events: int) -> tuple[float, float, int, str]:
    path = workdir / "audit-export.ndjson"
    print(f"writing a synthetic export of {events:,} events ...", flush=True)
    started = time.perf_counter()
    public_key = write_synthetic_export(path, events, workdir / "audit-key.pem")
    written = time.perf_counter() - started
    print(
        f"written in {written:.1f} s ({path.stat().st_size / (1 << 20):,.0f} MB); verifying ...",
        flush=True,
    )
    started = time.perf_counter()
    done = subprocess.run(
        [str(benchkit.together()), "audit", "verify", str(path), "--key", public_key],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("TOGETHER_")},
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"verify exited {done.returncode}: {done.stdout}{done.stderr}")
    return elapsed, written, path.stat().st_size, done.stdout.strip()


def _cost_line(
    on_before: LoadResult, off: LoadResult, on_after: LoadResult
) -> tuple[str, float | None]:
    """What the audit adds to a read in CPU: in the server's processes and in PostgreSQL, next
    to what a whole read costs the machine with the audit off (the budget a target implies)."""

    def per_read(result: LoadResult, which: str) -> float | None:
        return result.per_request_ms(getattr(result, f"{which}_cpu_s"))

    figures: dict[str, float] = {}
    for which in ("server", "postgres", "machine"):
        on = [per_read(r, which) for r in (on_before, on_after)]
        plain = per_read(off, which)
        if plain is None or any(ms is None for ms in on):
            return "  audit CPU        not measured (needs Linux /proc)", None
        figures[which] = sum(ms for ms in on if ms is not None) / len(on) - plain
        figures[f"{which}_off"] = plain
    budget = figures["machine_off"] * (1 / (1 - OVERHEAD_TARGET) - 1)
    return (
        f"  audit CPU        a read costs the machine {figures['machine_off']:.3f} ms with the "
        f"audit off; the audit adds {figures['server']:+.3f} ms in the server and "
        f"{figures['postgres']:+.3f} ms in PostgreSQL ({figures['machine']:+.3f} ms in all; "
        f"the target allows about {budget:.3f} ms when the cores are the limit)"
    ), figures["machine"]


# ---------------------------------------------------------------------------------------------


def _report_overhead(found: Overhead) -> None:
    verdict = {True: "PASS", False: "FAIL"}
    n = found.connections
    print(f"audit overhead     sv-rates, {n} connections, server --workers {WORKERS}")
    print(_load_line("  audit on", found.on_before))
    print(_load_line("  audit off", found.off))
    print(_load_line("  audit on again", found.on_after))
    batch = "not measured (SQLite)" if found.batch is None else f"{found.batch:.1f} events"
    print(f"  commit batches   mean {batch} a durable commit")
    passed = found.overhead < OVERHEAD_TARGET and found.clean
    print(
        f"  overhead         {found.overhead * 100:.1f}% of throughput (audit on "
        f"{found.on_rps:,.0f}/s averaged, off {found.off.rps:,.0f}/s)  target < "
        f"{OVERHEAD_TARGET * 100:.0f}%  {verdict[passed]}"
    )
    cost_line, added_ms = _cost_line(found.on_before, found.off, found.on_after)
    print(cost_line)
    benchkit.record(
        f"audit.sv_rates_audited_{n}_clients",
        f"`sv-rates` with the audit on, {n} clients, {WORKERS} workers",
        f"{found.on_rps:,.0f} requests/s (mean commit batch {batch})",
        f">= {TARGET_RPS_AUDITED:,.0f} requests/s" if n == CONNECTIONS else "(for information)",
        (found.on_rps >= TARGET_RPS_AUDITED and found.clean) if n == CONNECTIONS else None,
        value=found.on_rps,
        unit="requests/s",
    )
    benchkit.record(
        f"audit.overhead_{n}_clients",
        f"audit overhead on `sv-rates`, {n} clients, {WORKERS} workers",
        f"{found.overhead * 100:.1f}%",
        f"< {OVERHEAD_TARGET * 100:.0f}%" if n == MANY_CONNECTIONS else "(for information)",
        passed if n == MANY_CONNECTIONS else None,
        baseline=f"audit off {found.off.rps:,.0f} requests/s",
        ratio=found.on_rps / found.off.rps if found.off.rps else None,
        value=found.overhead * 100,
        unit="%",
    )
    if added_ms is not None and n == CONNECTIONS:
        benchkit.record(
            "audit.cpu_per_read",
            f"machine CPU the audit adds to a read ({n} clients; server + PostgreSQL)",
            f"{added_ms:.3f} ms",
            f"< {CPU_TARGET_MS:g} ms",
            added_ms < CPU_TARGET_MS,
            value=added_ms,
            unit="ms",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=20_000, help="police rows to store")
    parser.add_argument("--seconds", type=float, default=8.0, help="each throughput run")
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the export")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="together-bench-audit-"))
    database = Database(url=None, description="(not chosen yet)")
    try:
        database = _choose_database()
        print(f"database: {database.description}", flush=True)
        overheads = measure_overhead(workdir, database, args.rows, args.seconds)
        verify_s, written_s, size, verify_out = measure_verify(workdir, args.events)
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
            _drop_schema(database)

    verdict = {True: "PASS", False: "FAIL"}
    clean = all(overhead.clean for overhead in overheads)
    print()
    print(f"database           {database.description}")
    for found in overheads:
        _report_overhead(found)
    rate = args.events / verify_s if verify_s else 0.0
    print(
        f"offline verify     {args.events:,} events ({size / (1 << 20):,.0f} MB, written in "
        f"{written_s:.1f} s): {verify_s:.2f} s ({rate:,.0f} events/s, "
        f"{verify_s / args.events * 1e6:.1f} us an event, process start included)"
    )
    target = VERIFY_TARGET_S * args.events / 1_000_000
    print(f"  target           < {target:.3g} s  {verdict[verify_s < target]}")
    print(f"  verifier said    {verify_out.splitlines()[-1][:160]}")
    benchkit.record(
        f"audit.verify_{args.events}",
        f"offline `together audit verify` of {args.events:,} events",
        f"{verify_s:.2f} s ({size / (1 << 20):,.0f} MB)",
        f"< {target:.3g} s",
        verify_s < target,
        value=verify_s,
        unit="s",
    )
    if not clean:
        print("bench error: non-2xx responses or connection errors (above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
