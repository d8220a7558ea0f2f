"""Files as police and council systems write them, and files built to hurt the readers.

T17: impossible values (a time in 2099, recorded before committed, a date of birth in the
future) refuse the whole upload with row, field and rule; a retired contract takes no upload.
T19/T21: encodings, quoting, line ends and byte-order marks as real exports have them; hostile
CSV, NDJSON and Parquet bodies refused with a 422 naming the problem, never a crash (a fuzz of
each reader in a process of its own). T23: a body of one format labelled as another, and columns
only the server writes, are refused.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import shutil
import subprocess
import sys
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from services.kit.settings import Settings
from services.platform import Platform, build_platform
from services.storage import service as storage_service
from services.storage.inputs import (
    MAX_LINE_CHARS,
    MEDIA_CSV,
    InputFormatError,
    InputLimits,
    UnsupportedCharset,
    open_input,
    parse_content_type,
)
from tests.fixtures.app import MakeClient, TokenFor, client_maker, token_issuer
from tests.ingestion.helpers import police_rows, to_csv

_contracts_URL = "/v1/datasets/police.occurrences/uploads"
_contracts_LIMITS = InputLimits(max_rows=1_000_000, max_decompressed_bytes=1 << 30)
_contracts_PARQUET = "application/vnd.apache.parquet"
_contracts_NDJSON = "application/x-ndjson"


def _contracts_push(
    api: TestClient, token: str, body: bytes, content_type: str | None = MEDIA_CSV, **extra: str
) -> Any:
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())}
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers.update(extra)
    return api.post(_contracts_URL, params={"mode": "replace"}, content=body, headers=headers)


def _contracts_version(platform: Platform) -> int | None:
    with platform.sessions() as session:
        info = storage_service.current_version(session, platform.storage, "police.occurrences")
    return None if info is None else info.version


def _contracts_stored(platform: Platform) -> pa.Table:
    with platform.sessions() as session:
        info = storage_service.current_version(session, platform.storage, "police.occurrences")
    assert info is not None
    return pa.concat_tables([pq.read_table(path) for path in info.files])


def _contracts_refused(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    violations: list[dict[str, Any]] = response.json()["report"]["violations"]
    return violations


def _contracts_rows(count: int = 20) -> list[dict[str, str]]:
    return police_rows(count, seed=3)


# T17: impossible values


def test_T17_a_time_in_2099_refuses_the_whole_upload(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    rows = _contracts_rows()
    assert _contracts_push(api, police_token, to_csv(rows)).status_code == 201
    before = _contracts_version(platform)
    rows[4] = {**rows[4], "committed_at": "2099-06-01 12:00:00", "recorded_date": "2099-06-01"}
    violations = _contracts_refused(_contracts_push(api, police_token, to_csv(rows)))
    assert [(v["row"], v["field"], v["rule"]) for v in violations] == [
        (5, "committed_at", "not_after"),
        (5, "recorded_date", "not_after"),
    ]
    assert all("in the future" in v["message"] for v in violations)
    assert _contracts_version(platform) == before
    assert _contracts_stored(platform).num_rows == len(rows)


def _contracts_break(rows: list[dict[str, str]], kind: str, index: int) -> bytes:
    """The rows as CSV, with row ``index`` breaking one rule of the given kind."""
    broken = [dict(row) for row in rows]
    row = broken[index]
    if kind == "type":
        row["victim_age"] = "twenty"
    elif kind == "required":
        row["csp"] = ""
    elif kind == "future":
        row["committed_at"] = "2099-01-01 00:00:00"
        row["recorded_date"] = "2099-01-01"
    elif kind == "cross_field":
        day = date.fromisoformat(row["committed_at"][:10]) - timedelta(days=3)
        row["recorded_date"] = day.isoformat()
    if kind == "extra_column":
        return to_csv(broken, extra_columns={"notes": "x"})
    return to_csv(broken)


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        ("type", "type"),
        ("required", "required"),
        ("extra_column", "undeclared_column"),
        ("future", "not_after"),
        ("cross_field", "on_or_after"),
    ],
)
def test_T17_one_bad_row_in_10000_commits_nothing_and_a_corrected_file_succeeds(
    api: TestClient, platform: Platform, police_token: str, kind: str, rule: str
) -> None:
    rows = police_rows(10_000, seed=17)
    key = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {police_token}", "Content-Type": MEDIA_CSV}
    body = _contracts_break(rows, kind, 6_789)
    refused = api.post(
        _contracts_URL,
        params={"mode": "replace"},
        content=body,
        headers=headers | {"Idempotency-Key": key},
    )
    violations = _contracts_refused(refused)
    assert {v["rule"] for v in violations} == {rule}
    if kind != "extra_column":
        assert {v["row"] for v in violations} == {6_790}
    assert _contracts_version(platform) is None
    datasets = platform.settings.data_dir / "datasets"
    assert not [p for p in datasets.rglob("*") if p.is_file()] if datasets.exists() else True
    # The key remembers the refusal: the same request is answered the same, nothing stored.
    again = api.post(
        _contracts_URL,
        params={"mode": "replace"},
        content=body,
        headers=headers | {"Idempotency-Key": key},
    )
    assert again.status_code == 422
    assert again.json()["report"] == refused.json()["report"]
    corrected = _contracts_push(api, police_token, to_csv(rows))
    assert corrected.status_code == 201, corrected.text
    assert _contracts_stored(platform).num_rows == 10_000


def test_T17_recorded_before_committed_is_refused(api: TestClient, police_token: str) -> None:
    rows = _contracts_rows()
    committed = rows[2]["committed_at"]
    day_before = (date.fromisoformat(committed[:10]) - timedelta(days=1)).isoformat()
    rows[2] = {**rows[2], "recorded_date": day_before}
    violations = _contracts_refused(_contracts_push(api, police_token, to_csv(rows)))
    assert [(v["row"], v["field"], v["rule"]) for v in violations] == [
        (3, "recorded_date", "on_or_after")
    ]


def test_T17_a_date_of_birth_in_the_future_is_refused_and_not_quoted(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    rows = _contracts_rows()
    index = next(i for i, row in enumerate(rows) if row["suspect_dob"])
    future = (date.today() + timedelta(days=400)).isoformat()
    rows[index] = {**rows[index], "suspect_dob": future}
    response = _contracts_push(api, police_token, to_csv(rows))
    violations = _contracts_refused(response)
    found = {(v["row"], v["field"], v["rule"]) for v in violations}
    assert (index + 1, "suspect_dob", "not_after") in found
    assert future not in response.text
    assert _contracts_version(platform) is None


def test_T17_today_is_accepted(api: TestClient, police_token: str) -> None:
    rows = _contracts_rows()
    today = date.today().isoformat()
    rows[0] = {**rows[0], "committed_at": f"{today} 00:00:01", "recorded_date": today}
    assert _contracts_push(api, police_token, to_csv(rows)).status_code == 201


def test_T17_the_rules_are_shown_in_the_contract(api: TestClient, police_token: str) -> None:
    response = api.get(
        "/v1/contracts/police.occurrences", headers={"Authorization": f"Bearer {police_token}"}
    )
    assert response.status_code == 200
    fields = {field["name"]: field for field in response.json()["fields"]}
    assert fields["committed_at"]["not_after"] == "today"
    assert fields["recorded_date"]["on_or_after"] == "committed_at"
    assert fields["suspect_dob"]["on_or_before"] == "committed_at"
    assert fields["ho_offence_code"]["subcode_separator"] == "/"


def test_T17_a_retired_contract_takes_no_upload(settings: Settings, tmp_path: Path) -> None:
    contracts = tmp_path / "contracts"
    shutil.copytree(settings.contracts_dir, contracts)
    police = contracts / "police.occurrences.yaml"
    police.write_text(
        police.read_text().replace("status: active", "status: retired"), encoding="utf-8"
    )
    retired = settings.model_copy(update={"contracts_dir": contracts})
    platform = build_platform(retired)
    try:
        with TestClient(create_app(retired, platform)) as api:
            make: MakeClient = client_maker(platform)
            token_for: TokenFor = token_issuer(api)
            token = token_for(make())
            response = _contracts_push(api, token, to_csv(_contracts_rows()))
            assert response.status_code == 400, response.text
            assert "retired" in response.json()["detail"]
            assert _contracts_version(platform) is None
    finally:
        platform.close()


# T19/T21: files as partner systems write them


def _contracts_csv_text(rows: list[dict[str, str]]) -> str:
    return to_csv(rows).decode("utf-8")


def _contracts_accented(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    named = [i for i, row in enumerate(rows) if row["suspect_surname"]]
    changed = [dict(row) for row in rows]
    changed[named[0]].update(suspect_forename="Zoë", suspect_surname="Ní Bhriain-Éclair")
    changed[named[1]].update(suspect_forename="José, Jr", suspect_surname="O'Brien\nSmith")
    return changed


@pytest.mark.parametrize("variant", ["bom", "crlf", "quoted", "accented", "all"])
def test_T21_real_csv_exports_are_accepted_like_a_clean_file(
    api: TestClient, platform: Platform, police_token: str, variant: str
) -> None:
    rows = _contracts_rows(30)
    if variant in ("accented", "all"):
        rows = _contracts_accented(rows)
    text = _contracts_csv_text(rows)
    if variant in ("crlf", "all"):
        text = text.replace("\n", "\r\n")
    if variant in ("quoted", "all"):
        # Every value quoted, as some exports write them.
        buffer = io.StringIO()
        import csv

        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    body = text.encode("utf-8")
    if variant in ("bom", "all"):
        body = b"\xef\xbb\xbf" + body
    response = _contracts_push(api, police_token, body)
    assert response.status_code == 201, response.text
    assert response.json()["rows"] == len(rows)
    stored = _contracts_stored(platform)
    assert stored.column("occurrence_ref").to_pylist() == [r["occurrence_ref"] for r in rows]
    assert stored.column("committed_at").null_count == 0


def test_T21_accented_names_link_like_the_same_names_from_a_clean_file(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    rows = _contracts_accented(_contracts_rows(30))
    body = to_csv(rows)
    assert _contracts_push(api, police_token, body).status_code == 201
    clean = _contracts_stored(platform).column("person_key").to_pylist()
    crlf_bom = b"\xef\xbb\xbf" + body.replace(b"\n", b"\r\n")
    assert _contracts_push(api, police_token, crlf_bom).status_code == 201
    assert _contracts_stored(platform).column("person_key").to_pylist() == clean


def test_T21_windows_1252_is_refused_naming_line_and_byte(
    api: TestClient, police_token: str
) -> None:
    rows = _contracts_accented(_contracts_rows(10))
    text = _contracts_csv_text(rows)
    body = text.encode("cp1252")
    violations = _contracts_refused(_contracts_push(api, police_token, body))
    [violation] = violations
    assert violation["rule"] == "format"
    offset = body.index(b"\xeb")
    assert violation["row"] == body[:offset].count(b"\n") + 1
    assert f"byte {offset} (0xEB) is not UTF-8" in violation["message"]
    assert "windows-1252" in violation["message"]
    assert "Zo" not in violation["message"]


def test_T21_utf16_is_refused_naming_the_encoding(api: TestClient, police_token: str) -> None:
    body = _contracts_csv_text(_contracts_rows(5)).encode("utf-16")
    [violation] = _contracts_refused(_contracts_push(api, police_token, body))
    assert "UTF-16" in violation["message"] and "charset=utf-16" in violation["message"]


@pytest.mark.parametrize(
    ("label", "codec"), [("windows-1252", "cp1252"), ("iso-8859-1", "cp1252"), ("utf-16", "utf-16")]
)
def test_T21_a_declared_charset_is_read_like_utf8(tmp_path: Path, label: str, codec: str) -> None:
    """The reader transcodes a declared encoding while it streams (the route passes the
    Content-Type's charset; see parse_content_type)."""
    rows = _contracts_accented(_contracts_rows(10))
    text = _contracts_csv_text(rows)
    media_type, declared = parse_content_type(f"text/csv; charset={label}")
    assert (media_type, declared) == (MEDIA_CSV, codec)
    utf8, other = tmp_path / "utf8.csv", tmp_path / "other.csv"
    utf8.write_bytes(text.encode("utf-8"))
    other.write_bytes(text.encode(codec))

    def read(path: Path, charset: str | None) -> list[dict[str, Any]]:
        reader = open_input(path, media_type, _contracts_LIMITS, charset)
        return pa.Table.from_batches(list(reader.batches())).to_pylist()

    assert read(other, declared) == read(utf8, None)
    assert any(row["suspect_forename"] == "Zoë" for row in read(other, declared))


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("text/csv; charset=ebcdic", "is not accepted"),
        ("application/x-ndjson; charset=windows-1252", "UTF-8 only"),
    ],
)
def test_T21_an_unknown_or_misplaced_charset_is_refused(header: str, why: str) -> None:
    with pytest.raises(UnsupportedCharset, match=why):
        parse_content_type(header)
    assert parse_content_type("text/csv; charset=UTF-8") == (MEDIA_CSV, None)


