"""Level 3: the people table, person ids, and revealing names after audit.

A Level 3 product reads the table ``people`` (one row per police person as of a date), built
here from every police record before that date, not only those in the reader's areas: a
person's district is the CSP of most of their serious-violence offences in the 12 months before
the date (ties: the most recent), or, with none, the CSP of their most recent offence. The
engine then limits rows to the reader's areas by that district.

Names, dates of birth and police person ids stay ciphertext through the whole run. ``reveal``
decrypts them only when the service has decided, audited and committed the read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import date
from functools import partial
from typing import Any

import pyarrow as pa

from services.contracts.protection import Protector
from services.products import views
from services.products.dates import add_months
from services.products.definition import POLICE_PEOPLE_SOURCE, ProductDefinition
from services.products.engine import ProductResult, QueryTable
from services.storage.service import VersionInfo

PERSON_ID_DOMAIN = "person-id"
PERSON_ID_LENGTH = 32
# The function the people query computes person ids with (``person_ids``).
PERSON_ID_FUNCTION = "people_person_id"
DISTRICT_WINDOW_MONTHS = 12

PEOPLE_SCHEMA = pa.schema(
    [
        pa.field("person", pa.string()),
        pa.field("person_id", pa.string()),
        pa.field("person_key", pa.string()),
        pa.field("district", pa.string()),
        pa.field("gender", pa.string()),
        pa.field("nominal_ref_enc", pa.binary()),
        pa.field("forename_enc", pa.binary()),
        pa.field("surname_enc", pa.binary()),
        pa.field("dob_enc", pa.binary()),
    ]
)

ASSESSMENTS_SCHEMA = pa.schema(
    [
        pa.field("person_id", pa.string()),
        pa.field("rag", pa.string()),
        pa.field("lead_agency", pa.string()),
        pa.field("graded_at", pa.timestamp("us", tz="UTC")),
        pa.field("graded_by_org", pa.string()),
    ]
)


def person_ids(protector: Protector, persons: pa.Array) -> pa.Array:
    """The platform's person ids for police person pseudonyms: stable, and not the pseudonym.

    A keyed hash of the police person id's pseudonym in a domain of its own, so a person id
    given out at Level 3 cannot be joined to the stored pseudonyms by anyone without the key.
    """
    ids = protector.pseudonymise(persons, domain=PERSON_ID_DOMAIN)
    return pa.array(
        [None if value is None else value[:PERSON_ID_LENGTH] for value in ids.to_pylist()],
        pa.string(),
    )


def build_people(
    definition: ProductDefinition,
    params: Mapping[str, Any],
    versions: Mapping[str, VersionInfo],
    today: date,
    protector: Protector,
) -> pa.Table | QueryTable:
    """The people table of a run (see the module docstring); empty with no police version.

    Given as a query over the run's own connection, not as rows: DuckDB passes the keys of the
    product's joins down into it, so a list of a few hundred people reads the records of those
    people, and person ids are computed for the rows the product reads, not for every person
    in the police data.
    """
    spec = definition.spec.people
    police = versions.get(POLICE_PEOPLE_SOURCE)
    if spec is None or police is None:
        return PEOPLE_SCHEMA.empty_table()
    as_of = params[spec.as_of] if spec.as_of is not None else today
    serious = definition.partnership.serious_violence_where.sql
    police_all = views.relation(definition.contracts[POLICE_PEOPLE_SOURCE], police.files)
    # Each record's place in time, latest greatest: by committed_at, then occurrence_ref, with
    # a record without an occurrence_ref before any with one at the same time (as ORDER BY
    # committed_at DESC, occurrence_ref DESC, whose NULLs come last).
    recency = "(committed_at, occurrence_ref IS NOT NULL, occurrence_ref)"
    # Nothing filters the scan of ``latest`` (the conditions are its aggregates'), and the
    # person is its only group key, so that DuckDB passes the keys of the product's join (the
    # people it lists) down to that scan as a Bloom filter: a filter there would stop it.
    # The text holds the compiled partnership predicate, the relation built from storage
    # paths, and names fixed here; values are bound.
    before = "committed_at < $as_of"
    sql = f"""
        WITH latest AS (
            SELECT suspect_nominal_ref_pseudonym AS person,
                arg_max(person_key, {recency})
                    FILTER (WHERE {before} AND person_key IS NOT NULL) AS person_key,
                arg_max(suspect_gender, {recency})
                    FILTER (WHERE {before} AND suspect_gender IS NOT NULL) AS gender,
                arg_max(suspect_nominal_ref_enc, {recency})
                    FILTER (WHERE {before} AND suspect_nominal_ref_enc IS NOT NULL)
                    AS nominal_ref_enc,
                arg_max(suspect_forename_enc, {recency})
                    FILTER (WHERE {before} AND suspect_forename_enc IS NOT NULL) AS forename_enc,
                arg_max(suspect_surname_enc, {recency})
                    FILTER (WHERE {before} AND suspect_surname_enc IS NOT NULL) AS surname_enc,
                arg_max(suspect_dob_enc, {recency})
                    FILTER (WHERE {before} AND suspect_dob_enc IS NOT NULL) AS dob_enc,
                first(csp ORDER BY committed_at DESC, occurrence_ref DESC, csp)
                    FILTER (WHERE {before} AND csp IS NOT NULL) AS last_csp
            FROM {police_all}
            GROUP BY person
            -- A person: a police person id with a record before as_of.
            HAVING count(suspect_nominal_ref_pseudonym) FILTER (WHERE {before}) > 0
        ),
        by_area AS (
            SELECT suspect_nominal_ref_pseudonym AS person, csp,
                count(DISTINCT occurrence_ref) AS offences, max(committed_at) AS last_at
            FROM {police_all}
            WHERE suspect_nominal_ref_pseudonym IS NOT NULL AND {before}
                AND committed_at >= $window AND csp IS NOT NULL
                AND coalesce({serious}, false)
            GROUP BY person, csp
        ),
        main_area AS (
            SELECT person, first(csp ORDER BY offences DESC, last_at DESC, csp) AS csp
            FROM by_area
            GROUP BY person
        )
        SELECT latest.person, {PERSON_ID_FUNCTION}(latest.person) AS person_id,
            latest.person_key, coalesce(main_area.csp, latest.last_csp) AS district,
            latest.gender, latest.nominal_ref_enc, latest.forename_enc, latest.surname_enc,
            latest.dob_enc
        FROM latest LEFT JOIN main_area USING (person)
    """  # noqa: S608
    return QueryTable(
        sql=sql,
        params={"as_of": as_of, "window": add_months(as_of, -DISTRICT_WINDOW_MONTHS)},
        functions={PERSON_ID_FUNCTION: partial(person_ids, protector)},
    )


def subjects(defn: ProductDefinition, rows: list[dict[str, Any]]) -> list[str]:
    """The person ids a result names, for its audit event."""
    spec = defn.spec.people
    if spec is None:
        return []
    return sorted({row[spec.person_id] for row in rows if row.get(spec.person_id)})


def reveal(defn: ProductDefinition, result: ProductResult, protector: Protector) -> ProductResult:
    """The result with its ciphertext columns decrypted. Call only after the read is audited."""
    columns = [c for c in defn.revealed_columns().items() if c[0] in result.columns]
    if not columns or not result.rows:
        return result
    rows = [dict(row) for row in result.rows]
    for name, (dataset, field_name) in columns:
        plain = protector.decrypt(
            pa.array([row.get(name) for row in rows], pa.binary()),
            aad=f"{dataset}/{field_name}",
        ).to_pylist()
        for row, value in zip(rows, plain, strict=True):
            row[name] = value
    return replace(result, rows=rows)
