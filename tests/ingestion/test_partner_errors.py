"""Errors a partner's developer can act on without asking us: each names what to change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.platform import Platform
from services.storage import inputs
from services.storage.inputs import MEDIA_NDJSON, InputFormatError, InputLimits, open_input
from tests.ingestion.helpers import police_rows, to_csv
from tests.ingestion.test_uploads import URL, current_version, push

LIMITS = InputLimits(max_rows=1_000_000, max_decompressed_bytes=1 << 30)
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code", "request_id"}


def ndjson(rows: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(row) for row in rows) + "\n").encode()


def read_all(tmp_path: Path, body: bytes) -> InputFormatError:
    path = tmp_path / "body.ndjson"
    path.write_bytes(body)
    with pytest.raises(InputFormatError) as caught:
        for _batch in open_input(path, MEDIA_NDJSON, LIMITS).batches():
            pass
    return caught.value


# NDJSON whose values change type name the line and the field


def test_number_then_string_names_line_and_field(tmp_path: Path) -> None:
    rows = [{"ref": f"R{i}", "age": 30} for i in range(5)]
    rows[3]["age"] = "thirty"  # type: ignore[assignment]
    error = read_all(tmp_path, ndjson(rows))
    assert error.row == 4 and error.field == "age"
    assert "line 4" in error.message and "'age'" in error.message
    assert "a string" in error.message and "a number" in error.message and "line 1" in error.message
    assert "thirty" not in error.message  # values may be names: never quoted


def test_an_object_value_names_line_and_field(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"ref": f"R{i}", "age": 30} for i in range(3)]
    rows[2]["age"] = {"years": 30}
    error = read_all(tmp_path, ndjson(rows))
    assert (error.row, error.field) == (3, "age")
    assert "line 3" in error.message and "an object" in error.message


def test_an_object_on_the_first_line_names_it_too(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"ref": "R1", "name": {"first": "Ann"}}, {"ref": "R2"}]
    error = read_all(tmp_path, ndjson(rows))
    assert (error.row, error.field) == (1, "name")
    assert "line 1" in error.message and "an object" in error.message
    assert "Ann" not in error.message


def test_a_change_far_into_a_large_file_names_its_line(tmp_path: Path) -> None:
    # Beyond the reader's first block, so the type was already fixed by earlier lines.
    rows = [{"ref": f"R{i:07d}", "note": "x" * 200, "age": 30} for i in range(200_000)]
    rows[190_000]["age"] = "old"  # type: ignore[assignment]
    error = read_all(tmp_path, ndjson(rows))
    assert (error.row, error.field) == (190_001, "age")
    assert "line 190001" in error.message


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("soon", "is text that is not a date or time but a date or time on the lines before"),
        (12, "is a whole number but a date or time"),
        (2.5, "a number with a fraction but a whole number"),
        ("thirty", "is a string but a whole number"),
    ],
)
def test_a_later_block_keeps_the_type_of_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: object, words: str
) -> None:
    monkeypatch.setattr(inputs, "_BLOCK", 1 << 12)
    rows: list[dict[str, Any]] = [
        {"ref": f"R{i:05d}", "at": "2024-03-01 10:00:00", "age": 30} for i in range(400)
    ]
    rows[350]["at" if value in ("soon", 12) else "age"] = value
    error = read_all(tmp_path, ndjson(rows))
    assert error.row == 351 and words in error.message, error.message


def test_a_field_null_throughout_the_first_block_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inputs, "_BLOCK", 1 << 12)
    rows: list[dict[str, Any]] = [{"ref": f"R{i:05d}", "age": None} for i in range(400)]
    rows[300]["age"] = 41
    error = read_all(tmp_path, ndjson(rows))
    assert (error.row, error.field) == (301, "age")
    assert "null on every line before it" in error.message


def test_a_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    body = ndjson([{"ref": "R1"}, {"ref": "R2"}]) + b"{not json\n"
    error = read_all(tmp_path, body)
    assert error.row == 3 and "line 3" in error.message and "not valid JSON" in error.message


def test_upload_report_names_line_and_field(api: TestClient, police_token: str) -> None:
    rows: list[dict[str, Any]] = [
        {k: (v if v != "" else None) for k, v in row.items()} for row in police_rows(30)
    ]
    for row in rows:
        row["latitude"] = float(row["latitude"])  # a JSON number, as a partner would send it
    rows[17]["latitude"] = "50.9"
    response = push(api, police_token, ndjson(rows), content_type="application/x-ndjson")
    assert response.status_code == 422, response.text
    violation = response.json()["report"]["violations"][0]
    assert violation["rule"] == "format"
    assert violation["row"] == 18 and violation["field"] == "latitude"
    assert "line 18" in violation["message"]


# A reused Idempotency-Key says what differs


def test_reused_key_with_another_mode_names_the_mode(
    api: TestClient, police_token: str, platform: Platform
) -> None:
    body = to_csv(police_rows(40))
    assert push(api, police_token, body, key="batch-0002", mode="replace").status_code == 201
    other = push(api, police_token, body, key="batch-0002", mode="append")
    assert other.status_code == 422
    problem = other.json()
    assert problem["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert "different body" not in problem["detail"]
    assert "first used with mode=replace" in problem["detail"]
    assert "this request has mode=append" in problem["detail"]
    assert problem["differs"] == ["mode"]
    assert current_version(platform) == 1


def test_reused_key_with_another_body_names_the_content(api: TestClient, police_token: str) -> None:
    first = push(api, police_token, to_csv(police_rows(40)), key="batch-0003")
    assert first.status_code == 201
    other = push(api, police_token, to_csv(police_rows(41)), key="batch-0003", mode="append")
    problem = other.json()
    assert other.status_code == 422 and problem["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert problem["differs"] == ["content", "mode"]
    assert f"content_sha256={first.json()['content_sha256']}" in problem["detail"]
    assert "mode=replace" in problem["detail"] and "mode=append" in problem["detail"]


def test_reused_key_after_a_rejected_upload_names_the_content(
    api: TestClient, police_token: str
) -> None:
    bad = police_rows(20)
    bad[3]["victim_age"] = "140"
    assert push(api, police_token, to_csv(bad), key="batch-0004").status_code == 422
    other = push(api, police_token, to_csv(police_rows(20)), key="batch-0004")
    assert other.status_code == 422
    assert other.json()["differs"] == ["content"]
    assert "content_sha256=" in other.json()["detail"]


# Every problem carries the same members


def test_contract_violation_is_a_problem_like_the_others(
    api: TestClient, police_token: str
) -> None:
    bad = police_rows(20)
    bad[3]["victim_age"] = "140"
    response = push(api, police_token, to_csv(bad), key="batch-0005")
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert set(body) >= PROBLEM_MEMBERS
    assert body["type"] == "about:blank" and body["status"] == 422
    assert body["code"] == "CONTRACT_VIOLATION" and body["title"] and body["detail"]
    assert body["report"]["total_violations"] == 1
    replayed = push(api, police_token, to_csv(bad), key="batch-0005")
    assert replayed.headers.get("idempotent-replayed") == "true"
    assert set(replayed.json()) >= PROBLEM_MEMBERS
    missing = api.post(
        URL.replace("police.occurrences", "nothing.here"),
        params={"mode": "replace"},
        content=b"a\n1\n",
        headers={"Authorization": f"Bearer {police_token}", "Content-Type": "text/csv"},
    )
    assert set(missing.json()) <= set(body)
