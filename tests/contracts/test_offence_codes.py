"""Home Office offence codes with sub-codes ("1/1", "64/1") are accepted and counted by their
main code, the part before the slash, in every product; the dataset keeps them as recorded."""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from services.contracts.loader import default_contracts_dir, load_contract
from services.contracts.model import main_code
from services.platform import Platform
from services.storage import service as storage_service
from tests.fixtures.app import MakeClient, TokenFor
from tests.ingestion.helpers import police_rows, to_csv

URL = "/v1/datasets/police.occurrences/uploads"
PERIOD = {"from": "2023-01-01", "to": "2024-01-01"}
# Codes with their sub-codes as police systems write them, and the main code they count as.
SUB_CODED = {"1/1": "1", "4/1": "4", "37/1": "37", "64/1": "64", "65/2": "65", "8N/12": "8N"}


def _rows() -> list[dict[str, str]]:
    """Demo rows with some set to riot or violent disorder (serious violence by their code)."""
    rows = police_rows(400, seed=5)
    for index, row in enumerate(rows):
        if index % 7 == 0:
            row.update(hmic_group="8", ho_offence_code="64" if index % 2 else "65", msv="false")
        elif index % 11 == 0:
            row.update(ho_offence_code="1", hmic_group="1a", msv="true")
        elif index % 13 == 0:
            row.update(ho_offence_code="37", hmic_group="1a", msv="true")
        elif index % 17 == 0:
            row.update(ho_offence_code="4", hmic_group="1a", msv="true")
    return rows


def _with_sub_codes(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    plain_to_sub = {plain: sub for sub, plain in SUB_CODED.items()}
    return [
        {**row, "ho_offence_code": plain_to_sub.get(row["ho_offence_code"], row["ho_offence_code"])}
        for row in rows
    ]


def _push(api: TestClient, token: str, rows: list[dict[str, str]]) -> dict[str, Any]:
    response = api.post(
        URL,
        params={"mode": "replace"},
        content=to_csv(rows),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "text/csv",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _answers(api: TestClient, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    answers = {}
    for product, params in (
        ("sv-counts", PERIOD | {"by": "csp,hmic_group"}),
        ("sv-counts", PERIOD | {"by": "month"}),
        ("sv-flags", PERIOD),
    ):
        response = api.get(f"/v1/products/{product}", params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        answers[f"{product}?{params.get('by')}"] = (body["rows"], body["notes"])
    return answers


def test_main_code_is_the_part_before_the_separator() -> None:
    assert [main_code(code, "/") for code in ("1/1", "64", "8N/12", "105A")] == [
        "1",
        "64",
        "8N",
        "105A",
    ]


@pytest.mark.parametrize("code", [*SUB_CODED, "105A", "9"])
def test_the_police_contract_accepts_codes_with_and_without_sub_codes(code: str) -> None:
    import re

    spec = load_contract(default_contracts_dir() / "police.occurrences.yaml").field(
        "ho_offence_code"
    )
    assert spec.pattern is not None and re.fullmatch(spec.pattern, code)
    assert spec.subcode_separator == "/"


@pytest.mark.parametrize("code", ["064", "64/", "/1", "64/1/2", "64-1", "8n", "1234"])
def test_the_police_contract_refuses_malformed_codes(code: str) -> None:
    import re

    spec = load_contract(default_contracts_dir() / "police.occurrences.yaml").field(
        "ho_offence_code"
    )
    assert spec.pattern is not None and not re.fullmatch(spec.pattern, code)


def test_sub_codes_count_like_their_main_codes_for_an_unsuppressed_reader(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    police = token_for(make_client())
    analyst = token_for(make_client(org="vru", roles=("l1_analyst",)))
    rows = _rows()
    sub_coded = _with_sub_codes(rows)
    assert {row["ho_offence_code"] for row in sub_coded} >= set(SUB_CODED)

    _push(api, police, rows)
    plain = _answers(api, analyst)
    accepted = _push(api, police, sub_coded)
    assert accepted["rows"] == len(rows)
    coded = _answers(api, analyst)

    assert coded == plain
    # Riot and violent disorder are serious violence by their code: "64/1" and "65/2" count.
    by_group = coded["sv-counts?csp,hmic_group"][0]
    riot_and_disorder = sum(row["count"] for row in by_group if row["hmic_group"] == "8")
    expected = len(
        {
            row["occurrence_ref"]
            for row in sub_coded
            if row["hmic_group"] == "8" and row["ho_offence_code"] in ("64/1", "65/2")
        }
    )
    assert riot_and_disorder == expected > 0

    # The dataset keeps the codes as the partner recorded them.
    with platform.sessions() as session:
        info = storage_service.current_version(session, platform.storage, "police.occurrences")
    assert info is not None
    stored = pa.concat_tables([pq.read_table(path) for path in info.files])
    assert {"64/1", "65/2", "1/1", "37/1", "4/1"} <= set(
        stored.column("ho_offence_code").to_pylist()
    )
