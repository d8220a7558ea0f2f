"""Delta Sharing benchmark: a million-row published table loaded by the official connector.

Not a test: it prints figures and PASS/FAIL against the target, and exits non-zero only when
something breaks (the server does not start, an upload or a load is refused, the connector's
rows differ from the file's), never for a missed target.

    python scripts/bench_sharing.py [--rows N] [--keep]

The platform publishes Level 1 and 2 products; none of the shipped ones has a million rows, so
the benchmark serves one of its own beside them (`TOGETHER_PRODUCTS_DIR` and
`TOGETHER_SHARING_FILE` pointed at a copy of the shipped definitions plus `bench-rows`: one row
per police occurrence of the period, with its LSOA and CSP, a Level 2 product like hotspots).
It uploads N police rows (1,150,000 by default: a table of about a million), asks for a sharing
profile as an `l2_reader` of every area, and times, each as a process of its own in the
connector's environment (`.venv-connector`, as an analyst's laptop would have it):

1. `delta_sharing.load_as_pandas` of the table, once the table is materialised (the first load,
   which materialises it, is timed and printed apart): the protocol's query, the signed file
   URL, the audited file read streamed from the store, and the connector's own Parquet read;
2. the baseline: `pandas.read_parquet` of the same Parquet file, read locally.

Target: the connector's load within 2x the local read. Both are best of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import benchkit
import httpx
from benchkit import BenchError, Server, create_client, log_tail, run_cli, server_env

ROOT = Path(__file__).resolve().parent.parent
CONNECTOR_PYTHON = ROOT / ".venv-connector" / "bin" / "python"
POLICE = "police.occurrences"
TABLE = "bench.police.rows"
TARGET_RATIO = 2.0
RUNS = 3

# One row per occurrence of the period: as many rows as occurrences, a Level 2 product (areas,
# no person), suppressed like hotspots for an `l2_reader` (its counts, 1 to 3, are withheld).
PRODUCT = """\
id: bench-rows
level: 2
title: Benchmark rows
description: One row per police occurrence of the period with its LSOA and CSP (benchmark only).
sources:
  police.occurrences: [occurrence_ref, committed_at, csp, lsoa_code]
parameters:
  from: {type: date, required: true, description: First day of the period (included).}
  to: {type: date, required: true, description: Day after the period (excluded).}
period: [from, to]
output:
  columns:
    occurrence_ref:
      key: true
      description: The occurrence
      exposes: [police.occurrences.occurrence_ref]
    committed_at:
      key: true
      description: When it was committed
      exposes: [police.occurrences.committed_at]
    lsoa_code:
      key: true
      description: Its LSOA
      exposes: [police.occurrences.lsoa_code]
    csp:
      key: true
      description: Its CSP area
      exposes: [police.occurrences.csp]
    count: {count: true, description: Records of the occurrence (one a suspect)}
  sort: [occurrence_ref]
sql: |
  SELECT occurrence_ref, min(committed_at) AS committed_at, min(lsoa_code) AS lsoa_code,
         min(csp) AS csp, count(*) AS count
  FROM police_occurrences
  WHERE committed_at >= $from AND committed_at < $to
  GROUP BY occurrence_ref
"""

SHARING = """\
shares:
  bench:
    description: Benchmark
    schemas:
      police:
        tables:
          rows:
            product: bench-rows
            description: Every occurrence of the period
            parameters:
              from: "{start}"
              to: "{end}"
"""

# Run in the connector's environment: prints the seconds a load took and its row count.
LOAD_SCRIPT = """
import json, os, sys, time
import delta_sharing, pandas  # imported before the clock starts: an analyst's session has them
job = json.loads(sys.argv[1])
started = time.perf_counter()
if job["kind"] == "connector":
    frame = delta_sharing.load_as_pandas(job["url"])