def test_T21_an_unclosed_quote_names_its_line(api: TestClient, police_token: str) -> None:
    lines = _contracts_csv_text(_contracts_rows(10)).splitlines(keepends=True)
    lines[4] = lines[4].replace(",", ',"', 1)
    [violation] = _contracts_refused(_contracts_push(api, police_token, "".join(lines).encode()))
    assert (violation["row"], violation["rule"]) == (5, "format")
    assert "never closed" in violation["message"]


def test_T21_a_line_beyond_the_bound_is_refused(api: TestClient, police_token: str) -> None:
    text = _contracts_csv_text(_contracts_rows(3))
    body = (text + "x" * (MAX_LINE_CHARS + 10) + "\n").encode()
    [violation] = _contracts_refused(_contracts_push(api, police_token, body))
    assert violation["row"] == 5 and "longer than" in violation["message"]


def test_T21_an_ndjson_line_without_end_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.ndjson"
    path.write_bytes(b'{"a": "' + b"y" * (MAX_LINE_CHARS + 1))
    with pytest.raises(InputFormatError, match="longer than"):
        open_input(path, _contracts_NDJSON, _contracts_LIMITS)


def test_T21_a_nul_byte_is_binary_not_text(tmp_path: Path) -> None:
    path = tmp_path / "nul.csv"
    path.write_bytes(b"a,b\n1,2\n3,\x004\n")
    with pytest.raises(InputFormatError, match="line 3 holds a NUL"):
        open_input(path, MEDIA_CSV, _contracts_LIMITS)


