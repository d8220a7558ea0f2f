"""Deterministic synthetic data for every contracted dataset.

Used by `together demo load`, by tests and by the ingestion benchmark. Everything here is
invented: names come from small built-in lists, references are made up, and places are a fixed
pool of pretend LSOAs scattered over the real CSP areas so that maps look plausible.

Only `random.Random(seed).random()` drives the choices (never `choice`/`choices`/`shuffle`
helpers whose algorithms could change between Python versions), so the same seed gives the same
bytes.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import random
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import TypeVar

from services.kit.clock import london_today

__all__ = [
    "CSPS",
    "DATASETS",
    "DEFAULT_ROWS",
    "EDUCATION_FIELDS",
    "FIRE_FIELDS",
    "HEALTH_FIELDS",
    "IMD_FIELDS",
    "POLICE_FIELDS",
    "POPULATION_FIELDS",
    "SHAPE_ANCHOR",
    "YOUTH_JUSTICE_FIELDS",
    "demo_period",
    "generate_police",
    "write_dataset_csv",
    "write_demo_set",
    "write_police_csv",
]

T = TypeVar("T")

DATASETS: tuple[str, ...] = (
    "police.occurrences",
    "fire.deliberate_fires",
    "health.ed_assaults",
    "education.exclusions",
    "youth_justice.first_time_entrants",
    "reference.population",
    "la.imd",
)

# A fixed load day for the tests that pin figures of the demo's shape (population years, counts
# of people), which would otherwise move with the calendar.
SHAPE_ANCHOR = date(2025, 3, 31)
# A fixed police period for callers (benchmarks) that do not ask for one.
DEMO_START, DEMO_END = date(2022, 4, 1), date(2025, 4, 1)


def demo_period(as_of: date) -> tuple[date, date]:
    """The demo's days, `[start, end)`, for data loaded on `as_of`.

    The data run up to and including `as_of`, so that every default and published table
    relative to today ("this calendar year to date" on 1 January too) finds offences. They
    start three whole financial years before the one `as_of` falls in, so that the published
    "last three financial years" table is complete whatever the day.
    """
    current = as_of.year if as_of.month >= 4 else as_of.year - 1
    return date(current - 3, 4, 1), as_of + timedelta(days=1)


TRUE = "true"
FALSE = "false"

# (name, mid-2021 population, centre latitude, centre longitude, spread in degrees).
# Populations and centres are approximate public figures; the spread keeps each area's pretend
# LSOAs roughly inside it.
_CSP_TABLE: tuple[tuple[str, int, float, float, float], ...] = (
    ("Basingstoke and Deane", 185_000, 51.262, -1.088, 0.09),
    ("East Hampshire", 126_000, 51.060, -0.960, 0.10),
    ("Eastleigh", 137_000, 50.958, -1.330, 0.04),
    ("Fareham", 113_000, 50.855, -1.215, 0.04),
    ("Gosport", 86_000, 50.797, -1.152, 0.02),
    ("Hart", 101_000, 51.280, -0.890, 0.05),
    ("Havant", 126_000, 50.860, -0.985, 0.04),
    ("Isle of Wight", 140_000, 50.680, -1.300, 0.09),
    ("New Forest", 176_000, 50.850, -1.620, 0.11),
    ("Portsmouth", 208_000, 50.810, -1.075, 0.025),
    ("Rushmoor", 100_000, 51.270, -0.760, 0.025),
    ("Southampton", 249_000, 50.915, -1.400, 0.035),
    ("Test Valley", 131_000, 51.110, -1.510, 0.10),
    ("Winchester", 127_000, 51.050, -1.290, 0.08),
)

CSPS: tuple[str, ...] = tuple(row[0] for row in _CSP_TABLE)

# A box round Hampshire and the Isle of Wight. LSOA centres are clamped 0.01 degrees inside it,
# more than the jitter of any point round its centre, so no point can fall outside.
_LAT_MIN, _LAT_MAX = 50.57, 51.38
_LON_MIN, _LON_MAX = -1.95, -0.73

# One pretend LSOA per ~2,000 residents gives a pool of about 1,000 areas.
_RESIDENTS_PER_LSOA = 2_000

# The LSOA pool does not depend on the caller's seed: police, fire, health and IMD data made
# with different seeds must still agree on which LSOA lies in which CSP.
_GEOGRAPHY_SEED = 20_240_401

POLICE_FIELDS: tuple[str, ...] = (
    "occurrence_ref",
    "incident_ref",
    "ho_offence_code",
    "hmic_group",
    "msv",
    "committed_at",
    "recorded_date",
    "csp",
    "lsoa_code",
    "latitude",
    "longitude",
    "public_place",
    "bladed_implement",
    "domestic",
    "licensed_premises",
    "alcohol",
    "drugs",
    "hate_crime",
    "victim_gender",
    "victim_age",
    "victim_offender_relationship",
    "suspect_nominal_ref",
    "suspect_forename",
    "suspect_surname",
    "suspect_dob",
    "suspect_gender",
)

# Names are invented combinations of common first names and surnames. A share carry accents,
# apostrophes, hyphens and spaces so that the person-key normalisation has something to fold.
# fmt: off
_MALE_FORENAMES: tuple[str, ...] = (
    "Oliver", "Jack", "Harry", "George", "Noah", "Charlie", "Jacob", "Alfie", "Freddie", "Oscar",
    "Leo", "Logan", "Archie", "Theo", "Thomas", "James", "Joshua", "Mason", "Ethan", "Lewis",
    "Kai", "Tyler", "Callum", "Connor", "Reece", "Jordan", "Liam", "Ryan", "Dylan", "Mohammed",
    "Ahmed", "Kacper", "Łukasz", "José", "Seán", "Rónán", "Chidi", "Kwame", "Dev", "Arjun",
    "Mihai", "Tomás", "Jean-Luc", "Zak", "Kieran", "Bradley", "Aaron",
)
_FEMALE_FORENAMES: tuple[str, ...] = (
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Ivy", "Lily", "Isabella", "Rosie", "Sophia",
    "Grace", "Freya", "Evie", "Ella", "Poppy", "Chloé", "Zoë", "Siân", "Renée", "Niamh", "Aoife",
    "Leah", "Jade", "Courtney", "Chelsea", "Kayleigh", "Amira", "Fatima", "Zofia", "Anaïs",
    "Mary-Jane", "Precious", "Priya", "Ana", "Bethany", "Shannon",
)
_OTHER_FORENAMES: tuple[str, ...] = (
    "Alex", "Sam", "Charlie", "Jamie", "Robin", "Rowan",
)
_SURNAMES: tuple[str, ...] = (
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas",
    "Johnson", "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes",
    "Green", "Hall", "Lewis", "Harris", "Clarke", "Patel", "Jackson", "Wood", "Turner", "Martin",
    "Cooper", "Hill", "Ward", "Morris", "Moore", "Clark", "Lee", "King", "Baker", "Harrison",
    "Morgan", "Allen", "James", "Scott", "Phillips", "Watson", "Davis", "Parker", "Price",
    "Bennett", "Young", "Griffiths", "Mitchell", "Kelly", "Cook", "Carter", "Richardson", "Bailey",
    "Collins", "Bell", "Shaw", "Murphy", "Miller", "Cox", "Richards", "Khan", "Marshall",
    "Anderson", "Simpson", "Ellis", "Adams", "Singh", "Begum", "Wilkinson", "O'Brien", "O'Connor",
    "O'Neill", "D'Souza", "McDonald", "MacLeod", "Nguyễn", "Kowalski", "Wiśniewski", "Núñez",
    "Müller", "Öztürk", "Okonkwo", "Mensah", "Popescu", "Ferreira", "Smith-Jones", "Lloyd-Webber",
    "De La Cruz", "Van der Berg", "Le Roux", "Ó Súilleabháin",
)
# fmt: on

# HMIC group -> share of the feed and the offence codes (with their share) that sit under it.
# The mix is weighted towards violence because this feed is the serious-violence extract.
_OFFENCES: tuple[tuple[str, float, tuple[tuple[str, float], ...]], ...] = (
    ("1a", 0.3, (("1", 0.55), ("4A", 0.25), ("4D", 0.20))),
    ("1b", 30.0, (("8N", 0.90), ("5D", 0.04), ("5E", 0.01), ("8F", 0.04), ("2", 0.01))),
    ("1c", 27.0, (("105A", 0.55), ("8L", 0.20), ("8M", 0.10), ("9A", 0.15))),
    ("2", 4.0, (("17A", 0.30), ("19C", 0.45), ("20A", 0.25))),
    ("3a", 1.0, (("34A", 1.0),)),
    ("3b", 5.0, (("34B", 1.0),)),
    ("4", 6.0, (("39", 0.35), ("45", 0.35), ("49", 0.30))),
    ("5", 6.0, (("56A", 0.40), ("58A", 0.60))),
    ("6", 5.0, (("92A", 0.55), ("92D", 0.45))),
    ("7", 7.0, (("10D", 0.60), ("10A", 0.10), ("10C", 0.15), ("81", 0.15))),
    ("8", 6.0, (("65", 0.20), ("64", 0.03), ("66", 0.40), ("125", 0.20), ("9B", 0.17))),
    ("9", 1.7, (("11A", 0.40), ("35", 0.30), ("76", 0.30))),
)
# Most Serious Violence: homicide, death by dangerous driving (4D, inside 1a) and the grave
# woundings within violence with injury.
_MSV_CODES = frozenset({"1", "4A", "4D", "2", "5D", "5E", "8F"})
_BLADED_SHARE = {"1a": 0.35, "1b": 0.10, "1c": 0.02, "3a": 0.20, "3b": 0.15, "7": 0.10}
_DOMESTIC_SHARE = {"1a": 0.15, "1b": 0.30, "1c": 0.35, "2": 0.20, "5": 0.10}
# Offences with no personal victim (possession, drugs, most public order) carry no victim.
_VICTIMLESS = frozenset({"6", "7", "8", "9"})

# Relative volume by weekday (Mon..Sun) and by hour, weekday and weekend apart: violence
# rises through the evening and, at weekends, peaks after midnight around the night-time
# economy.
_WEEKDAY_WEIGHTS = (0.90, 0.88, 0.92, 0.97, 1.12, 1.28, 1.18)
# fmt: off
_HOUR_WEEKDAY = (
    3.0, 2.2, 1.6, 1.1, 0.8, 0.7, 1.0, 1.6, 2.6, 3.1, 3.5, 4.0,
    4.4, 4.5, 4.6, 5.2, 5.8, 6.2, 6.2, 6.0, 5.6, 5.1, 4.5, 3.8,
)
_HOUR_WEEKEND = (
    6.5, 6.4, 5.4, 3.8, 2.2, 1.2, 0.9, 0.9, 1.3, 2.0, 2.6, 3.1,
    3.6, 4.0, 4.1, 4.5, 5.0, 5.5, 6.0, 6.4, 6.9, 7.4, 7.6, 7.2,
)
# fmt: on


@dataclass(frozen=True, slots=True)
class _Lsoa:
    code: str
    csp: int
    latitude: float
    longitude: float
    imd_decile: int
    # Relative share of incidents: deprived areas and a few town-centre hotspots see more.
    weight: float


@dataclass(frozen=True, slots=True)
class _Person:
    nominal_ref: str
    forename: str
    surname: str
    dob: date
    gender: str
    home_csp: int


def _table(weighted: Iterable[tuple[T, float]], size: int = 1_000) -> list[T]:
    """A lookup list of exactly `size` entries, each value present in proportion to its weight.

    Indexing it with `int(random() * size)` is several times faster than `random.choices`
    and, for a million rows, that difference is most of the budget. Shares are rounded by
    largest remainder, so a weight below `1 / size` of the total can vanish.
    """
    pairs = list(weighted)
    total = sum(weight for _, weight in pairs)
    exact = [weight / total * size for _, weight in pairs]
    counts = [int(share) for share in exact]
    by_remainder = sorted(range(len(pairs)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    table: list[T] = []
    for (value, _), count in zip(pairs, counts, strict=True):
        table.extend([value] * count)
    return table


def _pick(rng: random.Random, values: Sequence[T]) -> T:
    return values[int(rng.random() * len(values))]


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


@cache
def _geography() -> tuple[_Lsoa, ...]:
    """The fixed pool of pretend LSOAs, numbered in CSP blocks like the real ones."""
    rng = random.Random(_GEOGRAPHY_SEED)
    pool: list[_Lsoa] = []
    number = 16_800
    for index, (_, population, lat, lon, spread) in enumerate(_CSP_TABLE):
        count = max(1, round(population / _RESIDENTS_PER_LSOA))
        for _ in range(count):
            number += 1 + int(rng.random() * 3)
            # A Gaussian-ish cloud (sum of uniforms) round the centre; longitude degrees are
            # shorter at this latitude, so stretch them to keep areas roughly round.
            dlat = (rng.random() + rng.random() + rng.random() - 1.5) * spread
            dlon = (rng.random() + rng.random() + rng.random() - 1.5) * spread * 1.6
            # Deprivation is concentrated in the cities and some coastal towns.
            urban = CSPS[index] in {"Southampton", "Portsmouth", "Gosport", "Havant"}
            skew = 1.6 if urban else 0.7
            decile = 1 + min(9, int(10 * rng.random() ** skew))
            decile = decile if urban else 11 - decile
            hotspot = rng.random() < 0.02
            pool.append(
                _Lsoa(
                    code=f"E01{number:06d}",
                    csp=index,
                    latitude=round(_clamp(lat + dlat, _LAT_MIN + 0.01, _LAT_MAX - 0.01), 5),
                    longitude=round(_clamp(lon + dlon, _LON_MIN + 0.01, _LON_MAX - 0.01), 5),
                    imd_decile=decile,
                    weight=(11 - decile) ** 1.3 * (8.0 if hotspot else 1.0),
                )
            )
    return tuple(pool)


@cache
def _place_tables() -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """LSOA positions weighted by incident share: over the whole area, and within each CSP."""
    pool = _geography()
    overall = tuple(_table(((i, lsoa.weight) for i, lsoa in enumerate(pool)), 20_000))
    per_csp = tuple(
        tuple(_table(((i, lsoa.weight) for i, lsoa in enumerate(pool) if lsoa.csp == csp), 500))
        for csp in range(len(CSPS))
    )
    return overall, per_csp


@cache
def _csp_by_population() -> tuple[int, ...]:
    """CSP indices in proportion to residents, for where people live."""
    return tuple(_table((index, float(row[1])) for index, row in enumerate(_CSP_TABLE)))


def _name(rng: random.Random, gender: str) -> tuple[str, str]:
    forenames = (
        _MALE_FORENAMES
        if gender == "M"
        else _FEMALE_FORENAMES
        if gender == "F"
        else _OTHER_FORENAMES
    )
    return _pick(rng, forenames), _pick(rng, _SURNAMES)


def _persons(seed: int, count: int, reference: date) -> list[_Person]:
    """A population of people who may turn up as suspects, pupils or first-time entrants.

    Ages are given at `reference` (the start of the period) and never fall below 11, so nobody
    is a suspect below the age of criminal responsibility within a few years of it.
    """
    rng = random.Random(f"persons:{seed}")
    r = rng.random
    gender_table = _table((("M", 78.0), ("F", 20.0), ("U", 1.5), ("X", 0.5)))
    csp_table = _csp_by_population()
    people: list[_Person] = []
    for position in range(count):
        gender = gender_table[int(r() * len(gender_table))]
        forename, surname = _name(rng, gender)
        age_days = int((11 + 55 * r() ** 1.5) * 365.25)
        # A multiplicative step coprime with the modulus makes refs unique but not sequential.
        number = 1_000_000 + (position * 7_919 + seed * 104_729) % 9_000_000
        people.append(
            _Person(
                nominal_ref=f"NOM{number}",
                forename=forename,
                surname=surname,
                dob=reference - timedelta(days=age_days),
                gender=gender,
                home_csp=csp_table[int(r() * len(csp_table))],
            )
        )
    return people


def _person_count(rows: int) -> int:
    return max(20, rows // 5)


def _activity_table(rng: random.Random, count: int) -> list[int]:
    """Person indices repeated by how active each person is, to sample suspects from.

    Activity follows a capped Pareto, so most people appear once or twice and a few dozen
    appear scores of times: the repeat-suspect and knife-carrier lists need that tail.
    """
    table: list[int] = []
    r = rng.random
    for index in range(count):
        activity = min(40, int((1.0 - r()) ** (-1 / 1.3)))
        table.extend([index] * activity)
    return table


def _day_table(start: date, end: date) -> list[int]:
    """Day offsets from `start`, each repeated by its weekday and season weight."""
    days = max(1, (end - start).days)
    table: list[int] = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        # Violence peaks in early summer; a gentle seasonal swing of +/-12%.
        season = 1.0 + 0.12 * math.cos(2 * math.pi * (day.timetuple().tm_yday - 182) / 365.25)
        table.extend([offset] * round(10 * _WEEKDAY_WEIGHTS[day.weekday()] * season))
    return table


@dataclass(frozen=True, slots=True)
class _GroupProfile:
    """Per-HMIC-group probabilities, looked up once per row instead of field by field."""

    codes: tuple[str, ...]
    domestic: float
    bladed: float
    victimless: bool


def _group_profiles() -> dict[str, _GroupProfile]:
    return {
        group: _GroupProfile(
            codes=tuple(_table(offences, 100)),
            domestic=_DOMESTIC_SHARE.get(group, 0.02),
            bladed=_BLADED_SHARE.get(group, 0.005),
            victimless=group in _VICTIMLESS,
        )
        for group, _, offences in _OFFENCES
    }


def _police_rows(rows: int, seed: int, start: date, end: date) -> Iterator[list[str]]:
    """Police rows as lists in `POLICE_FIELDS` order, behind both public APIs.

    Arguments are checked here, before the generator starts, so that a bad call fails at
    once rather than after a CSV file has been opened.
    """
    if rows < 0:
        raise ValueError("rows must not be negative")
    if end <= start:
        raise ValueError("end must be after start")
    return _police_stream(rows, seed, start, end)


def _police_stream(rows: int, seed: int, start: date, end: date) -> Iterator[list[str]]:
    """The hot loop.

    Written for speed (a million rows is the benchmark's input): every choice is an index into
    a precomputed table and everything looked up per row is bound to a local first.
    """
    rng = random.Random(f"police:{seed}")
    r = rng.random

    lsoas = _geography()
    places, by_csp = _place_tables()
    n_places = len(places)
    lsoa_code = [lsoa.code for lsoa in lsoas]
    lsoa_csp = [CSPS[lsoa.csp] for lsoa in lsoas]
    lsoa_lat = [lsoa.latitude for lsoa in lsoas]
    lsoa_lon = [lsoa.longitude for lsoa in lsoas]

    people = _persons(seed, _person_count(rows), start)
    person_cols = [
        (p.nominal_ref, p.forename, p.surname, p.dob.isoformat(), p.gender) for p in people
    ]
    person_home = [by_csp[p.home_csp] for p in people]
    activity = _activity_table(rng, len(people))
    n_activity = len(activity)

    days = _day_table(start, end)
    n_days = len(days)
    # Recorded dates trail the crime by up to 24 days, but never pass the period's last day: a
    # data set generated up to today holds nothing recorded in the future (the contract says so).
    last_day = (end - start).days - 1
    iso = [(start + timedelta(days=offset)).isoformat() for offset in range(last_day + 1)]
    weekday0 = start.weekday()
    hour_tables = [
        tuple(_table(enumerate(_HOUR_WEEKEND if weekday >= 4 else _HOUR_WEEKDAY)))
        for weekday in range(7)
    ]
    n_hours = len(hour_tables[0])
    two = [f"{value:02d}" for value in range(60)]
    night = frozenset({20, 21, 22, 23, 0, 1, 2, 3})
    delay_table = _table(((0, 60.0), (1, 18.0), (2, 8.0), (3, 4.0), (5, 4.0), (9, 3.0), (24, 3.0)))
    n_delay = len(delay_table)

    profiles = _group_profiles()
    groups = [(group, profiles[group]) for group in _table((g, w) for g, w, _ in _OFFENCES)]
    n_groups = len(groups)
    ages = [str(age) for age in range(121)]
    victim_genders = _table((("M", 52.0), ("F", 44.0), ("U", 3.0), ("X", 1.0)))
    n_victim_genders = len(victim_genders)
    domestic_rel = _table((("partner", 45.0), ("ex_partner", 25.0), ("family", 30.0)))
    other_rel = _table((("stranger", 45.0), ("acquaintance", 37.0), ("unknown", 18.0)))
    no_suspect = ("", "", "", "", "")

    written = 0
    sequence = 0
    incident_number = 0
    incident_ref = ""
    day = 0
    hour = 0
    committed_at = ""
    place = 0
    while written < rows:
        sequence += 1
        u = r()
        first = second = -1
        if u >= 0.30:
            first = activity[int(r() * n_activity)]
            if u >= 0.85 and rows - written > 1:
                second = activity[int(r() * n_activity)]
                while second == first:
                    second = activity[int(r() * n_activity)]

        # About one offence in ten shares its incident (time and place) with the previous one.
        if incident_number == 0 or r() >= 0.10:
            incident_number += 1
            day = days[int(r() * n_days)]
            hour = hour_tables[(weekday0 + day) % 7][int(r() * n_hours)]
            committed_at = f"{iso[day]} {two[hour]}:{two[int(r() * 60)]}:{two[int(r() * 60)]}"
            if first >= 0 and r() < 0.7:
                # Most people offend near home, which gives each a meaningful district.
                local = person_home[first]
                place = local[int(r() * len(local))]
            else:
                place = places[int(r() * n_places)]
            incident_ref = f"INC-{iso[day][:4]}{iso[day][5:7]}-{incident_number:07d}"

        group, profile = groups[int(r() * n_groups)]
        codes = profile.codes
        code = codes[int(r() * len(codes))]
        late = hour in night
        domestic = r() < profile.domestic
        # 10D is possession of an article with a blade or point: nearly always bladed.
        bladed = r() < (0.92 if code == "10D" else profile.bladed)
        public = r() < (0.05 if domestic else 0.62)
        licensed = not domestic and r() < (0.16 if late else 0.04)
        alcohol = r() < (0.38 if late else 0.16)
        drugs = group == "6" or r() < 0.08
        hate = r() < (0.08 if group == "8" else 0.02)
        if profile.victimless:
            victim_gender = ""
            victim_age = ""
            relationship = "unknown"
        else:
            victim_gender = victim_genders[int(r() * n_victim_genders)]
            victim_age = "" if r() < 0.08 else ages[int(8 + 72 * r() ** 1.5)]
            relationships = domestic_rel if domestic else other_rel
            relationship = relationships[int(r() * len(relationships))]

        # Points scatter a few hundred metres round the LSOA centre, which already sits far
        # enough inside the Hampshire box for the jitter never to leave it.
        common = [
            f"44/{sequence:07d}/{iso[day][2:4]}",
            incident_ref,
            code,
            group,
            TRUE if code in _MSV_CODES else FALSE,
            committed_at,
            iso[min(day + delay_table[int(r() * n_delay)], last_day)],
            lsoa_csp[place],
            lsoa_code[place],
            f"{lsoa_lat[place] + (r() - 0.5) * 0.008:.5f}",
            f"{lsoa_lon[place] + (r() - 0.5) * 0.012:.5f}",
            TRUE if public else FALSE,
            TRUE if bladed else FALSE,
            TRUE if domestic else FALSE,
            TRUE if licensed else FALSE,
            TRUE if alcohol else FALSE,
            TRUE if drugs else FALSE,
            TRUE if hate else FALSE,
            victim_gender,
            victim_age,
            relationship,
        ]
        yield [*common, *(person_cols[first] if first >= 0 else no_suspect)]
        written += 1
        if second >= 0:
            yield [*common, *person_cols[second]]
            written += 1


def generate_police(
    rows: int, *, seed: int = 1, start: date, end: date
) -> Iterator[dict[str, str]]:
    """`rows` police rows (field name -> CSV text, "" for null) committed in `[start, end)`."""
    for row in _police_rows(rows, seed, start, end):
        yield dict(zip(POLICE_FIELDS, row, strict=True))


def write_police_csv(
    path: Path,
    rows: int,
    *,
    seed: int = 1,
    start: date = DEMO_START,
    end: date = DEMO_END,
) -> int:
    """Write a police CSV with a header; returns the number of data rows written."""
    return _write_csv(path, POLICE_FIELDS, _police_rows(rows, seed, start, end))


# ---------------------------------------------------------------------------------------------
# The other partners' datasets


FIRE_FIELDS: tuple[str, ...] = (
    "incident_ref",
    "occurred_at",
    "csp",
    "lsoa_code",
    "latitude",
    "longitude",
    "fire_category",
)
HEALTH_FIELDS: tuple[str, ...] = (
    "attendance_ref",
    "assault_at",
    "csp",
    "lsoa_code",
    "weapon",
    "age_band",
    "sex",
)
EDUCATION_FIELDS: tuple[str, ...] = (
    "exclusion_ref",
    "pupil_upn",
    "forename",
    "surname",
    "dob",
    "school_urn",
    "csp",
    "exclusion_type",
    "start_date",
    "sessions",
)
YOUTH_JUSTICE_FIELDS: tuple[str, ...] = (
    "entry_ref",
    "yjs",
    "forename",
    "surname",
    "dob",
    "gender",
    "csp",
    "entry_date",
    "outcome",
    "offence_group",
)
POPULATION_FIELDS: tuple[str, ...] = ("area_code", "area_type", "year", "population")
IMD_FIELDS: tuple[str, ...] = ("lsoa_code", "csp", "imd_decile")

# Demo sizes: big enough for every product to show something above the suppression threshold,
# small enough for `together demo load` to take seconds.
DEFAULT_ROWS: dict[str, int] = {
    "police.occurrences": 20_000,
    "fire.deliberate_fires": 3_000,
    "health.ed_assaults": 2_500,
    "education.exclusions": 1_500,
    "youth_justice.first_time_entrants": 400,
}
# Estimates from this year up to the year of the anchor: rates find one for any period of the
# demo, and for the fixed periods of older data sets made with it.
POPULATION_FIRST_YEAR = 2019

# Deliberate fires: spring grass fires, the summer holidays and bonfire night; after school and
# into the evening.
_FIRE_MONTH_WEIGHTS = (0.7, 0.8, 1.2, 1.7, 1.5, 1.2, 1.3, 1.4, 1.0, 0.9, 1.2, 0.8)
# fmt: off
_FIRE_HOURS = (
    1.5, 1.2, 1.0, 0.8, 0.5, 0.4, 0.4, 0.5, 0.7, 0.9, 1.1, 1.3,
    1.6, 2.0, 2.6, 3.4, 4.2, 4.8, 5.2, 5.4, 5.2, 4.4, 3.2, 2.2,
)
# fmt: on
_WEAPONS = (
    ("body", 45.0),
    ("none", 12.0),
    ("knife_or_bladed", 10.0),
    ("blunt", 9.0),
    ("other", 6.0),
    ("firearm", 0.4),
    ("unknown", 17.6),
)
_AGE_BANDS = (
    ("0-10", 1.0),
    ("11-15", 6.0),
    ("16-17", 7.0),
    ("18-24", 24.0),
    ("25-34", 25.0),
    ("35-44", 17.0),
    ("45-54", 11.0),
    ("55-64", 6.0),
    ("65+", 3.0),
)
# Invented emergency-department codes, each serving the CSPs nearest to it.
_ED_FOR_CSP = {
    "Basingstoke and Deane": "EDBAS",
    "East Hampshire": "EDPOR",
    "Eastleigh": "EDSOU",
    "Fareham": "EDPOR",
    "Gosport": "EDPOR",
    "Hart": "EDFRM",
    "Havant": "EDPOR",
    "Isle of Wight": "EDIOW",
    "New Forest": "EDSOU",
    "Portsmouth": "EDPOR",
    "Rushmoor": "EDFRM",
    "Southampton": "EDSOU",
    "Test Valley": "EDWIN",
    "Winchester": "EDWIN",
}
# Education and youth justice are organised by the four upper-tier councils.
_LA_FOR_CSP = {"Portsmouth": "851", "Southampton": "852", "Isle of Wight": "921"}
_HAMPSHIRE_LA = "850"
_YJS_FOR_CSP = {
    "Portsmouth": "yjs-portsmouth",
    "Southampton": "yjs-southampton",
    "Isle of Wight": "yjs-iow",
}
_OUTCOMES = (
    ("youth_caution", 35.0),
    ("youth_conditional_caution", 25.0),
    ("referral_order", 30.0),
    ("other_court_disposal", 10.0),
)
_FTE_OFFENCE_GROUPS = (
    ("1b", 24.0),
    ("1c", 18.0),
    ("2", 2.0),
    ("3b", 7.0),
    ("4", 16.0),
    ("5", 9.0),
    ("6", 9.0),
    ("7", 10.0),
    ("8", 4.0),
    ("9", 1.0),
)


def _weighted_days(start: date, end: date, weight: Callable[[date], float]) -> list[date]:
    table: list[date] = []
    for offset in range(max(1, (end - start).days)):
        day = start + timedelta(days=offset)
        table.extend([day] * round(10 * weight(day)))
    return table


def _clock(rng: random.Random, day: date, hours: Sequence[int]) -> str:
    hour = hours[int(rng.random() * len(hours))]
    minute, second = int(rng.random() * 60), int(rng.random() * 60)
    return f"{day.isoformat()} {hour:02d}:{minute:02d}:{second:02d}"


def _point(rng: random.Random, lsoa: _Lsoa) -> tuple[str, str]:
    latitude = lsoa.latitude + (rng.random() - 0.5) * 0.008
    longitude = lsoa.longitude + (rng.random() - 0.5) * 0.012
    return f"{latitude:.5f}", f"{longitude:.5f}"


def _fire_rows(rows: int, seed: int, start: date, end: date) -> Iterator[list[str]]:
    rng = random.Random(f"fire:{seed}")
    lsoas = _geography()
    places, _ = _place_tables()
    days = _weighted_days(start, end, lambda d: _FIRE_MONTH_WEIGHTS[d.month - 1])
    hours = _table(enumerate(_FIRE_HOURS))
    for number in range(1, rows + 1):
        day = _pick(rng, days)
        lsoa = lsoas[_pick(rng, places)]
        latitude, longitude = _point(rng, lsoa)
        yield [
            f"FRS/{day.year % 100:02d}/{number:06d}",
            _clock(rng, day, hours),
            CSPS[lsoa.csp],
            lsoa.code,
            latitude,
            longitude,
            "secondary" if rng.random() < 0.72 else "primary",
        ]


def _health_rows(rows: int, seed: int, start: date, end: date) -> Iterator[list[str]]:
    rng = random.Random(f"health:{seed}")
    lsoas = _geography()
    places, _ = _place_tables()
    days = _weighted_days(start, end, lambda d: _WEEKDAY_WEIGHTS[d.weekday()])
    weekday_hours = _table(enumerate(_HOUR_WEEKDAY))
    weekend_hours = _table(enumerate(_HOUR_WEEKEND))
    weapons = _table(_WEAPONS)
    bands = _table(_AGE_BANDS)
    sexes = _table((("M", 68.0), ("F", 30.0), ("X", 0.5), ("U", 1.5)))
    for number in range(1, rows + 1):
        day = _pick(rng, days)
        lsoa = lsoas[_pick(rng, places)]
        csp = CSPS[lsoa.csp]
        hours = weekend_hours if day.weekday() >= 4 else weekday_hours
        yield [
            f"{_ED_FOR_CSP[csp]}-{day.year % 100:02d}-{number:06d}",
            _clock(rng, day, hours),
            csp,
            "" if rng.random() < 0.07 else lsoa.code,
            _pick(rng, weapons),
            "" if rng.random() < 0.05 else _pick(rng, bands),
            _pick(rng, sexes),
        ]


def _population_rows(as_of: date) -> Iterator[list[str]]:
    for index, (csp, population, *_) in enumerate(_CSP_TABLE):
        # Mid-2021 figures moved by a steady growth rate of 0.3% to 1.2% a year, fixed per CSP.
        growth = 0.003 + 0.001 * ((index * 7) % 10)
        for year in range(POPULATION_FIRST_YEAR, max(as_of.year, POPULATION_FIRST_YEAR) + 1):
            yield [csp, "csp", str(year), str(round(population * (1 + growth) ** (year - 2021)))]


def _imd_rows() -> Iterator[list[str]]:
    for lsoa in _geography():
        yield [lsoa.code, CSPS[lsoa.csp], str(lsoa.imd_decile)]


# --- people known to several partners


def _add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _age_window(
    dob: date, youngest: int, oldest: int, period: tuple[date, date]
) -> tuple[date, date] | None:
    """Days within `period` on which someone is aged `youngest` up to `oldest`."""
    low = max(period[0], _add_years(dob, youngest))
    high = min(period[1], _add_years(dob, oldest + 1))
    return (low, high) if low < high else None


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize(
        "NFC", "".join(c for c in decomposed if not unicodedata.combining(c))
    )


def _variant(rng: random.Random, name: str) -> str:
    """The name as another agency's clerk might have typed it.

    Only case, accents, spacing and punctuation change: exactly what the person key folds
    away, so the variants still link (and a raw-name join would miss them).
    """
    u = rng.random()
    if u < 0.45:
        return name
    if u < 0.60:
        return name.upper()
    if u < 0.68:
        return name.lower()
    if u < 0.80:
        return _strip_accents(name)
    if u < 0.92:
        # "O'Brien" -> "OBRIEN", "Nguyễn" -> "NGUYEN", "Smith-Jones" -> "SMITH JONES"
        return _strip_accents(name).upper().replace("'", "").replace("-", " ")
    return name.replace(" ", "") if " " in name else f"{name} "


@cache
def _young_suspects(seed: int, period: tuple[date, date]) -> tuple[_Person, ...]:
    """Suspects in the demo-size police file who were under 18 at some point of the period.

    Ordered by a seeded shuffle; education and youth justice both draw from the front of the
    list, so some children turn up with all three partners (what the person profile shows).
    """
    rows = DEFAULT_ROWS["police.occurrences"]
    start, end = period
    people = {p.nominal_ref: p for p in _persons(seed, _person_count(rows), start)}
    column = POLICE_FIELDS.index("suspect_nominal_ref")
    seen = {row[column] for row in _police_rows(rows, seed, start, end) if row[column]}
    young = [people[ref] for ref in sorted(seen) if _age_window(people[ref].dob, 10, 17, period)]
    rng = random.Random(f"linkage:{seed}")
    keys = {person.nominal_ref: rng.random() for person in young}
    return tuple(sorted(young, key=lambda person: keys[person.nominal_ref]))


def _invented_child(
    rng: random.Random, youngest: int, oldest: int, period: tuple[date, date]
) -> _Person:
    """A child known only to this partner, of an age to be seen in the period."""
    gender = _pick(rng, _child_genders())
    forename, surname = _name(rng, gender)
    start, end = period
    seen_on = start + timedelta(days=int(rng.random() * (end - start).days))
    age_days = int((youngest + rng.random() * (oldest + 1 - youngest)) * 365.25)
    return _Person(
        nominal_ref="",
        forename=forename,
        surname=surname,
        dob=seen_on - timedelta(days=age_days),
        gender=gender,
        home_csp=_pick(rng, _csp_by_population()),
    )


@cache
def _child_genders() -> tuple[str, ...]:
    return tuple(_table((("M", 74.0), ("F", 24.0), ("U", 1.5), ("X", 0.5))))


def _school_day(rng: random.Random, low: date, high: date) -> date | None:
    """A weekday in term time within `[low, high)`, if one is found quickly."""
    span = (high - low).days
    for _ in range(20):
        day = low + timedelta(days=int(rng.random() * span))
        christmas = (day.month == 12 and day.day >= 20) or (day.month == 1 and day.day < 4)
        if day.weekday() < 5 and day.month != 8 and not christmas:
            return day
    return None


@cache
def _schools() -> tuple[tuple[tuple[str, str], ...], ...]:
    """Per CSP, its secondary schools as (URN, four-digit establishment number)."""
    rng = random.Random(_GEOGRAPHY_SEED + 1)
    used: set[int] = set()
    schools: list[tuple[tuple[str, str], ...]] = []
    establishment = 4000
    for _, population, *_ in _CSP_TABLE:
        mine: list[tuple[str, str]] = []
        for _ in range(max(3, population // 18_000)):
            urn = 100_000 + int(rng.random() * 50_000)
            while urn in used:
                urn += 1
            used.add(urn)
            establishment += 1 + int(rng.random() * 5)
            mine.append((str(urn), str(establishment)))
        schools.append(tuple(mine))
    return tuple(schools)


# The DfE's UPN check letters: 23 of them (never I, O or S, easily misread as 1, 0 or 5).
_UPN_LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZ"


def _with_check_letter(rest: str) -> str:
    """A UPN from its last 12 characters: the check letter is the sum of characters 2 to 13,
    weighted 2 to 13 (a letter counts as its place among the check letters), modulo 23."""
    total = sum(
        weight * (int(char) if char.isdigit() else _UPN_LETTERS.index(char))
        for weight, char in enumerate(rest, start=2)
    )
    return _UPN_LETTERS[total % 23] + rest


def _education_rows(rows: int, seed: int, period: tuple[date, date]) -> Iterator[list[str]]:
    rng = random.Random(f"education:{seed}")
    linked = [p for p in _young_suspects(seed, period) if _age_window(p.dob, 11, 15, period)]
    exclusions_per_pupil = _table(
        ((1, 55.0), (2, 20.0), (3, 10.0), (4, 6.0), (5, 4.0), (6, 3.0), (8, 2.0))
    )
    suspension_days = _table(((1, 40.0), (2, 25.0), (3, 15.0), (5, 12.0), (10, 6.0), (15, 2.0)))
    serials: dict[tuple[str, int], int] = {}
    written = 0
    next_linked = 0
    while written < rows:
        if next_linked < len(linked) and rng.random() < 0.35:
            pupil = linked[next_linked]
            next_linked += 1
        else:
            pupil = _invented_child(rng, 11, 15, period)
        window = _age_window(pupil.dob, 11, 15, period)
        if window is None:
            continue
        csp = CSPS[pupil.home_csp]
        urn, establishment = _pick(rng, _schools()[pupil.home_csp])
        la = _LA_FOR_CSP.get(csp, _HAMPSHIRE_LA)
        # A UPN: check letter, LA, establishment, year of issue, serial (12 digits in all).
        issued = (pupil.dob.year + 5) % 100
        serial = serials[(urn, issued)] = serials.get((urn, issued), 0) + 1
        upn = _with_check_letter(f"{la}{establishment}{issued:02d}{serial:03d}")
        if rng.random() < 0.03:
            upn = ""  # not every LA return carries it
        forename, surname = _variant(rng, pupil.forename), _variant(rng, pupil.surname)
        found = (_school_day(rng, *window) for _ in range(_pick(rng, exclusions_per_pupil)))
        dates = sorted({day for day in found if day is not None})
        # A permanent exclusion ends the pupil's time at the school: it can only come last.
        permanent_last = rng.random() < 0.05
        for position, day in enumerate(dates):
            if written >= rows:
                return
            written += 1
            permanent = permanent_last and position == len(dates) - 1
            yield [
                f"EX{la}-{day.year % 100:02d}-{written:06d}",
                upn,
                forename,
                surname,
                pupil.dob.isoformat(),
                urn,
                csp,
                "permanent" if permanent else "suspension",
                day.isoformat(),
                "" if permanent else str(2 * _pick(rng, suspension_days) - int(rng.random() < 0.1)),
            ]


def _youth_justice_rows(rows: int, seed: int, period: tuple[date, date]) -> Iterator[list[str]]:
    rng = random.Random(f"youth_justice:{seed}")
    linked = list(_young_suspects(seed, period))
    outcomes = _table(_OUTCOMES)
    groups = _table(_FTE_OFFENCE_GROUPS)
    written = 0
    next_linked = 0
    while written < rows:
        if next_linked < len(linked) and rng.random() < 0.45:
            child = linked[next_linked]
            next_linked += 1
        else:
            child = _invented_child(rng, 10, 17, period)
        window = _age_window(child.dob, 10, 17, period)
        if window is None:
            continue
        low, high = window
        entry = low + timedelta(days=int(rng.random() * (high - low).days))
        csp = CSPS[child.home_csp]
        yjs = _YJS_FOR_CSP.get(csp, "yjs-hampshire")
        written += 1
        yield [
            f"FTE-{yjs.removeprefix('yjs-').upper()}-{written:05d}",
            yjs,
            _variant(rng, child.forename),
            _variant(rng, child.surname),
            child.dob.isoformat(),
            child.gender,
            csp,
            entry.isoformat(),
            _pick(rng, outcomes),
            _pick(rng, groups),
        ]


_HEADERS: dict[str, tuple[str, ...]] = {
    "police.occurrences": POLICE_FIELDS,
    "fire.deliberate_fires": FIRE_FIELDS,
    "health.ed_assaults": HEALTH_FIELDS,
    "education.exclusions": EDUCATION_FIELDS,
    "youth_justice.first_time_entrants": YOUTH_JUSTICE_FIELDS,
    "reference.population": POPULATION_FIELDS,
    "la.imd": IMD_FIELDS,
}


def write_dataset_csv(
    dataset_id: str,
    path: Path,
    *,
    seed: int = 1,
    rows: int | None = None,
    as_of: date | None = None,
) -> int:
    """Write one dataset's CSV; returns the number of data rows written.

    The data end on `as_of` (see `demo_period`), by default today where the partnership works;
    the same seed and anchor give the same bytes. `rows` defaults to the demo size. The
    reference datasets (`reference.population`, `la.imd`) have a natural size (every CSP and
    year, every LSOA); `rows` only truncates them.
    Education and youth justice link to the suspects of the demo-size police file made with
    the same seed, whatever `rows` is.
    """
    if dataset_id not in _HEADERS:
        raise ValueError(f"unknown dataset {dataset_id!r}; expected one of {', '.join(DATASETS)}")
    if rows is not None and rows < 0:
        raise ValueError("rows must not be negative")
    count = DEFAULT_ROWS.get(dataset_id, 0) if rows is None else rows
    anchor = london_today() if as_of is None else as_of
    period = demo_period(anchor)
    produced: Iterable[list[str]]
    if dataset_id == "police.occurrences":
        produced = _police_rows(count, seed, *period)
    elif dataset_id == "fire.deliberate_fires":
        produced = _fire_rows(count, seed, *period)
    elif dataset_id == "health.ed_assaults":
        produced = _health_rows(count, seed, *period)
    elif dataset_id == "education.exclusions":
        produced = _education_rows(count, seed, period)
    elif dataset_id == "youth_justice.first_time_entrants":
        produced = _youth_justice_rows(count, seed, period)
    else:
        natural = _population_rows(anchor) if dataset_id == "reference.population" else _imd_rows()
        produced = natural if rows is None else itertools.islice(natural, rows)
    return _write_csv(path, _HEADERS[dataset_id], produced)


def write_demo_set(
    directory: Path,
    *,
    seed: int = 1,
    as_of: date | None = None,
    rows: Mapping[str, int] | None = None,
) -> dict[str, Path]:
    """One CSV per dataset, `<dataset id>.csv`, in `directory`; returns dataset id -> path.

    The set ends on `as_of` (default today where the partnership works), so that products'
    relative defaults and the published tables find data on whatever day it is loaded; `rows`
    overrides the demo size of some datasets.
    """
    anchor = london_today() if as_of is None else as_of
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for dataset_id in DATASETS:
        path = directory / f"{dataset_id}.csv"
        count = None if rows is None else rows.get(dataset_id)
        write_dataset_csv(dataset_id, path, seed=seed, rows=count, as_of=anchor)
        written[dataset_id] = path
    return written


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> int:
    """Write a header and rows as UTF-8 CSV with LF line ends; returns the data rows written.

    Plain `",".join` is about four times faster than `csv.writer` here; a row whose joined text
    shows a comma inside a value, a quote or a line break goes through `csv.writer` instead, so
    every value still reads back exactly.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    spill = io.StringIO()
    quoting = csv.writer(spill, lineterminator="\n")
    count = 0
    with path.open("w", encoding="utf-8", newline="", buffering=1 << 20) as handle:
        write = handle.write
        for row in itertools.chain((header,), rows):
            line = ",".join(row)
            if line.count(",") != len(row) - 1 or '"' in line or "\n" in line or "\r" in line:
                spill.seek(0)
                spill.truncate()
                quoting.writerow(row)
                write(spill.getvalue())
            else:
                write(line + "\n")
            count += 1
    return count - 1
