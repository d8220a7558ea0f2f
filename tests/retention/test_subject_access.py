"""A subject access request through the API: an IG lead gives a person's identifying values and
gets which datasets and versions hold rows about them (values only from their own
organisation's data), the Level 3 products that listed them and the reads that returned them;
the answer is audited with the kinds of identifier given, never their values."""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.audit.models import AuditEvent
from services.platform import Platform
from services.retention.subject_access import (
    CSV_COLUMNS,
    SubjectAccessDeps,
    _Dataset,
    _read,
)
from services.storage.objects import LocalStore
from services.storage.service import Storage
from tests.fixtures.app import MakeClient, TokenFor
from tests.fixtures.snapshots import Loading, Snapshot, Snapshots, starting_from
from tests.products.test_engine import occ, police_rows, to_csv
from tests.products.test_level3 import (
    ALL_AREAS,
    AS_OF,
    PURPOSE,
    A,
    entry_rows,
    exclusion_rows,
    occurrences,
    police,
)

POLICE = "police.occurrences"
EDUCATION = "education.exclusions"
YOUTH = "youth_justice.first_time_entrants"
POLICE_ORG = "hampshire-constabulary"
EDUCATION_ORG = "hampshire-cc"
URL = "/v1/subject-access"

# A's police rows: four offences and one after the Level 3 date in the first version, and one
# more appended in the second (which holds the first version's file and the new one).
A_OFFENCES = {"L01", "L02", "L03", "L04", "L99"}
APPENDED = "L98"
BY_NAME = {"surname": A.surname, "forename": A.forename, "dob": A.dob}
BY_REF = {"identifiers": {"suspect_nominal_ref": A.ref}}


def load(loading: Loading) -> None:
    def push(owner: str, dataset: str, body: bytes, mode: str = "replace") -> None:
        response = loading.api.post(
            f"/v1/datasets/{dataset}/uploads",
            params={"mode": mode},
            content=body,
            headers={
                "Authorization": f"Bearer {loading.token_for(loading.make_client(org=owner))}",
                "Content-Type": "text/csv",
                "Idempotency-Key": str(uuid.uuid4()),
            },
        )
        assert response.status_code == 201, response.text

    push(POLICE_ORG, POLICE, to_csv(police(occurrences())))
    push(EDUCATION_ORG, EDUCATION, to_csv(exclusion_rows()))
    push("yjs-hampshire", YOUTH, to_csv(entry_rows()))
    later = occ(APPENDED, "2024-06-25 09:00:00", "3b", "34B", suspects=[A])
    push(POLICE_ORG, POLICE, to_csv(police_rows([later])), mode="append")


@pytest.fixture(scope="session")
def subject_access_data(snapshots: Snapshots) -> Snapshot[None]:
    return snapshots.take("subject-access", load)


initial_state = starting_from("subject_access_data")


