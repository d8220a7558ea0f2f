"""The README's security table, generated from the tests themselves.

Every test of the security catalogue (../shared/docs/security-tests.md, T1-T50) is named
`test_T<n>_...`, so `pytest -k T<n>_` runs it. This script finds them, and prints (or writes into
README.md, between the markers) one row per T-number: what it proves, and where it is tested or
why it is not. tests/test_docs.py fails when the README's table and the tests disagree.

    python scripts/security_table.py           # print the table
    python scripts/security_table.py --write   # regenerate it in README.md
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START = "<!-- security-table:start -->"
END = "<!-- security-table:end -->"
_NAME = re.compile(r"^test_T(\d{1,2})_")

# What each test proves, in a line (the catalogue has the full text).
PROVES: dict[int, str] = {
    1: "unsigned tokens (`alg: none` in any case) are refused",
    2: "key confusion (HS256 with the public key, unknown signing keys) is refused",
    3: "keys named in a token's header (jwk, jku, x5u, kid, crit) are never used",
    4: "expired, early, wrong-audience, wrong-issuer, wrong-type tokens are refused",
    5: "partner systems authenticate with private_key_jwt; a replayed assertion is refused",
    6: "oversized Authorization headers and JWS headers are refused fast, memory bounded",
    7: "a disabled client or person is refused on every worker within the bound",
    8: "another organisation's objects answer 404, like ones that do not exist",
    9: "a lower tier cannot reach a higher one; no identifying field in Level 1/2 answers",
    10: "a Level 3 read needs a purpose and a case reference, and is audited with them",
    11: "admin functions refuse other roles; Level 3 and admin grants need a second person",
    12: "path and Host tricks never reach a Level 3 answer without Level 3 rights",
    13: "reads fail closed (503/403, never 200) when the policy store is unavailable",
    14: "a revoked grant is denied everywhere within the bound; each change audited",
    15: "small counts withheld, others rounded; differencing and bounds recover nothing",
    16: "Level 3 reads are limited per hour and day; bursts raise an alert",
    17: "a contract violation refuses the whole upload with row, column and rule",
    18: "oversized, short or slow bodies are refused in bounded time",
    19: "decompression bombs stop at the decompressed budget",
    20: "client-supplied names never become paths",
    21: "hostile Parquet/Arrow files are refused, never executed, never crash the server",
    22: "no endpoint parses multipart; the token form cannot be flooded or smuggled into",
    23: "a body whose type does not match its Content-Type is refused",
    24: "the API, fuzzed from its OpenAPI description, never answers 5xx or off-schema",
    25: "a read whose audit event cannot be written returns no data",
    26: "the offline verifier finds a flipped byte, a deleted or reordered event, a truncation",
    27: "an independent witness refuses to cosign two different trees of one size",
    28: "checkpoints keep their cadence with no traffic; a deleted checkpoint is detected",
    29: "no names, dates of birth, NHS numbers or tokens in logs or audit events",
    30: "the application's database role cannot alter or delete audit rows",
    31: "an IG lead sees only their organisation's events; every audit query is audited",
    32: "a server killed during an upload loses no acknowledged batch and leaves none partial",
    33: "Idempotency-Key: mandatory, exactly once, per organisation, payload-bound",
    34: "a lost database or object store answers 503, never a false 201",
    35: "a full disk answers 503/507, cleans up, keeps the previous version",
    36: "an unmigrated or half-migrated database is refused at start and in readiness",
    37: "concurrent uploads and reads keep the audit chain gap-free and unique",
    38: "a restored backup verifies against the checkpoint signed before it",
    39: "sustained peak load keeps its latency, with every read audited",
    40: "slow clients beside a normal one: the normal one is served",
    41: "identifying values are not in clear in the database, files or staging",
    42: "data keys and checkpoint keys rotate; old data and checkpoints still verify",
    43: "retention, erasure and correction propagate to every product",
    44: "transport security: the database connection's sslmode is honoured",
    45: "errors carry no internals; no identifiers in URL paths; no-store on data",
    46: "a subject access request finds a person's records and who read them",
    47: "CSV answers neutralise formulas; download names are server-made",
    48: "an export carries the same suppressed figures as the API answer",
    49: "Parquet files served carry no extension types or internal metadata",
    50: "Delta Sharing file URLs expire quickly, name their recipient, are audited",
}

# T-numbers with no automated test here, and why (the nearest equivalent, if any, is tested
# under its own number).
NOT_AUTOMATED: dict[int, str] = {
    39: "a load figure, not a test: `make bench` measures throughput with every read audited",
}


def collect(tests: Path = ROOT / "tests") -> dict[int, list[str]]:
    """Every `test_T<n>_` function under `tests`, by T-number, as `path::name`."""
    found: dict[int, list[str]] = defaultdict(list)
    for path in sorted(tests.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                match = _NAME.match(node.name)
                if match:
                    found[int(match.group(1))].append(f"{path.relative_to(ROOT)}::{node.name}")
    return found


def table(found: dict[int, list[str]]) -> str:
    rows = [
        "| T | what it proves | tested by |",
        "| --- | --- | --- |",
    ]
    for number in range(1, 51):
        tests = found.get(number, [])
        if tests:
            modules = sorted({test.split("::")[0] for test in tests})
            where = f"{len(tests)} test{'s' if len(tests) > 1 else ''} (`-k T{number}_`) in " + (
                ", ".join(f"`{module}`" for module in modules)
            )
        else:
            where = "not automated: " + NOT_AUTOMATED.get(number, "**missing**")
        rows.append(f"| T{number} | {PROVES[number]} | {where} |")
    return "\n".join(rows) + "\n"


def replace_in(text: str, generated: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{generated}{END}{tail}"


def main() -> None:
    generated = table(collect())
    if "--write" in sys.argv:
        README.write_text(replace_in(README.read_text(encoding="utf-8"), generated))
    else:
        sys.stdout.write(generated)


if __name__ == "__main__":
    main()
