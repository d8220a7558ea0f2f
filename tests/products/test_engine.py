"""Every product against a small police dataset built by hand, with answers worked out here.

The expected answers are computed in plain Python from the same rows, following the rules of
the domain document (not the products' SQL), and compared with ``compute.run`` unsuppressed.
Suppression is then checked on small datasets made for it, and on demo data for the weekday x
hour table. Data goes in through the upload API, as partners push it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import h3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from fastapi.testclient import TestClient

from services.demo.generate import POLICE_FIELDS
from services.kit.errors import Forbidden
from services.kit.partnership import CSP_AREAS
from services.platform import Platform
from services.products import carriers, compute, engine, formats, people
from services.products.config import load_partnership, parse_partnership
from services.products.definition import ProductDefinition
from services.products.engine import ProductResult
from services.products.loading import load_catalogue
from services.products.parameters import parse_parameters
from services.storage import service as storage_service
from services.storage.service import VersionInfo
from tests.fixtures.app import ClientCredentials
from tests.fixtures.snapshots import Loading, Snapshot, Snapshots, starting_from

DEFINITIONS = Path(__file__).resolve().parents[2] / "services" / "products" / "definitions"

PERIOD = ("2023-04-01", "2024-04-01")
COMPARISON = ("2022-04-01", "2023-04-01")
AS_OF = date(2024, 4, 1)

FLAGS = (
    "public_place",
    "bladed_implement",
    "domestic",
    "licensed_premises",
    "alcohol",
    "drugs",
    "hate_crime",
)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

# Pretend LSOAs: code -> (CSP, latitude, longitude, IMD decile).
LSOAS: dict[str, tuple[str, float, float, int]] = {
    "E01017001": ("Portsmouth", 50.800, -1.080, 1),
    "E01017002": ("Portsmouth", 50.820, -1.060, 3),
    "E01018001": ("Southampton", 50.910, -1.400, 2),
    "E01019001": ("Gosport", 50.795, -1.150, 6),
    "E01016001": ("Havant", 50.860, -0.985, 9),
}
HOME: dict[str, str] = {
    "Portsmouth": "E01017001",
    "Southampton": "E01018001",
    "Gosport": "E01019001",
    "Havant": "E01016001",
}


# ---------------------------------------------------------------------------------------------
# The hand-built dataset


@dataclass(frozen=True)
class Suspect:
    ref: str
    forename: str
    surname: str
    dob: str
    gender: str | None


@dataclass
class Occurrence:
    ref: str
    at: str
    hmic: str
    code: str
    csp: str = "Portsmouth"
    lsoa: str | None = None
    msv: bool = False
    flags: frozenset[str] = frozenset()
    victim_gender: str | None = "M"
    relationship: str = "stranger"
    suspects: list[tuple[Suspect, str | None]] = field(default_factory=list)
    offset: float = 0.0  # moves the point a little inside its LSOA

    @property
    def when(self) -> datetime:
        return datetime.fromisoformat(self.at)

    @property
    def area(self) -> str:
        return self.lsoa or HOME[self.csp]

    @property
    def point(self) -> tuple[float, float]:
        _, latitude, longitude, _ = LSOAS[self.area]
        return round(latitude + self.offset, 5), round(longitude - self.offset, 5)


def occ(
    ref: str,
    at: str,
    hmic: str,
    code: str,
    csp: str = "Portsmouth",
    *,
    msv: bool = False,
    flags: Iterable[str] = (),
    suspects: Iterable[Suspect | tuple[Suspect, str | None]] = (),
    **extra: Any,
) -> Occurrence:
    people = [s if isinstance(s, tuple) else (s, s.gender) for s in suspects]
    return Occurrence(
        ref, at, hmic, code, csp, msv=msv, flags=frozenset(flags), suspects=people, **extra
    )


P1 = Suspect("N001", "Adam", "One", "2006-04-01", "M")  # exactly 18 on AS_OF
P2 = Suspect("N002", "Bea", "Two", "1990-01-01", "F")  # domestic knife offences only
P3 = Suspect("N003", "Cal", "Three", "2000-05-05", "M")  # one knife offence (and one later)
P4 = Suspect("N004", "Dan", "Four", "1985-02-02", "M")  # two, neither in the last 12 months
P5 = Suspect("N005", "Eve", "Five", "2011-06-01", "F")  # four; aged 12
P6 = Suspect("N006", "Fay", "Six", "1995-03-03", "M")  # one offence both HMIC 7 and bladed
P7 = Suspect("N007", "Gus", "Seven", "1998-04-02", "M")  # first offence on the lookback's first day
P8 = Suspect("N008", "Hal", "Eight", "1997-01-01", "M")  # first offence a second before it
P9 = Suspect("N009", "Ivo", "Nine", "2006-04-02", "M")  # 17 on AS_OF; gender recorded F, M, empty
P10 = Suspect("N010", "Jo", "Ten", "1994-01-01", "X")


def occurrences() -> list[Occurrence]:
    return [
        # Financial year edge: the last second of 2022/23 and the first of 2023/24.
        occ("O02", "2023-03-31 23:59:59", "3b", "34B", flags={"public_place"}),
        occ("O01", "2023-04-01 00:00:00", "3b", "34B", flags={"public_place"}, offset=0.001),
        # Just before midnight on a Sunday, and midnight on the Monday.
        occ(
            "O03",
            "2023-06-04 23:59:59",
            "7",
            "10D",
            "Southampton",
            flags={"bladed_implement"},
            suspects=[P3],
        ),
        occ(
            "O04",
            "2023-06-05 00:00:00",
            "8",
            "64",
            flags={"public_place", "alcohol"},
            victim_gender=None,
            offset=0.002,
        ),
        # Public order that is not riot or violent disorder: not serious violence.
        occ("O05", "2023-06-05 01:00:00", "8", "66", flags={"public_place"}),
        occ("O06", "2023-07-10 14:00:00", "8", "65", "Gosport", flags={"public_place", "drugs"}),
        # Violence with injury: without a blade not counted, with a blade counted once although
        # it has two suspects.
        occ("O07", "2023-08-01 10:00:00", "1b", "8N", victim_gender="F"),
        occ(
            "O08",
            "2023-08-02 11:00:00",
            "1b",
            "8N",
            "Southampton",
            flags={"bladed_implement", "licensed_premises"},
            victim_gender="F",
            relationship="acquaintance",
            suspects=[P1, (P9, "M")],
        ),
        occ(
            "O09",
            "2023-09-09 22:15:00",
            "1a",
            "1",
            "Southampton",
            msv=True,
            flags={"hate_crime"},
            victim_gender="X",
        ),
        # The night the clocks go back (01:30 happens twice) and the night they go forward
        # (local times as recorded, never shifted).
        occ(
            "O10",
            "2023-10-29 01:30:00",
            "3a",
            "34A",
            flags={"licensed_premises", "alcohol"},
            offset=0.003,
        ),
        occ("O11", "2024-03-31 00:30:00", "7", "10C", suspects=[P1], offset=0.004),
        occ(
            "O12",
            "2024-03-31 02:30:00",
            "7",
            "10D",
            flags={"bladed_implement"},
            suspects=[P5],
            offset=0.005,
        ),
        # On the first excluded instant of the period ([from, to)).
        occ("O13", "2024-04-01 00:00:00", "3b", "34B"),
        occ("O14", "2023-05-05 12:00:00", "1c", "8M"),
        # Death by dangerous driving is in MSV whatever its group.
        occ("O15", "2023-12-24 18:45:00", "9", "4", "Havant", msv=True, victim_gender="U"),
        # Domestic knife offences: serious violence (1b with a blade) but never HKC offences.
        *[
            occ(
                f"O2{i}",
                f"2023-0{i + 4}-1{i} 20:00:00",
                "1b",
                "8N",
                flags={"bladed_implement", "domestic"},
                victim_gender="F",
                relationship="partner",
                suspects=[P2],
                offset=0.001 * i,
            )
            for i in range(1, 4)
        ],
        # Two offences in the lookback, none in the last 12 months.
        occ("O31", "2022-06-01 09:00:00", "7", "10C", "Southampton", suspects=[P4]),
        occ("O32", "2022-09-01 09:00:00", "7", "10C", "Southampton", suspects=[P4]),
        # Four qualifying offences.
        occ("O41", "2022-10-01 16:00:00", "7", "10C", "Gosport", suspects=[P5]),
        occ("O42", "2023-05-01 16:00:00", "7", "10C", "Gosport", suspects=[P5]),
        occ(
            "O43",
            "2023-11-11 16:00:00",
            "1b",
            "8N",
            "Gosport",
            flags={"bladed_implement"},
            suspects=[P5],
        ),
        # One occurrence that is both HMIC 7 and bladed counts once.
        occ(
            "O51",
            "2023-09-01 13:00:00",
            "7",
            "10D",
            "Havant",
            flags={"bladed_implement"},
            suspects=[P6],
        ),
        # The lookback starts exactly 24 months before as_of: included; a second earlier: not.
        occ("O61", "2022-04-01 00:00:00", "7", "10C", suspects=[P7]),
        occ("O62", "2023-12-01 08:00:00", "7", "10C", suspects=[P7], offset=0.006),
        occ("O71", "2022-03-31 23:59:59", "7", "10C", suspects=[P8]),
        occ("O72", "2023-12-02 08:00:00", "7", "10C", suspects=[P8], offset=0.007),
        # A person recorded as F, then M, then without a gender: M is the most recent.
        occ("O81", "2023-01-15 12:00:00", "7", "10C", "Southampton", suspects=[(P9, "F")]),
        occ("O82", "2024-02-01 12:00:00", "1c", "8M", "Southampton", suspects=[(P9, None)]),
        occ("O91", "2023-07-01 03:00:00", "7", "10C", "Havant", suspects=[P10]),
        occ("O92", "2023-08-01 03:00:00", "7", "10C", "Havant", suspects=[P10]),
        # After as_of: does not make P3 a carrier as of AS_OF.
        occ("O99", "2024-05-01 10:00:00", "7", "10C", "Southampton", suspects=[P3]),
    ]


def police_rows(items: list[Occurrence]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for item in items:
        latitude, longitude = item.point
        common = {
            "occurrence_ref": item.ref,
            "incident_ref": f"INC-{item.ref}",
            "ho_offence_code": item.code,
            "hmic_group": item.hmic,
            "msv": str(item.msv).lower(),
            "committed_at": item.at,
            "recorded_date": item.at[:10],
            "csp": item.csp,
            "lsoa_code": item.area,
            "latitude": f"{latitude:.5f}",
            "longitude": f"{longitude:.5f}",
            **{flag: str(flag in item.flags).lower() for flag in FLAGS},
            "victim_gender": item.victim_gender or "",
            "victim_age": "30",
            "victim_offender_relationship": item.relationship,
        }
        people: list[tuple[Suspect | None, str | None]] = [*item.suspects] or [(None, None)]
        for person, gender in people:
            rows.append(
                {
                    **common,
                    "suspect_nominal_ref": person.ref if person else "",
                    "suspect_forename": person.forename if person else "",
                    "suspect_surname": person.surname if person else "",
                    "suspect_dob": person.dob if person else "",
                    "suspect_gender": (gender or "") if person else "",
                }
            )
    assert set(rows[0]) == set(POLICE_FIELDS)
    return rows


POPULATION = [
    ("Portsmouth", "csp", 2021, 200_000),
    ("Portsmouth", "csp", 2022, 205_000),
    ("Southampton", "csp", 2022, 250_000),
    ("Southampton", "csp", 2024, 260_000),
    ("Havant", "csp", 2023, 126_000),
    ("Winchester", "csp", 2023, 127_000),
    # Not CSPs: never used for rates.
    ("Gosport", "local_authority", 2023, 86_000),
    ("E01019001", "lsoa", 2023, 1_500),
]

FIRES = [
    # (ref, occurred_at, lsoa, offset)
    ("F1", "2023-05-01 21:00:00", "E01017001", 0.0),
    ("F2", "2023-05-02 21:00:00", "E01017001", 0.001),
    ("F3", "2023-06-01 21:00:00", "E01019001", 0.0),
    ("F4", "2022-06-01 21:00:00", "E01019001", 0.0),  # outside the period
]
ED = [
    # (ref, assault_at, csp, lsoa or None)
    ("A1", "2023-05-01 23:00:00", "Southampton", "E01018001"),
    ("A2", "2023-05-03 23:00:00", "Southampton", "E01018001"),
    ("A3", "2023-05-04 23:00:00", "Havant", "E01016001"),
    ("A4", "2023-05-05 23:00:00", "Havant", None),  # not locatable: left out
]


def population_rows() -> list[dict[str, str]]:
    return [
        {"area_code": a, "area_type": t, "year": str(y), "population": str(p)}
        for a, t, y, p in POPULATION
    ]


def imd_rows() -> list[dict[str, str]]:
    return [
        {"lsoa_code": code, "csp": csp, "imd_decile": str(decile)}
        for code, (csp, _, _, decile) in LSOAS.items()
    ]


def fire_rows() -> list[dict[str, str]]:
    rows = []
    for ref, at, lsoa, offset in FIRES:
        csp, latitude, longitude, _ = LSOAS[lsoa]
        rows.append(
            {
                "incident_ref": ref,
                "occurred_at": at,
                "csp": csp,
                "lsoa_code": lsoa,
                "latitude": f"{latitude + offset:.5f}",
                "longitude": f"{longitude:.5f}",
                "fire_category": "secondary",
            }
        )
    return rows


def ed_rows() -> list[dict[str, str]]:
    return [
        {
            "attendance_ref": ref,
            "assault_at": at,
            "csp": csp,
            "lsoa_code": lsoa or "",
            "weapon": "body",
            "age_band": "18-24",
            "sex": "M",
        }
        for ref, at, csp, lsoa in ED
    ]


# ---------------------------------------------------------------------------------------------
# Pushing data and running products


def to_csv(rows: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


OWNERS = {
    "police.occurrences": "hampshire-constabulary",
    "reference.population": "vru",
    "la.imd": "vru",
    "fire.deliberate_fires": "hiwfrs",
    "health.ed_assaults": "hiow-icb",
}


@dataclass
class Env:
    platform: Platform
    catalogue: dict[str, ProductDefinition]
    push: Callable[[str, list[dict[str, str]]], None]

    def versions(self) -> dict[str, VersionInfo]:
        found: dict[str, VersionInfo] = {}
        with self.platform.sessions() as session:
            for dataset in OWNERS:
                info = storage_service.current_version(session, self.platform.storage, dataset)
                if info is not None:
                    found[dataset] = info
        return found

    def run(
        self,
        product: str,
        pairs: list[tuple[str, str]],
        *,
        suppress: bool = False,
        areas: frozenset[str] | None = None,
        k: int = 5,
    ) -> ProductResult:
        definition = self.catalogue[product]
        params = parse_parameters(definition, pairs)
        return compute.run(
            definition,
            params,
            versions=self.versions(),
            suppress=suppress,
            k=k,
            areas=areas,
            protector=self.platform.ingestion.protector,
        )


def pusher(
    api: TestClient,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
) -> Callable[[str, list[dict[str, str]]], None]:
    """Uploads a dataset's rows as its owner, through the API."""
    tokens: dict[str, str] = {}

    def push(dataset: str, rows: list[dict[str, str]]) -> None:
        owner = OWNERS[dataset]
        if owner not in tokens:
            tokens[owner] = token_for(make_client(org=owner))
        response = api.post(
            f"/v1/datasets/{dataset}/uploads",
            params={"mode": "replace"},
            content=to_csv(rows),
            headers={
                "Authorization": f"Bearer {tokens[owner]}",
                "Content-Type": "text/csv",
                "Idempotency-Key": str(uuid.uuid4()),
            },
        )
        assert response.status_code == 201, response.text

    return push


