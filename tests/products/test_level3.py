"""Level 3 products against a hand-built dataset, with the answers worked out here.

The expected lists are computed in plain Python from the same rows, following domain.md (not
the products' SQL): repeat suspects with dense ranks, the previous list, districts and the
habitual knife carrier flag; the habitual knife carrier list; one person's profile across
partners, linked by name and date of birth folded for case, accents, spaces and punctuation.
Then the access rules over the API: roles, purpose and case reference, areas, quota, the audit
event, and no name or date of birth in any log line or audit event.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.audit.models import AuditEvent, AuditSubject
from services.platform import Platform
from services.products.models import HkcAssessment
from tests.fixtures.app import ClientCredentials
from tests.fixtures.snapshots import Loading, Snapshot, Snapshots, starting_from
from tests.products.test_engine import (
    Occurrence,
    Suspect,
    add_months,
    occ,
    police_rows,
    to_csv,
)

AS_OF = date(2024, 7, 1)
PURPOSE = {"X-Purpose": "high-intensity-programme", "X-Case-Reference": "HIP-2024/0042"}

A = Suspect("N101", "Zoë", "O'Brien", "2008-05-05", "F")  # rank 1; linked across partners
B = Suspect("N102", "Bo", "Bee", "2001-01-01", "M")  # knife offences all domestic
C = Suspect("N103", "Cy", "Cee", "2002-02-02", "M")  # exactly one knife offence
D = Suspect("N104", "Di", "Dee", "2003-03-03", "F")  # on the previous list only, later
E = Suspect("N105", "Ed", "Eee", "1999-09-09", "M")  # many offences, none in the last 6 months
F = Suspect("N106", "Fi", "Eff", "2004-04-04", "F")  # district tie: the most recent wins
G = Suspect("N107", "Gil", "Gee", "2005-05-05", "M")  # one offence, bottom rank
H = Suspect("N108", "Hal", "Aitch", "1998-08-08", "M")  # a carrier, no recent serious violence
PEOPLE = (A, B, C, D, E, F, G, H)
SECRET_TEXT = [
    *(p.forename for p in PEOPLE),
    *(p.surname for p in PEOPLE),
    *(p.dob for p in PEOPLE),
    *(p.ref for p in PEOPLE),
]


def occurrences() -> list[Occurrence]:
    items = [
        # A: four serious-violence offences in the 12 months (three incidents), two knife
        # possession offences (a habitual knife carrier), mostly in Portsmouth.
        occ("L01", "2023-08-01 10:00:00", "3b", "34B", suspects=[A]),
        occ("L02", "2023-08-01 10:05:00", "3b", "34B", suspects=[A]),
        occ("L03", "2024-02-01 10:00:00", "7", "10C", suspects=[A]),
        occ("L04", "2024-05-01 10:00:00", "7", "10D", "Southampton", suspects=[A]),
        # B and C on one occurrence (two suspects), then each on their own.
        occ("L10", "2024-03-01 12:00:00", "3b", "34B", "Southampton", suspects=[B, C]),
        # B: knife offences, all domestic (serious violence, never HKC offences).
        *[
            occ(
                f"L1{i}",
                f"2024-0{i + 1}-10 20:00:00",
                "1b",
                "8N",
                "Southampton",
                flags={"bladed_implement", "domestic"},
                suspects=[B],
            )
            for i in range(1, 3)
        ],
        # C: exactly one knife offence, and one robbery.
        occ("L20", "2024-04-15 09:00:00", "7", "10C", "Southampton", suspects=[C]),
        occ("L21", "2023-09-15 09:00:00", "3b", "34B", "Southampton", suspects=[C]),
        # D: three offences a year ago (on the list as of three months earlier), one recent.
        occ("L30", "2023-05-01 09:00:00", "3b", "34B", "Gosport", suspects=[D]),
        occ("L31", "2023-06-01 09:00:00", "3b", "34B", "Gosport", suspects=[D]),
        occ("L32", "2023-11-01 09:00:00", "3b", "34B", "Gosport", suspects=[D]),
        occ("L33", "2024-06-01 09:00:00", "3b", "34B", "Gosport", suspects=[D]),
        # E: five offences, none in the last six months: not on the list.
        *[
            occ(f"L4{i}", f"2023-0{i + 7}-0{i + 1} 09:00:00", "3b", "34B", suspects=[E])
            for i in range(0, 2)
        ],
        *[
            occ(f"L4{i}", f"2023-1{i - 2}-0{i + 1} 09:00:00", "3b", "34B", suspects=[E])
            for i in range(2, 5)
        ],
        # F: one offence in Gosport, one later in Havant: Havant is the district.
        occ("L50", "2023-10-01 09:00:00", "3b", "34B", "Gosport", suspects=[F]),
        occ("L51", "2024-03-01 09:00:00", "3b", "34B", "Havant", suspects=[F]),
        # G: one recent offence.
        occ("L60", "2024-06-20 09:00:00", "3b", "34B", "Havant", suspects=[G]),
        # H: knife possession twice (a carrier), no serious violence in the last 6 months ...
        occ("L70", "2023-03-01 09:00:00", "7", "10C", "Winchester", suspects=[H], lsoa="E01016001"),
        occ("L71", "2023-08-01 09:00:00", "7", "10C", "Winchester", suspects=[H], lsoa="E01016001"),
        # ... and something after as_of, which changes nothing.
        occ("L99", "2024-07-01 00:00:00", "3b", "34B", suspects=[A, G]),
    ]
    return items


# Offences that share an incident (every other offence is an incident of its own).
INCIDENTS = {"L01": "I1", "L02": "I1", "L03": "I2", "L04": "I3"}


def incident_of(item: Occurrence) -> str:
    return INCIDENTS.get(item.ref, f"INC-{item.ref}")


def police(items: list[Occurrence]) -> list[dict[str, str]]:
    rows = police_rows(items)
    for row in rows:
        row["incident_ref"] = INCIDENTS.get(row["occurrence_ref"], row["incident_ref"])
    return rows


# ---------------------------------------------------------------------------------------------
# The rules, in plain Python


def serious(item: Occurrence) -> bool:
    return (
        item.msv
        or item.hmic in ("3a", "3b", "7")
        or (item.hmic == "8" and item.code in ("64", "65"))
        or (item.hmic == "1b" and "bladed_implement" in item.flags)
    )


def at(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time())


def district(ref: str, as_of: date) -> str | None:
    start, end = at(add_months(as_of, -12)), at(as_of)
    counts: dict[str, int] = defaultdict(int)
    latest: dict[str, datetime] = {}
    last: tuple[datetime, str] | None = None
    for item in occurrences():
        if not any(p.ref == ref for p, _ in item.suspects) or item.when >= end:
            continue
        if last is None or item.when > last[0]:
            last = (item.when, item.csp)
        if serious(item) and item.when >= start:
            counts[item.csp] += 1
            latest[item.csp] = max(latest.get(item.csp, item.when), item.when)
    if counts:
        return sorted(counts, key=lambda csp: (-counts[csp], -latest[csp].timestamp(), csp))[0]
    return last[1] if last else None


def carriers(as_of: date) -> dict[str, dict[str, Any]]:
    lookback, recent, end = at(add_months(as_of, -24)), at(add_months(as_of, -12)), at(as_of)
    refs: dict[str, set[str]] = defaultdict(set)
    recent_refs: dict[str, set[str]] = defaultdict(set)
    last: dict[str, datetime] = {}
    for item in occurrences():
        knife = (item.hmic == "7" or "bladed_implement" in item.flags) and (
            "domestic" not in item.flags
        )
        if not knife or not (lookback <= item.when < end):
            continue
        for person, _ in item.suspects:
            refs[person.ref].add(item.ref)
            last[person.ref] = max(last.get(person.ref, item.when), item.when)
            if item.when >= recent:
                recent_refs[person.ref].add(item.ref)
    return {
        ref: {"offences": len(found), "last": last[ref].date()}
        for ref, found in refs.items()
        if len(found) > 1 and recent_refs[ref]
    }


def ranked(as_of: date, max_rank: int) -> dict[str, dict[str, Any]]:
    start, recent, end = (
        at(add_months(as_of, -12)),
        at(add_months(as_of, -6)),
        at(as_of),
    )
    offences: dict[str, set[str]] = defaultdict(set)
    incidents: dict[str, set[str]] = defaultdict(set)
    is_recent: dict[str, bool] = defaultdict(bool)
    for item in occurrences():
        if not serious(item) or not (start <= item.when < end):
            continue
        for person, _ in item.suspects:
            offences[person.ref].add(item.ref)
            incidents[person.ref].add(incident_of(item))
            is_recent[person.ref] |= item.when >= recent
    eligible = {ref: len(found) for ref, found in offences.items() if is_recent[ref]}
    distinct = sorted(set(eligible.values()), reverse=True)
    result = {}
    for ref, count in eligible.items():
        rank = distinct.index(count) + 1
        if rank <= max_rank:
            result[ref] = {"rank": rank, "offences": count, "incidents": len(incidents[ref])}
    return result


def expected_repeat_suspects(as_of: date, max_rank: int) -> dict[str, dict[str, Any]]:
    now = ranked(as_of, max_rank)
    then = ranked(add_months(as_of, -3), max_rank)
    hkc = carriers(as_of)
    by_ref = {p.ref: p for p in PEOPLE}
    expected = {}
    for ref, row in now.items():
        person = by_ref[ref]
        previous = then.get(ref)
        expected[ref] = {
            **row,
            "nominal_ref": ref,
            "forename": person.forename,
            "surname": person.surname,
            "dob": person.dob,
            "district": district(ref, as_of),
            "hkc": ref in hkc,
            "previous_rank": previous["rank"] if previous else None,
            "rank_change": previous["rank"] - row["rank"] if previous else None,
            "on_previous_list": previous is not None,
        }
    return expected


# ---------------------------------------------------------------------------------------------
# Data in, through the API


EXCLUSIONS = [
    # The same child written differently: case, accents, spacing and punctuation.
    ("EX1", "zoe", "obrien", "2008-05-05", "Portsmouth", "suspension", "2023-10-02", "4"),
    ("EX2", "ZOË ", "O BRIEN", "2008-05-05", "Portsmouth", "permanent", "2024-01-08", ""),
    # Same name, a different date of birth: someone else.
    ("EX3", "Zoë", "O'Brien", "2008-05-06", "Portsmouth", "suspension", "2024-02-05", "2"),
]
ENTRIES = [
    ("FTE-1", "Zoe", "O'Brien", "2008-05-05", "Portsmouth", "2024-03-03", "referral_order", "3b"),
    ("FTE-2", "Zoe", "O'Brien", "2007-05-05", "Portsmouth", "2024-03-04", "youth_caution", "7"),
]


def exclusion_rows() -> list[dict[str, str]]:
    return [
        {
            "exclusion_ref": ref,
            "pupil_upn": "",
            "forename": forename,
            "surname": surname,
            "dob": dob,
            "school_urn": "123456",
            "csp": csp,
            "exclusion_type": kind,
            "start_date": start,
            "sessions": sessions,
        }
        for ref, forename, surname, dob, csp, kind, start, sessions in EXCLUSIONS
    ]


def entry_rows() -> list[dict[str, str]]:
    return [
        {
            "entry_ref": ref,
            "yjs": "yjs-portsmouth",
            "forename": forename,
            "surname": surname,
            "dob": dob,
            "gender": "F",
            "csp": csp,
            "entry_date": day,
            "outcome": outcome,
            "offence_group": group,
        }
        for ref, forename, surname, dob, csp, day, outcome, group in ENTRIES
    ]


@dataclass
class Env:
    api: TestClient
    platform: Platform
    token: Callable[..., str]

    def read(
        self,
        product: str,
        token: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        query = dict(params or {})
        # A person's id travels in a header, never in the URL (proxies log URLs).
        person = {"X-Person-Id": query.pop("person_id")} if "person_id" in query else {}
        return self.api.get(
            f"/v1/products/{product}",
            params={"as_of": AS_OF.isoformat(), **query} if product != "person-profile" else query,
            headers={"Authorization": f"Bearer {token}", **person, **(headers or {})},
        )

    def rows(self, product: str, token: str, params: dict[str, str] | None = None) -> Any:
        response = self.read(product, token, params, PURPOSE)
        assert response.status_code == 200, response.text
        return response.json()["rows"]

    def events(self, action: str) -> list[AuditEvent]:
        with self.platform.sessions() as session:
            return list(
                session.execute(
                    select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
                ).scalars()
            )


def load_level3_data(loading: Loading) -> None:
    def push(owner: str, dataset: str, rows: list[dict[str, str]]) -> None:
        response = loading.api.post(
            f"/v1/datasets/{dataset}/uploads",
            params={"mode": "replace"},
            content=to_csv(rows),
            headers={
                "Authorization": f"Bearer {loading.token_for(loading.make_client(org=owner))}",
                "Content-Type": "text/csv",
                "Idempotency-Key": str(uuid.uuid4()),
            },
        )
        assert response.status_code == 201, response.text

    push("hampshire-constabulary", "police.occurrences", police(occurrences()))
    push("hampshire-cc", "education.exclusions", exclusion_rows())
    push("yjs-hampshire", "youth_justice.first_time_entrants", entry_rows())


@pytest.fixture(scope="session")
def level3_data(snapshots: Snapshots) -> Snapshot[None]:
    return snapshots.take("products-level3", load_level3_data)


# Every test here starts from a copy of the loaded data.
initial_state = starting_from("level3_data")


@pytest.fixture
def env(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
    level3_data: Snapshot[None],
    loading: Loading,
) -> Env:
    level3_data.value_in(loading)

    def token(role: str = "l3_practitioner", areas: tuple[str, ...] = (), org: str = "vru") -> str:
        return token_for(make_client(org=org, roles=(role,), areas=areas))

    return Env(api, platform, token)


ALL_AREAS = ("Portsmouth", "Southampton", "Gosport", "Havant", "Winchester")


# ---------------------------------------------------------------------------------------------
# The products


def by_ref(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["nominal_ref"]: row for row in rows}


def test_repeat_suspects_match_an_independent_calculation(env: Env) -> None:
    token = env.token(areas=ALL_AREAS)
    expected = expected_repeat_suspects(AS_OF, 7)
    # The cases the issue names, checked against the calculation before trusting it.
    assert expected["N101"]["rank"] == 1 and expected["N101"]["incidents"] == 3
    assert expected["N102"]["rank"] == expected["N103"]["rank"] == 2  # a tie shares a rank
    assert "N105" not in expected  # many offences, none in the last six months
    assert expected["N106"]["district"] == "Havant"  # the tie goes to the most recent
    assert expected["N101"]["hkc"] and not expected["N102"]["hkc"]
    assert not expected["N103"]["hkc"]
    assert expected["N104"]["on_previous_list"] and not expected["N107"]["on_previous_list"]
    got = by_ref(env.rows("repeat-suspects", token))
    assert set(got) == set(expected)
    for ref, row in expected.items():
        for name, value in row.items():
            assert got[ref][name] == value, (ref, name)
        assert len(got[ref]["person_id"]) == 32
    # Dense ranks: 1, 2, 2, 3, ... with no gaps.
    ranks = sorted({row["rank"] for row in got.values()})
    assert ranks == list(range(1, len(ranks) + 1))


@pytest.mark.parametrize("max_rank", [1, 2, 3])
def test_repeat_suspects_cut_off(env: Env, max_rank: int) -> None:
    token = env.token(areas=ALL_AREAS)
    got = by_ref(env.rows("repeat-suspects", token, {"max_rank": str(max_rank)}))
    expected = expected_repeat_suspects(AS_OF, max_rank)
    assert {ref: row["rank"] for ref, row in got.items()} == {
        ref: row["rank"] for ref, row in expected.items()
    }
    assert {ref: row["previous_rank"] for ref, row in got.items()} == {
        ref: row["previous_rank"] for ref, row in expected.items()
    }


def test_habitual_knife_carriers_and_the_summary_agree(env: Env) -> None:
    token = env.token(areas=ALL_AREAS)
    expected = carriers(AS_OF)
    assert set(expected) == {"N101", "N108"}  # not B (domestic), not C (one offence)
    got = by_ref(env.rows("habitual-knife-carriers", token))
    assert set(got) == set(expected)
    for ref, row in expected.items():
        assert got[ref]["qualifying_offences"] == row["offences"]
        assert got[ref]["last_offence_date"] == row["last"].isoformat()
        assert got[ref]["rag"] is None and got[ref]["lead_agency"] is None
    assert got["N101"]["age"] == 16 and got["N101"]["gender"] == "F"
    assert got["N101"]["forename"] == "Zoë" and got["N101"]["dob"] == "2008-05-05"
    # The Level 1 summary counts the same list.
    summary = env.rows("hkc-summary", env.token("l1_analyst"))
    measures = {row["measure"]: row["value"] for row in summary}
    assert measures["total"] == len(got)
    assert measures["male"] == sum(1 for row in got.values() if row["gender"] == "M")
    # person ids agree across products.
    suspects = by_ref(env.rows("repeat-suspects", token))
    assert got["N101"]["person_id"] == suspects["N101"]["person_id"]


def test_person_profile_links_across_partners(env: Env) -> None:
    token = env.token(areas=ALL_AREAS)
    person = by_ref(env.rows("repeat-suspects", token))["N101"]["person_id"]
    rows = env.rows("person-profile", token, {"person_id": person})
    references = {(row["source"], row["reference"]) for row in rows}
    assert references == {
        ("police.occurrences", "L01"),
        ("police.occurrences", "L02"),
        ("police.occurrences", "L03"),
        ("police.occurrences", "L04"),
        ("police.occurrences", "L99"),
        # Case, accents, spaces and punctuation do not matter ...
        ("education.exclusions", "EX1"),
        ("education.exclusions", "EX2"),
        ("youth_justice.first_time_entrants", "FTE-1"),
        # ... a different date of birth does (EX3, FTE-2 are someone else).
    }
    assert {row["person_id"] for row in rows} == {person}
    assert {row["surname"] for row in rows} == {"O'Brien"}
    dates = [row["date"] for row in rows]
    assert dates == sorted(dates)
    # An unknown person id is nobody.
    assert env.rows("person-profile", token, {"person_id": "0" * 32}) == []


# ---------------------------------------------------------------------------------------------
# Access


ROLES = ("partner_system", "l1_reader", "l1_analyst", "l2_reader", "l3_practitioner", "ig_lead")
LEVEL3 = ("repeat-suspects", "habitual-knife-carriers", "person-profile")


@pytest.mark.parametrize("role", (*ROLES, "admin"))
def test_level3_truth_table(env: Env, role: str) -> None:
    areas = ALL_AREAS if role in ("l2_reader", "l3_practitioner") else ()
    token = env.token(role, areas)
    person = "0" * 32
    cases = {
        "both": PURPOSE,
        "no purpose": {"X-Case-Reference": PURPOSE["X-Case-Reference"]},
        "no case": {"X-Purpose": PURPOSE["X-Purpose"]},
        "unknown purpose": {**PURPOSE, "X-Purpose": "curiosity"},
        "bad case": {**PURPOSE, "X-Case-Reference": "Zoe O'Brien"},
        "neither": {},
    }
    for product in LEVEL3:
        params = {"person_id": person} if product == "person-profile" else {}
        for case, headers in cases.items():
            for fmt in ("json", "csv", "parquet"):
                denied = len(env.events("access.denied"))
                response = env.read(product, token, {**params, "format": fmt}, headers)
                if role == "l3_practitioner" and case == "both":
                    assert response.status_code == 200, (product, case, fmt, response.text)
                else:
                    assert response.status_code == 403, (role, product, case, fmt)
                    assert response.headers["content-type"].startswith("application/problem")
                    assert len(env.events("access.denied")) == denied + 1
    listed = {
        p["id"]
        for p in env.api.get("/v1/products", headers={"Authorization": f"Bearer {token}"}).json()[
            "products"
        ]
    }
    assert bool(listed & set(LEVEL3)) == (role == "l3_practitioner")


def test_rows_are_limited_to_the_readers_areas(env: Env) -> None:
    expected = expected_repeat_suspects(AS_OF, 7)
    for areas in (("Portsmouth",), ("Gosport",), ("Havant", "Southampton"), ("Hart",)):
        token = env.token(areas=areas)
        got = by_ref(env.rows("repeat-suspects", token))
        assert set(got) == {ref for ref, row in expected.items() if row["district"] in areas}
        carriers_in = by_ref(env.rows("habitual-knife-carriers", token))
        assert all(row["district"] in areas for row in carriers_in.values())
    # F offended in Gosport but lives in Havant's list: a Gosport practitioner never sees F.
    gosport = by_ref(env.rows("repeat-suspects", env.token(areas=("Gosport",))))
    assert "N106" not in gosport and "N104" in gosport
    # A person outside one's areas has no profile.
    everyone = by_ref(env.rows("repeat-suspects", env.token(areas=ALL_AREAS)))
    outside = everyone["N106"]["person_id"]
    assert env.rows("person-profile", env.token(areas=("Gosport",)), {"person_id": outside}) == []


def test_a_level3_read_is_audited_with_purpose_case_and_people(env: Env) -> None:
    token = env.token(areas=("Portsmouth", "Southampton"))
    rows = env.rows("repeat-suspects", token)
    event = env.events("product.read")[-1]
    assert event.level == 3 and event.resource == "repeat-suspects"
    assert event.purpose == PURPOSE["X-Purpose"]
    assert event.case_reference == PURPOSE["X-Case-Reference"]
    assert event.rows == len(rows)
    assert event.details["districts"] == sorted({row["district"] for row in rows})
    with env.platform.sessions() as session:
        subjects = set(
            session.execute(
                select(AuditSubject.person_id).where(AuditSubject.event_seq == event.seq)
            ).scalars()
        )
    assert subjects == {row["person_id"] for row in rows} and subjects


def test_quota_refuses_and_audits_beyond_the_limit(env: Env) -> None:
    env.platform.products.level3_daily_quota = 2
    token = env.token(areas=ALL_AREAS)
    assert env.read("habitual-knife-carriers", token, headers=PURPOSE).status_code == 200
    assert env.read("repeat-suspects", token, headers=PURPOSE).status_code == 200
    for _ in range(2):
        refused = env.read("repeat-suspects", token, headers=PURPOSE)
        assert refused.status_code == 429
        assert refused.json()["code"] == "QUOTA_EXCEEDED"
        assert int(refused.headers["Retry-After"]) > 0
        assert "rows" not in refused.json()
    events = env.events("quota.exceeded")
    assert len(events) == 2 and all(e.outcome == "denied" for e in events)
    assert events[0].purpose == PURPOSE["X-Purpose"]
    # Another practitioner has a quota of their own.
    other = env.token(areas=ALL_AREAS)
    assert env.read("repeat-suspects", other, headers=PURPOSE).status_code == 200


def test_assessments_keep_history_and_show_the_latest(env: Env) -> None:
    token = env.token(areas=ALL_AREAS)
    person = by_ref(env.rows("habitual-knife-carriers", token))["N101"]["person_id"]
    path = "/v1/products/habitual-knife-carriers/assessments"
    auth = {"Authorization": f"Bearer {token}", **PURPOSE}
    first = env.api.put(
        path,
        json={
            "person_id": person,
            "rag": "red",
            "lead_agency": "yjs-portsmouth",
            "as_of": "2024-07-01",
        },
        headers=auth,
    )
    assert first.status_code == 200, first.text
    assert first.json()["previous"] is None
    second = env.api.put(
        path,
        json={"person_id": person, "rag": "amber", "lead_agency": "vru", "as_of": "2024-07-01"},
        headers=auth,
    )
    assert second.json()["previous"] == {"rag": "red", "lead_agency": "yjs-portsmouth"}
    row = by_ref(env.rows("habitual-knife-carriers", token))["N101"]
    assert (row["rag"], row["lead_agency"]) == ("amber", "vru")
    with env.platform.sessions() as session:
        history = session.execute(select(HkcAssessment).order_by(HkcAssessment.id)).scalars().all()
        assert [(h.rag, h.previous_rag) for h in history] == [("red", None), ("amber", "red")]
        assert history[1].graded_by_org == "vru" and history[1].case_reference == "HIP-2024/0042"
    events = env.events("assessment.recorded")
    assert len(events) == 2 and events[1].details["previous_rag"] == "red"
    # Refusals: bad values, no purpose, a role that may not grade, a person not on the list or
    # outside one's areas (the same 404).
    assert (
        env.api.put(
            path, json={"person_id": person, "rag": "pink", "lead_agency": "vru"}, headers=auth
        ).status_code
        == 400
    )
    assert (
        env.api.put(
            path, json={"person_id": person, "rag": "red", "lead_agency": "nobody"}, headers=auth
        ).status_code
        == 400
    )
    no_purpose = {"Authorization": f"Bearer {token}"}
    assert (
        env.api.put(
            path, json={"person_id": person, "rag": "red", "lead_agency": "vru"}, headers=no_purpose
        ).status_code
        == 403
    )
    reader = {"Authorization": f"Bearer {env.token('l1_analyst')}", **PURPOSE}
    assert (
        env.api.put(
            path, json={"person_id": person, "rag": "red", "lead_agency": "vru"}, headers=reader
        ).status_code
        == 403
    )
    not_carrier = by_ref(env.rows("repeat-suspects", token))["N103"]["person_id"]
    elsewhere = {"Authorization": f"Bearer {env.token(areas=('Hart',))}", **PURPOSE}
    for target, headers in ((not_carrier, auth), (person, elsewhere)):
        response = env.api.put(
            path,
            json={"person_id": target, "rag": "green", "lead_agency": "vru", "as_of": "2024-07-01"},
            headers=headers,
        )
        assert response.status_code == 404
    # The person id travels in the body only (T45): the old path with the id is not served.
    old = env.api.put(f"{path}/{person}", json={"rag": "red", "lead_agency": "vru"}, headers=auth)
    assert old.status_code in (404, 405)
    with env.platform.sessions() as session:
        assert len(session.execute(select(HkcAssessment)).scalars().all()) == 2


def test_formats_carry_the_names_only_to_the_permitted_reader(env: Env) -> None:
    token = env.token(areas=ALL_AREAS)
    csv_text = env.read("repeat-suspects", token, {"format": "csv"}, PURPOSE).text
    assert "O'Brien" in csv_text and "2008-05-05" in csv_text
    body = env.read("repeat-suspects", token, {"format": "parquet"}, PURPOSE).content
    table = pq.read_table(io.BytesIO(body))
    assert "Zoë" in table.column("forename").to_pylist()


@pytest.fixture
def every_log_line(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


def test_no_name_or_date_of_birth_in_logs_or_audit(
    env: Env, every_log_line: pytest.LogCaptureFixture
) -> None:
    token = env.token(areas=ALL_AREAS)
    people = env.rows("repeat-suspects", token)
    env.rows("habitual-knife-carriers", token)
    for row in people:
        env.rows("person-profile", token, {"person_id": row["person_id"]})
    env.read("repeat-suspects", token, headers={"X-Purpose": "nosy"})
    env.api.put(
        "/v1/products/habitual-knife-carriers/assessments",
        json={"person_id": people[0]["person_id"], "rag": "red", "lead_agency": "vru"},
        headers={"Authorization": f"Bearer {token}", **PURPOSE},
    )
    logged = "\n".join(record.getMessage() for record in every_log_line.records)
    with env.platform.sessions() as session:
        audit = "\n".join(session.execute(select(AuditEvent.canonical)).scalars())
    assert "product.read" in audit
    for secret in SECRET_TEXT:
        assert secret not in logged, secret
        assert secret not in audit, secret


def test_T45_a_person_id_in_the_url_is_refused_and_audited(env: Env) -> None:
    """A person's id in a query string would reach proxies' logs: it is refused (400, nothing
    read, the refusal audited) and the same id in the X-Person-Id header is answered."""
    token = env.token(areas=ALL_AREAS)
    person = by_ref(env.rows("habitual-knife-carriers", token))["N101"]["person_id"]
    refused_before = len(env.events("product.refused"))
    response = env.api.get(
        "/v1/products/person-profile",
        params={"person_id": person},
        headers={"Authorization": f"Bearer {token}", **PURPOSE},
    )
    assert response.status_code == 400, response.text
    assert "X-Person-Id" in response.json()["detail"] and person not in response.text
    refused = env.events("product.refused")[refused_before:]
    assert [event.reason for event in refused] == ["identifier_in_url"]
    assert env.rows("person-profile", token, {"person_id": person})


def test_latest_record_and_district_ties_over_records_at_the_same_time(env: Env) -> None:
    """Two offences at the same moment: the later occurrence reference gives the person's
    name, date of birth and gender; equal counts and equal last times in two areas give the
    district that sorts first. The list (as of a date) reads these people through a join; the
    profile (as of today, with no serious violence in the 12 months before it) reads the whole
    people table by person id and gives the area of the latest record."""
    old = Suspect("N201", "Ann", "Old", "2000-01-01", "F")
    new = Suspect("N201", "Anne", "New", "2000-01-02", "M")
    other = Suspect("N202", "Bo", "Bee", "2001-01-01", "M")
    items = [
        occ("L80", "2024-05-01 10:00:00", "3b", "34B", "Havant", suspects=[old]),
        occ("L81", "2024-05-01 10:00:00", "3b", "34B", "Portsmouth", suspects=[new]),
        occ("L82", "2024-05-02 10:00:00", "3b", "34B", "Gosport", suspects=[other]),
    ]
    response = env.api.post(
        "/v1/datasets/police.occurrences/uploads",
        params={"mode": "replace"},
        content=to_csv(police(items)),
        headers={
            "Authorization": f"Bearer {env.token('partner_system', org='hampshire-constabulary')}",
            "Content-Type": "text/csv",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert response.status_code == 201, response.text
    token = env.token(areas=ALL_AREAS)
    listed = by_ref(env.rows("repeat-suspects", token))
    assert set(listed) == {"N201", "N202"}
    person = listed["N201"]
    assert (person["forename"], person["surname"], person["dob"]) == ("Anne", "New", "2000-01-02")
    assert person["district"] == "Havant"
    profile = env.rows("person-profile", token, {"person_id": person["person_id"]})
    assert {row["reference"] for row in profile} == {"L80", "L81"}
    for row in profile:
        assert (row["forename"], row["district"]) == ("Anne", "Portsmouth")