# T21: hostile Parquet


def _contracts_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _contracts_police_table(count: int = 10) -> pa.Table:
    return pa.Table.from_pylist(_contracts_rows(count))


class _CanaryPayload:
    """Unpickling this would create the canary file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def test_T21_a_pickled_extension_type_is_refused_and_never_run(
    api: TestClient, platform: Platform, police_token: str, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    payload = pickle.dumps(_CanaryPayload(str(canary)))
    table = _contracts_police_table()
    field = pa.field(
        "suspect_surname",
        pa.string(),
        metadata={
            b"ARROW:extension:name": b"arrow.py_extension_type",
            b"ARROW:extension:metadata": payload,
        },
    )
    index = table.schema.get_field_index("suspect_surname")
    table = table.set_column(index, field, table.column(index))
    body = _contracts_parquet(table)
    [violation] = _contracts_refused(
        _contracts_push(api, police_token, body, content_type=_contracts_PARQUET)
    )
    assert "extension type" in violation["message"]
    assert not canary.exists()
    assert _contracts_version(platform) is None


@pytest.mark.parametrize("case", ["nested", "binary", "footer", "truncated", "bad_utf8"])
def test_T21_malformed_parquet_is_a_422_naming_the_problem(
    api: TestClient, police_token: str, case: str
) -> None:
    table = _contracts_police_table()
    if case == "nested":
        table = table.append_column("extra", pa.array([{"a": 1}] * table.num_rows))
        expected = "nested type"
    elif case == "binary":
        table = table.append_column("extra", pa.array([b"\x00"] * table.num_rows))
        expected = "holds bytes"
    if case == "bad_utf8":
        # A string column whose bytes are not UTF-8, as a forger writes one: binary values
        # viewed as strings, which the writer stores without checking.
        refs = [f"OCC{i:05d}\xff".encode("latin-1") for i in range(table.num_rows)]
        forged = pa.array(refs, pa.binary()).view(pa.string())
        arrays = [forged, *table.columns[1:]]
        body = _contracts_parquet(pa.Table.from_arrays(arrays, names=table.column_names))
        expected = "invalid data"
    else:
        body = _contracts_parquet(table)
    if case == "footer":
        body = body[:-8] + (len(body) * 4).to_bytes(4, "little") + b"PAR1"
        expected = "footer length"
    elif case == "truncated":
        body = body[: len(body) // 2]
        expected = "truncated"
    [violation] = _contracts_refused(
        _contracts_push(api, police_token, body, content_type=_contracts_PARQUET)
    )
    assert expected in violation["message"], violation


# T19/T21: fuzzing each reader in a process of its own

_FUZZ_SCRIPT = r"""
import random, sys
from pathlib import Path
from services.storage.inputs import InputFormatError, InputLimits, open_input