@pytest.fixture
def env(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
) -> Env:
    partnership = load_partnership(platform.settings.partnership_file, platform.contracts)
    catalogue = load_catalogue(DEFINITIONS, platform.contracts, partnership)
    return Env(platform, catalogue, pusher(api, make_client, token_for))


def load_engine_data(loading: Loading) -> None:
    push = pusher(loading.api, loading.make_client, loading.token_for)
    push("police.occurrences", police_rows(occurrences()))
    push("reference.population", population_rows())
    push("la.imd", imd_rows())
    push("fire.deliberate_fires", fire_rows())
    push("health.ed_assaults", ed_rows())


@pytest.fixture(scope="session")
def engine_data(snapshots: Snapshots) -> Snapshot[None]:
    return snapshots.take("products-engine", load_engine_data)


# The tests that read the loaded data start from a copy of it; the others from nothing.
initial_state = starting_from("engine_data", when="loaded")


@pytest.fixture
def loaded(env: Env, engine_data: Snapshot[None], loading: Loading) -> Env:
    engine_data.value_in(loading)
    return env


# ---------------------------------------------------------------------------------------------
# The rules, in plain Python


def is_serious_violence(item: Occurrence) -> bool:
    return (
        item.msv
        or item.hmic in ("3a", "3b", "7")
        or (item.hmic == "8" and item.code in ("64", "65"))
        or (item.hmic == "1b" and "bladed_implement" in item.flags)
    )


