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
from typing import Any

import pyarrow as pa

from services.contracts.protection import Protector
from services.products import engine, views
from services.products.dates import add_months
from services.products.definition import POLICE_PEOPLE_SOURCE, ProductDefinition
from services.products.engine import ProductResult
from services.storage.service import VersionInfo

PERSON_ID_DOMAIN = "person-id"
PERSON_ID_LENGTH = 32
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
) -> pa.Table:
    """The people table of a run (see the module docstring); empty with no police version."""
    spec = definition.spec.people
    police = versions.get(POLICE_PEOPLE_SOURCE)
    if spec is None or police is None:
        return PEOPLE_SCHEMA.empty_table()
    as_of = params[spec.as_of] if spec.as_of is not None else today
    serious = definition.partnership.serious_violence_where.sql
    # The text holds the compiled partnership predicate; the relation is built from storage
    # paths; values are bound.
    sql = f"""
        WITH rows AS (
            SELECT suspect_nominal_ref_pseudonym AS person, occurrence_ref, committed_at, csp,
                person_key, suspect_nominal_ref_enc, suspect_forename_enc, suspect_surname_enc,
                suspect_dob_enc, suspect_gender,
                coalesce({serious}, false) AS serious
            FROM police_all
            WHERE suspect_nominal_ref_pseudonym IS NOT NULL AND committed_at < $as_of
        ),
        latest AS (
            SELECT person,
                first(person_key ORDER BY committed_at DESC, occurrence_ref DESC)
                    FILTER (WHERE person_key IS NOT NULL) AS person_key,
                first(suspect_gender ORDER BY committed_at DESC, occurrence_ref DESC)
                    FILTER (WHERE suspect_gender IS NOT NULL) AS gender,
                first(suspect_nominal_ref_enc ORDER BY committed_at DESC, occurrence_ref DESC)
                    FILTER (WHERE suspect_nominal_ref_enc IS NOT NULL) AS nominal_ref_enc,
                first(suspect_forename_enc ORDER BY committed_at DESC, occurrence_ref DESC)
                    FILTER (WHERE suspect_forename_enc IS NOT NULL) AS forename_enc,
                first(suspect_surname_enc ORDER BY committed_at DESC, occurrence_ref DESC)
                    FILTER (WHERE suspect_surname_enc IS NOT NULL) AS surname_enc,
                first(suspect_dob_enc ORDER BY committed_at DESC, occurrence_ref DESC)
                    FILTER (WHERE suspect_dob_enc IS NOT NULL) AS dob_enc,
                first(csp ORDER BY committed_at DESC, occurrence_ref DESC, csp)
                    FILTER (WHERE csp IS NOT NULL) AS last_csp
            FROM rows
            GROUP BY person
        ),
        by_area AS (
            SELECT person, csp, count(DISTINCT occurrence_ref) AS offences,
                max(committed_at) AS last_at
            FROM rows
            WHERE serious AND committed_at >= $window AND csp IS NOT NULL
            GROUP BY person, csp
        ),
        main_area AS (
            SELECT person, first(csp ORDER BY offences DESC, last_at DESC, csp) AS csp
            FROM by_area
            GROUP BY person
        )
        SELECT latest.person, latest.person_key, coalesce(main_area.csp, latest.last_csp)
                AS district,
            latest.gender, latest.nominal_ref_enc, latest.forename_enc, latest.surname_enc,
            latest.dob_enc
        FROM latest LEFT JOIN main_area USING (person)
        ORDER BY latest.person
    """  # noqa: S608
    table = engine.query(
        sql,
        {"as_of": as_of, "window": add_months(as_of, -DISTRICT_WINDOW_MONTHS)},
        {"police_all": views.relation(definition.contracts[POLICE_PEOPLE_SOURCE], police.files)},
    )
    persons = table.column("person").combine_chunks().cast(pa.string())
    return pa.table(
        [
            persons,
            person_ids(protector, persons),
            table.column("person_key").cast(pa.string()),
            table.column("district").cast(pa.string()),
            table.column("gender").cast(pa.string()),
            *(
                table.column(name).cast(pa.binary())
                for name in ("nominal_ref_enc", "forename_enc", "surname_enc", "dob_enc")
            ),
        ],
        schema=PEOPLE_SCHEMA,
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