seed_file, media_type, folder = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
cases = int(sys.argv[4])
limits = InputLimits(max_rows=100_000, max_decompressed_bytes=1 << 28)
valid = seed_file.read_bytes()
rng = random.Random(20261204)
outcomes = {"rows": 0, "refused": 0}
for case in range(cases):
    data = bytearray(valid)
    for _ in range(rng.choice((1, 2, 4, 8, 32))):
        kind = rng.random()
        at = rng.randrange(len(data))
        if kind < 0.6:
            data[at] = rng.randrange(256)
        elif kind < 0.8:
            del data[at : at + rng.randrange(1, 64)]
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    path = folder / f"case-{case}"
    path.write_bytes(bytes(data))
    print(case, flush=True)
    try:
        reader = open_input(path, media_type, limits)
        for batch in reader.batches():
            batch.validate(full=True)
        outcomes["rows"] += 1
    except InputFormatError:
        outcomes["refused"] += 1
    path.unlink()
print("done", outcomes["rows"], outcomes["refused"], flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("media_type", [MEDIA_CSV, _contracts_NDJSON, _contracts_PARQUET])
def test_T21_each_reader_survives_300_mutated_files(tmp_path: Path, media_type: str) -> None:
    rows = _contracts_rows(40)
    seed = tmp_path / "seed"
    if media_type == MEDIA_CSV:
        seed.write_bytes(to_csv(rows))
    elif media_type == _contracts_NDJSON:
        seed.write_bytes("".join(json.dumps(row) + "\n" for row in rows).encode())
    else:
        seed.write_bytes(_contracts_parquet(pa.Table.from_pylist(rows)))
    work = tmp_path / "cases"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _FUZZ_SCRIPT, str(seed), media_type, str(work), "300"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = done.stdout.strip().splitlines()[-1:] or ["nothing"]
    # A native crash ends the process with a signal; a Python exception other than the
    # readers' own error is a crash too. Either fails here, naming the case.
    assert done.returncode == 0, (last, done.stderr[-2000:])
    assert last[0].startswith("done"), last
    _, accepted, refused = last[0].split()
    assert int(accepted) + int(refused) == 300
    assert int(refused) > 0


# T23: a body of one format labelled as another


@pytest.mark.parametrize(
    ("body_kind", "content_type", "expected"),
    [
        ("parquet", MEDIA_CSV, "Parquet file"),
        ("csv", _contracts_PARQUET, "not a Parquet file"),
        ("ndjson", MEDIA_CSV, "looks like NDJSON"),
        ("ndjson", _contracts_PARQUET, "looks like NDJSON"),
        ("gzip", MEDIA_CSV, "Content-Encoding: gzip"),
        ("parquet", _contracts_NDJSON, "Parquet file"),
        ("zip", MEDIA_CSV, "ZIP archive"),
    ],
)
def test_T23_a_body_labelled_as_another_format_is_refused_naming_it(
    api: TestClient, platform: Platform, police_token: str, body_kind: str, content_type: str,
    expected: str,
) -> None:  # fmt: skip
    rows = _contracts_rows(10)
    csv_body = to_csv(rows)
    body = {
        "csv": csv_body,
        "parquet": _contracts_parquet(pa.Table.from_pylist(rows)),
        "ndjson": "".join(json.dumps(row) + "\n" for row in rows).encode(),
        "gzip": gzip.compress(csv_body),
        "zip": b"PK\x03\x04" + csv_body,
    }[body_kind]
    [violation] = _contracts_refused(
        _contracts_push(api, police_token, body, content_type=content_type)
    )
    assert expected in violation["message"], violation
    assert _contracts_version(platform) is None


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/json", "text/csvx"])
def test_T23_a_missing_or_unknown_content_type_is_415(
    api: TestClient, platform: Platform, police_token: str, content_type: str | None
) -> None:
    response = _contracts_push(
        api, police_token, to_csv(_contracts_rows(5)), content_type=content_type
    )
    assert response.status_code == 415, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert _contracts_version(platform) is None


@pytest.mark.parametrize(
    "column",
    [
        "person_key",
        "suspect_surname_enc",
        "suspect_nominal_ref_pseudonym",
        "upload_id",
        "version",
        "contract_version",
        "agency_id",
        "retention_until",
        "tier",
        "created_by",
    ],
)
def test_T23_columns_only_the_server_writes_cannot_be_sent(
    api: TestClient, platform: Platform, police_token: str, column: str
) -> None:
    rows = _contracts_rows(5)
    body = to_csv(rows, extra_columns={column: "forged"})
    violations = _contracts_refused(_contracts_push(api, police_token, body))
    assert {(v["field"], v["rule"]) for v in violations} == {(column, "undeclared_column")}
    ndjson = "".join(json.dumps({**row, column: "forged"}) + "\n" for row in rows).encode()
    violations = _contracts_refused(
        _contracts_push(api, police_token, ndjson, content_type=_contracts_NDJSON)
    )
    assert {(v["field"], v["rule"]) for v in violations} == {(column, "undeclared_column")}
    assert _contracts_version(platform) is None