def in_period(item: Occurrence, period: tuple[str, str]) -> bool:
    return datetime.fromisoformat(period[0]) <= item.when < datetime.fromisoformat(period[1])


def serious(period: tuple[str, str], csps: Iterable[str] | None = None) -> list[Occurrence]:
    wanted = set(csps) if csps else None
    return [
        item
        for item in occurrences()
        if is_serious_violence(item)
        and in_period(item, period)
        and (wanted is None or item.csp in wanted)
    ]


def financial_year(moment: datetime) -> str:
    start = moment.year if moment.month >= 4 else moment.year - 1
    return f"{start}/{str(start + 1)[2:]}"


KEY_OF: dict[str, Callable[[Occurrence], Any]] = {
    "csp": lambda o: o.csp,
    "hmic_group": lambda o: o.hmic,
    "weekday": lambda o: WEEKDAYS[o.when.weekday()],
    "hour": lambda o: o.when.hour,
    "month": lambda o: f"{o.when.year}-{o.when.month:02d}",
    "financial_year": lambda o: financial_year(o.when),
    "victim_gender": lambda o: o.victim_gender,
    "victim_offender_relationship": lambda o: o.relationship,
}
SORT_OF: dict[str, Callable[[Any], Any]] = {"weekday": WEEKDAYS.index}