else:
    frame = pandas.read_parquet(job["path"])
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rows": len(frame), "columns": sorted(frame.columns)}))
sys.stdout.flush()
os._exit(0)  # the connector's thread pools may abort at teardown (apache/arrow#34314)
"""


def _preflight() -> None:
    if not CONNECTOR_PYTHON.exists():
        raise BenchError("the connector's environment is missing: run `make install`")


def _load(job: dict[str, str]) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run(
        [str(CONNECTOR_PYTHON), "-c", LOAD_SCRIPT, json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"the {job['kind']} load failed:\n{done.stderr[-3000:]}")
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def _best(job: dict[str, str]) -> tuple[float, int]:
    results = [_load(job) for _ in range(RUNS)]
    return min(float(r["seconds"]) for r in results), int(str(results[0]["rows"]))  # type: ignore[arg-type]


def _materialised_file(data_dir: Path) -> Path:
    # The default local store keeps materialisations in the data folder's sharing/.
    files = sorted((data_dir / "sharing").rglob("*.parquet"), key=lambda p: p.stat().st_size)
    if not files:
        raise BenchError("no materialised Parquet file in the data folder's sharing/")
    return files[-1]


def _measure(workdir: Path, rows: int) -> dict[str, float]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from services.demo.generate import write_police_csv

    police_csv = workdir / "police.csv"
    print(f"generating {rows:,} police rows ...", flush=True)
    write_police_csv(police_csv, rows, seed=1)
    products = workdir / "products"
    shutil.copytree(ROOT / "services" / "products" / "definitions", products)
    (products / "bench-rows.yaml").write_text(PRODUCT)
    sharing_file = workdir / "sharing.yaml"
    # Every occurrence the generator writes (its dates reach back a few years from today).
    sharing_file.write_text(SHARING.format(start="2000-01-01", end=date.today().isoformat()))
    data_dir = workdir / "data"
    env = server_env(data_dir, None)
    env.update(
        TOGETHER_UPLOAD_MAX_ROWS=str(rows + 1),
        TOGETHER_UPLOAD_PARSE_MEMORY_BYTES="0",
        TOGETHER_PRODUCTS_DIR=str(products),
        TOGETHER_SHARING_FILE=str(sharing_file),
        TOGETHER_SHARING_REFRESH_SECONDS="0",
    )
    run_cli(["db", "upgrade"], env)
    police = create_client(env, "bench-police", "hampshire-constabulary", "partner_system")
    reader = create_client(env, "bench-analyst", "vru", "l2_reader", area="all")
    server = Server(env, workdir / "server.log", 2)
    figures: dict[str, float] = {}
    try:
        with httpx.Client(timeout=600.0) as client:
            server.wait_ready(client)
            token = benchkit.token(client, server.base_url, *police)
            print(f"uploading {rows:,} police rows ...", flush=True)
            benchkit.upload(client, server.base_url, token, POLICE, police_csv)
            token = benchkit.token(client, server.base_url, *reader)
            response = client.get(
                f"{server.base_url}/v1/sharing/profile",
                headers={"Authorization": f"Bearer {token}"},
            )
            if response.status_code != 200:
                raise BenchError(f"profile refused: {response.status_code} {response.text[:500]}")
            profile = workdir / "profile.share"
            profile.write_text(response.text)
            job = {"kind": "connector", "url": f"{profile}#{TABLE}"}
            print("first load (materialises the table) ...", flush=True)
            first = _load(job)
            figures["first_s"] = float(str(first["seconds"]))
            print("loading with the connector (best of 3) ...", flush=True)
            figures["connector_s"], connector_rows = _best(job)
            local = _materialised_file(data_dir)
            print("reading the same Parquet file locally (best of 3) ...", flush=True)
            figures["local_s"], local_rows = _best({"kind": "local", "path": str(local)})
            if connector_rows != local_rows:
                raise BenchError(
                    f"the connector read {connector_rows:,} rows, the file holds {local_rows:,}"
                )
            figures["rows"] = float(local_rows)
            figures["bytes"] = float(local.stat().st_size)
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- server log (tail) ---\n{log_tail(server.log_path)}") from exc
    finally:
        server.stop()
    return figures


def _report(figures: dict[str, float]) -> bool:
    ratio = figures["connector_s"] / figures["local_s"]
    passed = ratio <= TARGET_RATIO
    rows = int(figures["rows"])
    mb = figures["bytes"] / (1 << 20)
    print()
    print(f"published table: {rows:,} rows, {mb:,.1f} MB of Parquet")
    print(f"first load (materialising): {figures['first_s']:.2f} s")
    print(
        f"connector load: {figures['connector_s']:.2f} s; local read of the same file: "
        f"{figures['local_s']:.2f} s; ratio {ratio:.2f}x (target <= {TARGET_RATIO:g}x): "
        f"{'PASS' if passed else 'FAIL'}"
    )
    benchkit.record(
        "sharing_connector_load",
        f"Delta Sharing: {rows:,}-row published table loaded by the official connector",
        f"{figures['connector_s']:.2f} s (first load, materialising: {figures['first_s']:.1f} s)",
        f"<= {TARGET_RATIO:g}x",
        passed,
        baseline=f"pandas.read_parquet of the same file {figures['local_s']:.2f} s",
        ratio=ratio,
        value=figures["connector_s"],
        unit="s",
    )
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    # The generator writes about 0.87 occurrences a row: 1,150,000 rows make a table of 1M.
    parser.add_argument("--rows", type=int, default=1_150_000, help="police rows to upload")
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
    started = time.perf_counter()
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
    print(f"({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
