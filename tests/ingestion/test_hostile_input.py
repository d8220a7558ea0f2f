"""Bodies built to crash a parser are refused before any native parser sees them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from services.platform import Platform
from services.storage.inputs import MEDIA_NDJSON, InputFormatError, InputLimits, open_input
from tests.ingestion.helpers import police_rows
from tests.ingestion.test_uploads import current_version, push

LIMITS = InputLimits(max_rows=1_000_000, max_decompressed_bytes=1 << 30)
DEEP = '{"a":' * 20_000 + "1" + "}" * 20_000 + "\n"


def _read(path: Path) -> None:
    for _batch in open_input(path, MEDIA_NDJSON, LIMITS).batches():
        pass


def test_a_line_nested_20000_deep_is_refused_and_the_process_survives(tmp_path: Path) -> None:
    # In a process of its own: if the guard ever fails, Arrow's parser kills that process with a
    # segmentation fault, and this test fails instead of taking the test worker down.
    good = "".join(json.dumps({"ref": f"R{i}"}) + "\n" for i in range(1000))
    for name, body in (("first", DEEP), ("later", good + DEEP), ("arrays", "[" * 20_000 + "\n")):
        path = tmp_path / f"{name}.ndjson"
        path.write_text(body, encoding="utf-8")
        script = (
            "import sys\n"
            "from pathlib import Path\n"
            "from services.storage.inputs import InputFormatError, InputLimits, open_input\n"
            "limits = InputLimits(max_rows=1_000_000, max_decompressed_bytes=1 << 30)\n"
            "try:\n"
            "    for _ in open_input(Path(sys.argv[1]), 'application/x-ndjson', limits)"
            ".batches():\n"
            "        pass\n"
            "except InputFormatError as exc:\n"
            "    print(exc.row, exc.message)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (name, done.returncode, done.stderr[-500:])
        row, message = done.stdout.split(" ", 1)
        assert row == {"first": "1", "later": "1001", "arrays": "1"}[name], done.stdout
        assert "object" in message or "JSON" in message


def test_brackets_inside_strings_are_not_nesting(tmp_path: Path) -> None:
    rows = [{"ref": f"R{i}", "note": "see: {appendix}, [2] and ,[x]"} for i in range(50)]
    path = tmp_path / "text.ndjson"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    batches = list(open_input(path, MEDIA_NDJSON, LIMITS).batches())
    assert sum(batch.num_rows for batch in batches) == 50


def test_a_nested_value_is_named_before_arrow_reads(tmp_path: Path) -> None:
    path = tmp_path / "nested.ndjson"
    path.write_text('{"ref": "R1"}\n{"ref": "R2", "who": {"name": "Ann"}}\n', encoding="utf-8")
    try:
        _read(path)
    except InputFormatError as exc:
        assert (exc.row, exc.field) == (2, "who")
    else:
        raise AssertionError("a nested value was accepted")


def test_the_api_refuses_the_deep_body_and_keeps_the_current_version(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    rows = police_rows(20)
    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    assert push(api, police_token, body, content_type="application/x-ndjson").status_code == 201
    version = current_version(platform)
    refused = push(api, police_token, DEEP.encode(), content_type="application/x-ndjson")
    # Refused like any malformed file: a report naming the line and the rule, nothing stored.
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    [violation] = refused.json()["report"]["violations"]
    assert (violation["row"], violation["rule"]) == (1, "format")
    assert "line 1" in violation["message"]
    assert current_version(platform) == version
    assert api.get("/healthz").status_code == 200