@dataclass
class Env:
    api: TestClient
    platform: Platform
    make: MakeClient
    token_for: TokenFor

    def token(self, org: str, role: str = "ig_lead", areas: tuple[str, ...] = ()) -> str:
        return self.token_for(self.make(org=org, roles=(role,), areas=areas, name=f"{org} {role}"))

    def ask(self, token: str, body: dict[str, Any], fmt: str | None = None) -> Any:
        return self.api.post(
            URL,
            json=body,
            params={"format": fmt} if fmt else {},
            headers={"Authorization": f"Bearer {token}"},
        )

    def answer(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.ask(token, body)
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def events(self, action: str) -> list[AuditEvent]:
        with self.platform.sessions() as session:
            return list(
                session.execute(
                    select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
                ).scalars()
            )


@pytest.fixture
def env(
    api: TestClient,
    platform: Platform,
    make_client: MakeClient,
    token_for: TokenFor,
    subject_access_data: Snapshot[None],
    loading: Loading,
) -> Env:
    subject_access_data.value_in(loading)
    return Env(api, platform, make_client, token_for)


def _datasets(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["dataset"]: item for item in document["datasets"]}


def _fields(dataset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every field of the current version, by name, with its classification."""
    return {
        entry["field"]: entry | {"classification": level}
        for level, entries in dataset["current"]["fields"].items()
        for entry in entries
    }


def _versions(dataset: dict[str, Any]) -> dict[int, int]:
    return {v["version"]: v["rows"] for v in dataset["versions"]}


def test_the_owners_ig_lead_gets_every_version_and_the_values_of_their_own_data(env: Env) -> None:
    document = env.answer(env.token(POLICE_ORG), BY_NAME)
    assert document["held"] is True
    found = _datasets(document)
    assert set(found) == {POLICE, EDUCATION, YOUTH}
    police_found = found[POLICE]
    # Version 2 is version 1's file and the appended one: each version's rows, each file once.
    assert _versions(police_found) == {2: 6, 1: 5}
    assert police_found["stored_rows"] == 6
    assert police_found["current"] == police_found["current"] | {"version": 2, "rows": 6}
    assert police_found["values_shown"] is True
    assert police_found["matched_on"] == ["person (surname, forename, date of birth)"]
    fields = _fields(police_found)
    assert set(fields) == {f.name for f in env.platform.contracts[POLICE].fields}
    assert {name: f["classification"] for name, f in fields.items() if "suspect" in name} == {
        "suspect_nominal_ref": "level3",
        "suspect_forename": "level3",
        "suspect_surname": "level3",
        "suspect_dob": "level3",
        "suspect_gender": "level1",
    }
    assert fields["lsoa_code"]["classification"] == "level2"
    # Protected fields decrypted; plain ones as stored; every field one value per row.
    assert fields["suspect_surname"]["values"] == [A.surname] * 6
    assert fields["suspect_forename"]["values"] == [A.forename] * 6
    assert fields["suspect_dob"]["values"] == [A.dob] * 6
    assert fields["suspect_nominal_ref"]["values"] == [A.ref] * 6
    assert fields["suspect_nominal_ref"]["stored_as"] == "ciphertext"
    assert set(fields["occurrence_ref"]["values"]) == A_OFFENCES | {APPENDED}
    assert all(len(f["values"]) == 6 for f in fields.values())

    # Another organisation's data: what it is and how many rows, never a value.
    for dataset, rows in ((EDUCATION, 2), (YOUTH, 1)):
        item = found[dataset]
        assert item["values_shown"] is False
        assert _versions(item) == {1: rows} and item["current"]["rows"] == rows
        assert all("values" not in f for f in _fields(item).values())
    education = _fields(found[EDUCATION])
    assert education["surname"]["classification"] == "level3"
    assert education["pupil_upn"]["stored_as"] == "pseudonym"
    assert document["not_searched"] == []


def test_another_organisations_ig_lead_sees_police_fields_without_values(env: Env) -> None:
    document = env.answer(env.token(EDUCATION_ORG), BY_NAME)
    found = _datasets(document)
    police_found = found[POLICE]
    assert police_found["values_shown"] is False
    assert _versions(police_found) == {2: 6, 1: 5}
    assert police_found["owner"] == POLICE_ORG
    fields = _fields(police_found)
    assert fields["suspect_surname"] == {
        "field": "suspect_surname",
        "type": "string",
        "protection": "direct_identifier",
        "stored_as": "ciphertext",
        "description": fields["suspect_surname"]["description"],
        "classification": "level3",
    }
    assert all("values" not in f for f in fields.values())
    education = _fields(found[EDUCATION])
    assert found[EDUCATION]["values_shown"] is True
    # The same child written two ways, found through the cross-agency person key.
    assert sorted(education["surname"]["values"]) == ["O BRIEN", "obrien"]
    assert "values" not in education["pupil_upn"]  # kept only as a keyed pseudonym
    assert A.surname not in json.dumps(police_found)
    assert all("values" not in f for f in _fields(found[YOUTH]).values())


def test_T46_level3_products_that_listed_the_person_and_the_reads_are_listed_and_audited(
    env: Env,
) -> None:
    practitioner = env.token("vru", "l3_practitioner", ALL_AREAS)
    response = env.api.get(
        "/v1/products/repeat-suspects",
        params={"as_of": AS_OF.isoformat()},
        headers={"Authorization": f"Bearer {practitioner}", **PURPOSE},
    )
    assert response.status_code == 200, response.text
    person_id = next(r["person_id"] for r in response.json()["rows"] if r["nominal_ref"] == A.ref)

    document = env.answer(env.token(POLICE_ORG), BY_REF)
    assert document["person_ids"] == [person_id]
    assert [(p["product"], p["level"], p["reads"]) for p in document["products"]] == [
        ("repeat-suspects", 3, 1)
    ]
    (read,) = document["reads"]
    assert read["action"] == "product.read" and read["resource"] == "repeat-suspects"
    assert read["case_reference"] == PURPOSE["X-Case-Reference"]
    assert person_id in read["subjects"]
    assert document["reads_complete"] is True
    # Found by the police identifier alone: the other datasets have no such identifier.
    assert set(_datasets(document)) == {POLICE}
    assert {item["dataset"] for item in document["not_searched"]} == {EDUCATION, YOUTH}

    (event,) = env.events("subject_access.answered")
    assert event.outcome == "success"
    assert (event.resource_type, event.resource, event.resource_org) == (
        "person",
        person_id,
        POLICE_ORG,
    )
    assert event.parameters == {
        "identifiers": ["suspect_nominal_ref"],
        "name_and_dob": False,
        "format": "json",
    }
    assert event.rows == 6
    assert event.details["datasets"] == {POLICE: {"2": 6, "1": 5}}
    assert event.details["values_shown"] == [POLICE]
    assert event.details["products"] == ["repeat-suspects"]
    recorded = json.dumps([event.parameters, event.details, event.resource, event.reason])
    for value in (A.ref, A.surname, A.forename, A.dob):
        assert value not in recorded

    # The review scope applies: the read used police data only, which another
    # organisation's IG lead does not review.
    other = env.answer(env.token(EDUCATION_ORG), BY_REF)
    assert other["person_ids"] == [person_id]
    assert other["products"] == [] and other["reads"] == []


def test_the_csv_export_is_one_flat_file(env: Env) -> None:
    response = env.ask(env.token(POLICE_ORG), BY_REF, fmt="csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="subject-access.csv"' in response.headers["content-disposition"]
    lines = list(csv.DictReader(io.StringIO(response.text)))
    assert list(lines[0]) == list(CSV_COLUMNS)
    data = [line for line in lines if line["section"] == "data"]
    fields = len(env.platform.contracts[POLICE].fields)
    by_version = {
        version: [line for line in data if line["version"] == version] for version in ("1", "2")
    }
    assert {v: len(found) for v, found in by_version.items()} == {"1": fields, "2": fields}
    assert {line["rows"] for line in by_version["1"]} == {"5"}
    surname = next(line for line in by_version["2"] if line["field"] == "suspect_surname")
    assert surname["current"] == "true" and surname["classification"] == "level3"
    assert json.loads(surname["values"]) == [A.surname] * 6
    # Only the current version's values are given.
    assert all(line["values"] == "" for line in by_version["1"])
    (event,) = env.events("subject_access.answered")
    assert event.parameters["format"] == "csv"


def test_no_match_answers_that_nothing_is_held_and_is_audited(env: Env) -> None:
    body = {"identifiers": {"suspect_nominal_ref": "N999"}}
    document = env.answer(env.token(POLICE_ORG), body)
    assert document["held"] is False
    assert document["datasets"] == [] and document["person_ids"] == []
    assert document["stored_rows"] == 0
    assert "no rows" in document["summary"]
    (event,) = env.events("subject_access.answered")
    assert (event.outcome, event.resource, event.rows) == ("success", "not-found", 0)

    response = env.ask(env.token(POLICE_ORG), body, fmt="csv")
    (line,) = csv.DictReader(io.StringIO(response.text))
    assert line["section"] == "summary" and "no rows" in line["values"]


@pytest.mark.parametrize("role", ["partner_system", "l3_practitioner", "admin"])
def test_anyone_but_an_ig_lead_is_refused_and_that_is_audited(env: Env, role: str) -> None:
    response = env.ask(env.token(POLICE_ORG, role), BY_NAME)
    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN"
    (denied,) = env.events("access.denied")
    assert (denied.resource_type, denied.resource_org) == ("person", POLICE_ORG)
    assert denied.details == {"action": "subject:access"}
    assert env.events("subject_access.answered") == []


@pytest.mark.parametrize(
    ("body", "fmt", "says"),
    [
        ({"surname": A.surname, "forename": A.forename}, None, "together"),
        ({"dob": A.dob}, None, "together"),
        ({}, None, "give the person's identifiers"),
        ({"identifiers": {"suspect_nominal_ref": " "}}, None, "empty"),
        ({"identifiers": {"shoe_size": "9"}}, None, "not an identifier"),
        (BY_REF, "xml", "format is json or csv"),
    ],
)
def test_a_malformed_request_is_400_and_audited_as_rejected(
    env: Env, body: dict[str, Any], fmt: str | None, says: str
) -> None:
    response = env.ask(env.token(POLICE_ORG), body, fmt=fmt)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert says in response.json()["detail"]
    (event,) = env.events("subject_access.answered")
    assert (event.outcome, event.reason) == ("rejected", "bad_request")
    assert "9" not in json.dumps(event.parameters["identifiers"])


def test_malformed_bodies_and_parameters_are_400(env: Env) -> None:
    token = env.token(POLICE_ORG)
    for body in ({"dob": "05/05/2008"}, {"identifiers": ["N101"]}, {"name": "x"}):
        assert env.ask(token, body).status_code == 400
    response = env.api.post(
        URL,
        json=BY_REF,
        params={"person": A.ref},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 400
    assert env.ask(token, BY_REF, fmt="json").status_code == 200


def test_a_file_written_before_a_column_existed_is_read_with_that_column_empty(
    tmp_path: Path,
) -> None:
    storage = Storage(LocalStore(tmp_path))
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"a_pseudonym": ["x", "y"]}), tmp_path / "d" / "old.parquet")
    item = _Dataset("d", 1, file_rows={"d/old.parquet": 2})
    deps = cast(SubjectAccessDeps, SimpleNamespace(storage=storage))
    table = _read(deps, item, "d/old.parquet", ["a_pseudonym", "person_key"])
    assert table.column_names == ["a_pseudonym", "person_key"]
    assert table.column("a_pseudonym").to_pylist() == ["x", "y"]
    assert table.column("person_key").to_pylist() == [None, None]