def one_decimal_change(current: int, previous: int) -> float | None:
    if previous == 0:
        return None
    value = (Decimal(current - previous) * 100) / Decimal(previous)
    return float(value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def rounded(numerator: int, denominator: int, scale: int, places: str) -> float:
    value = Decimal(numerator * scale) / Decimal(denominator)
    return float(value.quantize(Decimal(places), rounding=ROUND_HALF_UP))


def grouped(items: list[Occurrence], by: list[str]) -> dict[tuple[Any, ...], int]:
    refs: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    for item in items:
        refs[tuple(KEY_OF[key](item) for key in by)].add(item.ref)
    return {key: len(value) for key, value in refs.items()}


def sort_rows(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    def order(row: dict[str, Any]) -> tuple[Any, ...]:
        parts: list[Any] = []
        for key in keys:
            value = row[key]
            parts.append((1, "") if value is None else (0, SORT_OF.get(key, lambda v: v)(value)))
        return tuple(parts)

    return sorted(rows, key=order)


# The values every group of sv-counts takes whatever the data (the others: those found).
EVERY_VALUE: dict[str, list[Any]] = {"weekday": list(WEEKDAYS), "hour": list(range(24))}


def every_group(
    by: list[str], csps: list[str] | None, found: Iterable[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """Every combination of the keys' values: the areas asked for, every weekday and hour,
    and for the other keys the values found in either period."""
    found = list(found)
    domains = []
    for index, key in enumerate(by):
        if key == "csp":
            domains.append(list(csps or CSP_AREAS))
        elif key in EVERY_VALUE:
            domains.append(EVERY_VALUE[key])
        else:
            domains.append(list(dict.fromkeys(values[index] for values in found)))
    return list(itertools.product(*domains))


def expected_counts(
    by: list[str], csps: list[str] | None = None, compare: bool = False
) -> list[dict[str, Any]]:
    current = grouped(serious(PERIOD, csps), by)
    rows: list[dict[str, Any]] = []
    if not compare:
        if not by:
            return [{"count": current.get((), 0)}]
        for key in every_group(by, csps, current):
            rows.append({**dict(zip(by, key, strict=True)), "count": current.get(key, 0)})
        return sort_rows(rows, by)
    previous = grouped(serious(COMPARISON, csps), by)
    keys = every_group(by, csps, [*current, *previous])
    if not by:
        keys = [()]
    for key in keys:
        now, before = current.get(key, 0), previous.get(key, 0)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "count": now,
                "previous_count": before,
                "change_n": now - before,
                "change_pct": one_decimal_change(now, before),
            }
        )
    return sort_rows(rows, by)


# ---------------------------------------------------------------------------------------------
# sv-counts


def test_definition_examples_hold(loaded: Env) -> None:
    """The hand-built rows mean what they say (guards the expectations below)."""
    counted = {item.ref for item in serious(PERIOD)}
    assert {"O01", "O03", "O04", "O06", "O08", "O09", "O10", "O11", "O12", "O15"} <= counted
    assert not {"O02", "O05", "O07", "O13", "O14"} & counted
    result = loaded.run("sv-counts", [("from", PERIOD[0]), ("to", PERIOD[1])])
    assert result.columns == ["count"]
    assert result.rows == [{"count": len(counted)}]
    assert result.sources["police.occurrences"] == 1
    assert result.notes["serious_violence_definition"][0] == "most_serious_violence"


@pytest.mark.parametrize(
    "by",
    [
        ["csp"],
        ["hmic_group"],
        ["weekday"],
        ["hour"],
        ["weekday", "hour"],
        ["month"],
        ["financial_year"],
        ["victim_gender"],
        ["victim_offender_relationship"],
        ["csp", "hmic_group"],
    ],
)
def test_sv_counts_by(loaded: Env, by: list[str]) -> None:
    result = loaded.run("sv-counts", [("from", PERIOD[0]), ("to", PERIOD[1]), ("by", ",".join(by))])
    expected = expected_counts(by)
    declared_order = [name for name in loaded.catalogue["sv-counts"].spec.output.columns]
    assert result.columns == [c for c in declared_order if c in by] + ["count"]
    assert result.rows == sort_rows(expected, [c for c in declared_order if c in by])


def test_sv_counts_edges(loaded: Env) -> None:
    """Midnight, daylight saving days and the financial year boundary, spelled out."""
    rows = loaded.run(
        "sv-counts", [("from", "2022-04-01"), ("to", PERIOD[1]), ("by", "financial_year")]
    ).rows
    assert rows == [
        {"financial_year": "2022/23", "count": len(serious(COMPARISON))},
        {"financial_year": "2023/24", "count": len(serious(PERIOD))},
    ]
    cells = loaded.run(
        "sv-counts", [("from", PERIOD[0]), ("to", PERIOD[1]), ("by", "weekday,hour")]
    ).rows
    found = {(row["weekday"], row["hour"]): row["count"] for row in cells}
    assert found[("Sun", 23)] == 1  # O03, 23:59:59
    assert found[("Mon", 0)] == 1  # O04, midnight
    assert found[("Sun", 1)] == 1  # O10, 01:30 on the night the clocks go back
    assert found[("Sun", 0)] == 1  # O11, 00:30 on the night they go forward
    assert found[("Sun", 2)] == 1  # O12, 02:30 local time as recorded
    assert found[("Sat", 0)] == 1  # O01, the first second of the period


def test_sv_counts_csp_filter_and_comparison(loaded: Env) -> None:
    pairs = [
        ("from", PERIOD[0]),
        ("to", PERIOD[1]),
        ("compare_from", COMPARISON[0]),
        ("compare_to", COMPARISON[1]),
    ]
    for by in ([], ["hmic_group"], ["csp"], ["weekday"]):
        result = loaded.run("sv-counts", [*pairs, ("by", ",".join(by))])
        assert result.columns == [*by, "count", "previous_count", "change_n", "change_pct"]
        assert result.rows == expected_counts(by, compare=True), by
    filtered = loaded.run(
        "sv-counts",
        [*pairs, ("by", "hmic_group"), ("csp", "Southampton"), ("csp", "gosport")],
    )
    assert filtered.rows == expected_counts(
        ["hmic_group"], csps=["Southampton", "Gosport"], compare=True
    )
    assert filtered.parameters["csp"] == ["Southampton", "Gosport"]
    # A group only in the comparison period appears with count 0.
    by_group = {row["hmic_group"]: row for row in filtered.rows}
    assert by_group["7"]["previous_count"] > 0


# ---------------------------------------------------------------------------------------------
# sv-flags


def expected_flags(csps: list[str] | None = None) -> tuple[list[dict[str, Any]], int, int]:
    current, previous = serious(PERIOD, csps), serious(COMPARISON, csps)
    total, previous_total = len({o.ref for o in current}), len({o.ref for o in previous})
    rows = []
    for flag in FLAGS:
        now = len({o.ref for o in current if flag in o.flags})
        before = len({o.ref for o in previous if flag in o.flags})
        rows.append(
            {
                "flag": flag,
                "count": now,
                "pct": rounded(now, total, 100, "0.1") if total else None,
                "previous_count": before,
                "previous_pct": rounded(before, previous_total, 100, "0.1")
                if previous_total
                else None,
                "change_n": now - before,
                "change_pct": one_decimal_change(now, before),
            }
        )
    return rows, total, previous_total


def test_sv_flags(loaded: Env) -> None:
    plain = loaded.run("sv-flags", [("from", PERIOD[0]), ("to", PERIOD[1])])
    expected, total, previous_total = expected_flags()
    assert plain.columns == ["flag", "count", "pct"]
    assert plain.rows == [{k: row[k] for k in ("flag", "count", "pct")} for row in expected]
    assert plain.notes["total"] == total
    compared = loaded.run(
        "sv-flags",
        [
            ("from", PERIOD[0]),
            ("to", PERIOD[1]),
            ("compare_from", COMPARISON[0]),
            ("compare_to", COMPARISON[1]),
        ],
    )
    assert compared.columns == [
        "flag",
        "count",
        "pct",
        "previous_count",
        "previous_pct",
        "change_n",
        "change_pct",
    ]
    assert compared.rows == expected
    assert compared.notes["total"] == total
    assert compared.notes["previous_total"] == previous_total
    southampton = loaded.run(
        "sv-flags", [("from", PERIOD[0]), ("to", PERIOD[1]), ("csp", "Southampton")]
    )
    rows, total, _ = expected_flags(["Southampton"])
    assert southampton.rows == [{k: row[k] for k in ("flag", "count", "pct")} for row in rows]
    assert southampton.notes["total"] == total


# ---------------------------------------------------------------------------------------------
# sv-rates


def expected_population(csp: str, year: int) -> int | None:
    years = {y: p for a, t, y, p in POPULATION if a == csp and t == "csp" and y <= year}
    return years[max(years)] if years else None


def test_sv_rates(loaded: Env) -> None:
    result = loaded.run("sv-rates", [("from", PERIOD[0]), ("to", PERIOD[1])])
    counts = grouped(serious(PERIOD), ["csp"])
    expected = []
    for csp in CSP_AREAS:
        count = counts.get((csp,), 0)
        population = expected_population(csp, 2023)
        expected.append(
            {
                "csp": csp,
                "count": count,
                "population": population,
                "rate_per_1000": rounded(count, population, 1000, "0.01") if population else None,
            }
        )
    assert result.columns == ["csp", "count", "population", "rate_per_1000"]
    assert result.rows == expected
    assert result.notes["population_years"] == [2022, 2023]
    by_group = loaded.run(
        "sv-rates", [("from", PERIOD[0]), ("to", PERIOD[1]), ("by", "hmic_group")]
    )
    cells = grouped(serious(PERIOD), ["csp", "hmic_group"])
    groups = sorted({group for _, group in cells})
    expected_cells = []
    for csp in CSP_AREAS:
        population = expected_population(csp, 2023)
        for group in groups:
            count = cells.get((csp, group), 0)
            expected_cells.append(
                {
                    "csp": csp,
                    "hmic_group": group,
                    "count": count,
                    "population": population,
                    "rate_per_1000": rounded(count, population, 1000, "0.01")
                    if population
                    else None,
                }
            )
    assert by_group.rows == expected_cells


# ---------------------------------------------------------------------------------------------
# Habitual knife carriers


def add_months(day: date, months: int) -> date:
    # Written differently from the engine's on purpose: step month by month.
    year, month = day.year, day.month
    for _ in range(abs(months)):
        month += 1 if months > 0 else -1
        if month == 0:
            year, month = year - 1, 12
        elif month == 13:
            year, month = year + 1, 1
    for last in (31, 30, 29, 28):
        try:
            return date(year, month, min(day.day, last))
        except ValueError:
            continue
    raise AssertionError("unreachable")


def expected_carriers(as_of: date) -> dict[str, dict[str, Any]]:
    lookback = datetime.combine(add_months(as_of, -24), datetime.min.time())
    recent = datetime.combine(add_months(as_of, -12), datetime.min.time())
    end = datetime.combine(as_of, datetime.min.time())
    offences: dict[str, set[str]] = defaultdict(set)
    recent_offences: dict[str, set[str]] = defaultdict(set)
    latest: dict[str, tuple[datetime, str | None, str]] = {}
    for item in occurrences():
        for person, gender in item.suspects:
            if item.when >= end:
                continue
            if gender is not None and (
                person.ref not in latest or item.when > latest[person.ref][0]
            ):
                latest[person.ref] = (item.when, gender, person.dob)
            qualifying = (item.hmic == "7" or "bladed_implement" in item.flags) and (
                "domestic" not in item.flags
            )
            if qualifying and item.when >= lookback:
                offences[person.ref].add(item.ref)
                if item.when >= recent:
                    recent_offences[person.ref].add(item.ref)
    carriers: dict[str, dict[str, Any]] = {}
    for nominal, refs in offences.items():
        if len(refs) > 1 and recent_offences[nominal]:
            _, gender, dob = latest[nominal]
            born = date.fromisoformat(dob)
            age = as_of.year - born.year
            if (as_of.month, as_of.day) < (born.month, born.day):
                age -= 1
            carriers[nominal] = {"offences": len(refs), "gender": gender, "age": age}
    return carriers


def test_habitual_knife_carriers_list(loaded: Env) -> None:
    expected = expected_carriers(AS_OF)
    assert sorted(expected) == ["N001", "N005", "N007", "N009", "N010"]
    assert expected["N001"]["age"] == 18 and expected["N009"]["age"] == 17
    assert expected["N009"]["gender"] == "M"
    table = carriers.habitual_knife_carriers(
        loaded.versions(),
        AS_OF,
        partnership=loaded.catalogue["hkc-summary"].partnership,
        protector=loaded.platform.ingestion.protector,
    )
    assert table.column_names == [
        "person",
        "offences",
        "recent_offences",
        "last_offence_date",
        "gender",
        "age",
    ]
    protector = loaded.platform.ingestion.protector
    pseudonym = {
        protector.pseudonymise_value(ref, domain="suspect_nominal_ref"): ref for ref in expected
    }
    got = {pseudonym.get(row["person"], row["person"]): row for row in table.to_pylist()}
    assert set(got) == set(expected)
    for ref, row in got.items():
        assert row["offences"] == expected[ref]["offences"]
        assert row["gender"] == expected[ref]["gender"]
        assert row["age"] == expected[ref]["age"]
    assert got["N001"]["last_offence_date"] == date(2024, 3, 31)
    # Nothing identifying beyond the pseudonym leaves the function.
    assert not any("dob" in name or "name" in name for name in table.column_names)


def test_carriers_qualify_by_main_offence_code_whatever_sub_code_was_recorded(
    loaded: Env,
) -> None:
    """A partnership that names qualifying offences by Home Office code lists the same people
    when the police record those codes with sub-codes (10D/1 is 10D), as every product does."""
    document = yaml.safe_load(loaded.platform.settings.partnership_file.read_text())
    knife_codes = sorted(
        {
            item.code
            for item in occurrences()
            if item.hmic == "7" or "bladed_implement" in item.flags
        }
    )
    document["habitual_knife_carriers"]["qualifying_any_of"] = [{"ho_offence_code": knife_codes}]
    partnership = parse_partnership(document, loaded.platform.contracts)
    protector = loaded.platform.ingestion.protector

    def listed() -> list[dict[str, Any]]:
        table = carriers.habitual_knife_carriers(
            loaded.versions(), AS_OF, partnership=partnership, protector=protector
        )
        return table.to_pylist()

    plain = listed()
    assert len(plain) >= 3
    sub_coded = [dataclasses.replace(item, code=f"{item.code}/1") for item in occurrences()]
    loaded.push("police.occurrences", police_rows(sub_coded))
    assert listed() == plain


def test_parquet_export_keeps_dates_as_dates(loaded: Env) -> None:
    """A product's date columns, computed and revealed alike, are date32 in its Parquet."""
    definition = loaded.catalogue["habitual-knife-carriers"]
    computed = loaded.run("habitual-knife-carriers", [("as_of", AS_OF.isoformat())])
    assert computed.rows
    assert computed.column_types["last_offence_date"] == "date"
    assert computed.column_types["dob"] == "date"
    revealed = people.reveal(definition, computed, loaded.platform.ingestion.protector)
    table = pq.read_table(io.BytesIO(formats.to_parquet(revealed)))
    assert table.schema.field("last_offence_date").type == pa.date32()
    assert table.schema.field("dob").type == pa.date32()
    by_row = {row["person_id"]: row for row in revealed.rows}
    for row in table.to_pylist():
        shown = by_row[row["person_id"]]
        assert row["last_offence_date"].isoformat() == shown["last_offence_date"]
        assert row["dob"] is None or row["dob"].isoformat() == shown["dob"]


def test_hkc_summary(loaded: Env) -> None:
    carriers = expected_carriers(AS_OF).values()

    def count(test: Callable[[dict[str, Any]], bool]) -> int:
        return sum(1 for person in carriers if test(person))

    expected = [
        ("total", count(lambda p: True)),
        ("male", count(lambda p: p["gender"] == "M")),
        ("age_12_17", count(lambda p: 12 <= p["age"] <= 17)),
        ("age_12_17_male", count(lambda p: 12 <= p["age"] <= 17 and p["gender"] == "M")),
        ("age_18_25", count(lambda p: 18 <= p["age"] <= 25)),
        ("age_18_25_male", count(lambda p: 18 <= p["age"] <= 25 and p["gender"] == "M")),
        ("four_or_more", count(lambda p: p["offences"] >= 4)),
    ]
    result = loaded.run("hkc-summary", [("as_of", AS_OF.isoformat())])
    assert result.columns == ["measure", "value"]
    assert [(row["measure"], row["value"]) for row in result.rows] == expected
    assert expected == [
        ("total", 5),
        ("male", 3),
        ("age_12_17", 2),
        ("age_12_17_male", 1),
        ("age_18_25", 2),
        ("age_18_25_male", 2),
        ("four_or_more", 1),
    ]
    # A day later P1 is still 18, P9 turns 18, and the offence of 2022-04-01 falls out of P7's
    # lookback, leaving one.
    later = date(2024, 4, 2)
    result = loaded.run("hkc-summary", [("as_of", later.isoformat())])
    assert dict((row["measure"], row["value"]) for row in result.rows)["total"] == len(
        expected_carriers(later)
    )


# ---------------------------------------------------------------------------------------------
# Hotspots


Event = tuple[str, str, str, tuple[float, float] | None]


def expected_hotspots(
    events: Sequence[Event],
    unit: str,
    resolution: int = 8,
    top: int = 20,
) -> list[dict[str, Any]]:
    """events: (ref, csp, lsoa, point) already in the period."""
    refs: dict[str, set[str]] = defaultdict(set)
    by_csp: dict[str, Counter[str]] = defaultdict(Counter)
    for ref, csp, lsoa, point in events:
        if unit == "lsoa":
            area = lsoa
        else:
            if point is None:
                continue
            area = h3.latlng_to_cell(point[0], point[1], resolution)
        refs[area].add(ref)
        by_csp[area][csp] += 1
    counts = {area: len(items) for area, items in refs.items()}
    ranks = {c: i + 1 for i, c in enumerate(sorted(set(counts.values()), reverse=True))}
    rows = []
    for area, count in counts.items():
        best = sorted(by_csp[area].items(), key=lambda item: (-item[1], item[0]))[0][0]
        row: dict[str, Any] = {"area": area, "csp": best, "count": count, "rank": ranks[count]}
        if unit == "lsoa":
            row["imd_decile"] = LSOAS[area][3]
        rows.append(row)
    rows.sort(key=lambda row: (row["rank"], row["area"]))
    return rows[:top]


def sv_events(
    csps: set[str] | None = None,
) -> list[tuple[str, str, str, tuple[float, float] | None]]:
    return [
        (o.ref, o.csp, o.area, o.point) for o in serious(PERIOD) if csps is None or o.csp in csps
    ]


def test_hotspots_lsoa_and_h3(loaded: Env) -> None:
    base = [("from", PERIOD[0]), ("to", PERIOD[1])]
    lsoa = loaded.run("hotspots", base)
    assert lsoa.columns == ["area", "csp", "count", "rank", "imd_decile"]
    assert lsoa.rows == expected_hotspots(sv_events(), "lsoa")
    assert lsoa.sources == {"police.occurrences": 1, "la.imd": 1}
    assert "serious_violence_definition" in lsoa.notes
    for resolution in (5, 8, 10):
        cells = loaded.run("hotspots", [*base, ("unit", "h3"), ("resolution", str(resolution))])
        assert cells.columns == ["area", "csp", "count", "rank"]
        assert cells.rows == expected_hotspots(sv_events(), "h3", resolution)
    top = loaded.run("hotspots", [*base, ("top", "2")])
    assert top.rows == expected_hotspots(sv_events(), "lsoa", top=2)
    assert top.notes["rows_before_limit"] == len(expected_hotspots(sv_events(), "lsoa"))


def test_hotspots_layers(loaded: Env) -> None:
    base = [("from", PERIOD[0]), ("to", PERIOD[1])]
    fires = [
        (ref, LSOAS[lsoa][0], lsoa, (LSOAS[lsoa][1] + offset, LSOAS[lsoa][2]))
        for ref, at, lsoa, offset in FIRES
        if PERIOD[0] <= at < PERIOD[1]
    ]
    fire = loaded.run("hotspots", [*base, ("layer", "fire")])
    assert fire.rows == expected_hotspots(fires, "lsoa")
    # Only what the run read is named as its source (for the audit trail).
    assert fire.sources == {"fire.deliberate_fires": 1, "la.imd": 1}
    assert loaded.run(
        "hotspots", [*base, ("layer", "fire"), ("unit", "h3")]
    ).rows == expected_hotspots(fires, "h3")
    assaults = [(ref, csp, lsoa, None) for ref, at, csp, lsoa in ED if lsoa is not None]
    assert loaded.run("hotspots", [*base, ("layer", "ed")]).rows == expected_hotspots(
        assaults,
        "lsoa",  # type: ignore[arg-type]
    )


def test_level2_areas(loaded: Env) -> None:
    base = [("from", PERIOD[0]), ("to", PERIOD[1])]
    mine = frozenset({"Portsmouth", "Gosport"})
    result = loaded.run("hotspots", base, areas=mine)
    assert result.rows == expected_hotspots(sv_events(set(mine)), "lsoa")
    assert {row["csp"] for row in result.rows} <= mine
    narrowed = loaded.run("hotspots", [*base, ("csp", "Gosport")], areas=mine)
    assert narrowed.rows == expected_hotspots(sv_events({"Gosport"}), "lsoa")
    with pytest.raises(Forbidden):
        loaded.run("hotspots", [*base, ("csp", "Southampton")], areas=mine)
    nothing = loaded.run("hotspots", base, areas=frozenset())
    assert nothing.rows == []


# ---------------------------------------------------------------------------------------------
# Missing data, determinism


def test_missing_source_gives_no_rows_and_a_note(env: Env) -> None:
    result = env.run("sv-counts", [("from", PERIOD[0]), ("to", PERIOD[1]), ("by", "csp")])
    assert result.rows == []
    assert result.columns == ["csp", "count"]
    assert result.notes["missing_sources"] == ["police.occurrences"]
    assert result.sources == {}
    env.push("police.occurrences", police_rows(occurrences()))
    # Without population the rates have nothing to divide by; without IMD the hotspots still
    # work (the decile is empty); without fires only the fire layer is empty.
    assert env.run("sv-rates", [("from", PERIOD[0]), ("to", PERIOD[1])]).notes[
        "missing_sources"
    ] == ["reference.population"]
    hotspots = env.run("hotspots", [("from", PERIOD[0]), ("to", PERIOD[1])])
    assert hotspots.rows and all(row["imd_decile"] is None for row in hotspots.rows)
    assert "missing_sources" not in hotspots.notes
    fire = env.run("hotspots", [("from", PERIOD[0]), ("to", PERIOD[1]), ("layer", "fire")])
    assert fire.rows == [] and fire.notes["missing_sources"] == ["fire.deliberate_fires"]


def test_results_are_deterministic_and_json_safe(loaded: Env) -> None:
    import json

    for product, pairs in [
        ("sv-counts", [("from", PERIOD[0]), ("to", PERIOD[1]), ("by", "weekday,hour,csp")]),
        ("sv-rates", [("from", PERIOD[0]), ("to", PERIOD[1]), ("by", "hmic_group")]),
        ("hotspots", [("from", PERIOD[0]), ("to", PERIOD[1]), ("unit", "h3")]),
    ]:
        first = loaded.run(product, pairs, suppress=True)
        second = loaded.run(product, pairs, suppress=True)
        assert first.rows == second.rows
        assert first.generated_at.endswith("Z")
        json.dumps({"rows": first.rows, "notes": first.notes, "parameters": first.parameters})


# ---------------------------------------------------------------------------------------------
# Suppression on real runs


def bulk(
    prefix: str, n: int, csp: str, at: str, *, hmic: str = "7", code: str = "10C"
) -> list[Occurrence]:
    moment = datetime.fromisoformat(at)
    return [
        occ(f"{prefix}{i:03d}", (moment.replace(minute=i % 60)).isoformat(sep=" "), hmic, code, csp)
        for i in range(n)
    ]


def test_primary_suppression_and_zero(env: Env) -> None:
    """1 to 7 withheld, the rest rounded to the nearest 5, rates from the rounded count."""
    items = [
        *bulk("P", 12, "Portsmouth", "2023-05-01 10:00:00"),
        *bulk("S", 7, "Southampton", "2023-05-01 10:00:00"),
        *bulk("G", 1, "Gosport", "2023-05-01 10:00:00"),
    ]
    env.push("police.occurrences", police_rows(items))
    env.push("reference.population", population_rows())
    result = env.run("sv-rates", [("from", PERIOD[0]), ("to", PERIOD[1])], suppress=True)
    rows = {row["csp"]: row for row in result.rows}
    assert rows["Portsmouth"]["count"] == 10 and "suppressed" not in rows["Portsmouth"]
    assert rows["Portsmouth"]["rate_per_1000"] == rounded(10, 205_000, 1000, "0.01")
    for csp in ("Southampton", "Gosport"):
        assert rows[csp]["count"] is None
        assert rows[csp]["rate_per_1000"] is None
        assert rows[csp]["suppressed"] == ["count", "rate_per_1000"]
        assert rows[csp]["population"] is not None or csp == "Gosport"
    assert rows["Winchester"]["count"] == 0 and "suppressed" not in rows["Winchester"]
    assert result.notes["suppression"] == {"applied": True, "k": 8, "rounding": 5}
    plain = env.run("sv-rates", [("from", PERIOD[0]), ("to", PERIOD[1])])
    assert {row["csp"]: row["count"] for row in plain.rows}["Southampton"] == 7
    assert {row["csp"]: row["count"] for row in plain.rows}["Portsmouth"] == 12
    assert plain.notes["suppression"] == {"applied": False}


def test_secondary_suppression_in_one_dimension(env: Env) -> None:
    items = [
        *bulk("P", 9, "Portsmouth", "2023-05-01 10:00:00"),
        *bulk("S", 13, "Southampton", "2023-05-01 10:00:00"),
        *bulk("G", 2, "Gosport", "2023-05-01 10:00:00"),
        *bulk("H", 22, "Havant", "2023-05-01 10:00:00"),
    ]
    env.push("police.occurrences", police_rows(items))
    result = env.run(
        "sv-counts", [("from", PERIOD[0]), ("to", PERIOD[1]), ("by", "csp")], suppress=True
    )
    # Gosport's 2 is withheld, and Portsmouth's 9 with it (the next smallest of the line); the
    # others are rounded. Every area appears; the areas without offences show 0.
    shown = {"Gosport": None, "Havant": 20, "Portsmouth": None, "Southampton": 15}
    assert result.rows == [
        {"csp": csp, "count": shown.get(csp, 0)}
        | ({"suppressed": ["count"]} if csp in shown and shown[csp] is None else {})
        for csp in sorted(CSP_AREAS)
    ]
    # The total (the margin of this line) is published rounded: 46 is 45, and 45 - 15 - 20
    # leaves Gosport and Portsmouth together somewhere from 6 to 14.
    total = env.run("sv-counts", [("from", PERIOD[0]), ("to", PERIOD[1])], suppress=True)
    assert total.rows == [{"count": 45}]


def test_derived_columns_go_with_their_counts(env: Env) -> None:
    items = [
        *bulk("P", 16, "Portsmouth", "2023-05-01 10:00:00"),
        *bulk("S", 3, "Southampton", "2023-05-01 10:00:00"),
        *bulk("G", 9, "Gosport", "2023-05-01 10:00:00"),
        *bulk("Q", 17, "Portsmouth", "2022-05-01 10:00:00"),
        *bulk("T", 18, "Southampton", "2022-05-01 10:00:00"),
        *bulk("U", 12, "Gosport", "2022-05-01 10:00:00"),
    ]
    env.push("police.occurrences", police_rows(items))
    compared = env.run(
        "sv-counts",
        [
            ("from", PERIOD[0]),
            ("to", PERIOD[1]),
            ("by", "csp"),
            ("compare_from", COMPARISON[0]),
            ("compare_to", COMPARISON[1]),
        ],
        suppress=True,
    )
    rows = {row["csp"]: row for row in compared.rows}
    # Southampton's 3 is withheld, Gosport's 9 too (the next smallest of the line); the
    # comparison counts are a table of their own, with nothing small, rounded.
    assert rows["Southampton"] == {
        "csp": "Southampton",
        "count": None,
        "previous_count": 20,
        "change_n": None,
        "change_pct": None,
        "suppressed": ["count", "change_n", "change_pct"],
    }
    assert rows["Gosport"]["suppressed"] == ["count", "change_n", "change_pct"]
    assert rows["Gosport"]["previous_count"] == 10
    # 16 against 17 is published as 15 against 15: the change is of the published counts.
    assert rows["Portsmouth"] == {
        "csp": "Portsmouth",
        "count": 15,
        "previous_count": 15,
        "change_n": 0,
        "change_pct": 0.0,
    }
    flags = env.run("sv-flags", [("from", PERIOD[0]), ("to", PERIOD[1])], suppress=True)
    assert flags.notes["total"] == 30
    bladed = {row["flag"]: row for row in flags.rows}
    assert bladed["public_place"] == {"flag": "public_place", "count": 0, "pct": 0.0}
    small = env.run(
        "sv-flags", [("from", PERIOD[0]), ("to", PERIOD[1]), ("csp", "Southampton")], suppress=True
    )
    # Three offences in Southampton: the total is withheld, and every percentage with it.
    assert small.notes["total"] is None
    assert small.notes["suppressed"] == ["total"]
    assert all(row["pct"] is None and "pct" in row["suppressed"] for row in small.rows)


def test_secondary_suppression_weekday_by_hour(env: Env) -> None:
    """No withheld cell of the weekday x hour table can be recovered from the weekday totals."""
    from services.demo.generate import generate_police

    env.push(
        "police.occurrences",
        list(generate_police(8000, seed=5, start=date(2023, 4, 1), end=date(2024, 4, 1))),
    )
    pairs = [("from", PERIOD[0]), ("to", PERIOD[1])]
    table = env.run("sv-counts", [*pairs, ("by", "weekday,hour")], suppress=True)
    raw = env.run("sv-counts", [*pairs, ("by", "weekday,hour")])
    margins = env.run("sv-counts", [*pairs, ("by", "weekday")], suppress=True)
    hour_margins = env.run("sv-counts", [*pairs, ("by", "hour")], suppress=True)
    assert len(table.rows) == len(raw.rows)
    true = {(r["weekday"], r["hour"]): r["count"] for r in raw.rows}
    shown = {(r["weekday"], r["hour"]): r for r in table.rows}
    assert any(1 <= value <= 7 for value in true.values()), "the data must have small cells"
    for key, value in true.items():
        row = shown[key]
        if 1 <= value <= 7:
            assert row["count"] is None and row["suppressed"] == ["count"]
        elif row["count"] is None:
            assert row["suppressed"] == ["count"]  # withheld to protect another cell
        else:
            assert abs(row["count"] - value) <= 2 and row["count"] % 5 == 0
    secondary = [key for key, row in shown.items() if row["count"] is None and true[key] >= 8]
    assert secondary, "some cells must be withheld only to protect others"
    for dimension, margin_rows in ((0, margins.rows), (1, hour_margins.rows)):
        for margin in margin_rows:
            if margin["count"] is None:
                continue
            value = margin["weekday"] if dimension == 0 else margin["hour"]
            line = [row for key, row in shown.items() if key[dimension] == value]
            withheld = [row for row in line if row["count"] is None]
            assert len(withheld) != 1, f"one withheld cell in the line of {value}"


def test_hotspots_suppressed_rank_sorts_last(env: Env) -> None:
    items = [
        *bulk("P", 13, "Portsmouth", "2023-05-01 10:00:00"),
        *[
            occ(f"Q{i}", "2023-05-02 10:00:00", "7", "10C", "Portsmouth", lsoa="E01017002")
            for i in range(2)
        ],
        *bulk("S", 3, "Southampton", "2023-05-01 10:00:00"),
        *bulk("G", 12, "Gosport", "2023-05-01 10:00:00"),
        *bulk("H", 9, "Havant", "2023-05-01 10:00:00"),
    ]
    env.push("police.occurrences", police_rows(items))
    result = env.run("hotspots", [("from", PERIOD[0]), ("to", PERIOD[1])], suppress=True)
    # Portsmouth's two LSOAs are a line (they add up to Portsmouth's count): its 2 is withheld,
    # so its 13 is too. Ranks come from the rounded counts (12 and 9 are both 10: one rank);
    # withheld rows lose their rank and sort last, by area.
    assert [(r["area"], r["csp"], r["count"], r["rank"]) for r in result.rows] == [
        ("E01016001", "Havant", 10, 1),
        ("E01019001", "Gosport", 10, 1),
        ("E01017001", "Portsmouth", None, None),
        ("E01017002", "Portsmouth", None, None),
        ("E01018001", "Southampton", None, None),
    ]
    assert result.rows[2]["suppressed"] == ["count", "rank"]


def test_fraction_rounding_is_exact() -> None:
    assert engine.round_half_away(Fraction(1, 8), 2) == 0.13
    assert engine.round_half_away(Fraction(-1, 8), 2) == -0.13
    assert engine.round_half_away(Fraction(2675, 1000), 2) == 2.68
    assert engine.round_half_away(Fraction(1, 3) * 100, 1) == 33.3


def test_the_definition_is_configuration(loaded: Env, tmp_path: Path) -> None:
    """Partners revise the definition in the partnership file; no code changes."""
    import yaml

    document = yaml.safe_load(loaded.platform.settings.partnership_file.read_text())
    document["serious_violence"]["any_of"] = [
        clause for clause in document["serious_violence"]["any_of"] if clause["name"] != "robbery"
    ]
    revised = tmp_path / "partnership.yaml"
    revised.write_text(yaml.safe_dump(document, sort_keys=False))
    partnership = load_partnership(revised, loaded.platform.contracts)
    definition = load_catalogue(DEFINITIONS, loaded.platform.contracts, partnership)["sv-counts"]
    result = compute.run(
        definition,
        parse_parameters(
            definition, [("from", PERIOD[0]), ("to", PERIOD[1]), ("by", "hmic_group")]
        ),
        versions=loaded.versions(),
        suppress=False,
        k=5,
        areas=None,
        protector=loaded.platform.ingestion.protector,
    )
    expected = [
        row for row in expected_counts(["hmic_group"]) if row["hmic_group"] not in ("3a", "3b")
    ]
    assert result.rows == expected
    assert "robbery" not in result.notes["serious_violence_definition"]
