"""The habitual knife carrier rule: who is on the partnership's list as of a date.

A person is on the list with at least ``min_offences`` qualifying offences in the lookback
window, one of them in the recent window, all before the date; the partnership's file says
which offences qualify and which are excluded (``config``). The list gives the product the
table ``habitual_knife_carriers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import pyarrow as pa

from services.contracts.protection import Protector
from services.products import engine, views
from services.products.config import POLICE_DATASET, PartnershipConfig
from services.products.dates import add_months, age_on
from services.storage.service import VersionInfo

HKC_SCHEMA = pa.schema(
    [
        pa.field("person", pa.string()),
        pa.field("offences", pa.int64()),
        pa.field("recent_offences", pa.int64()),
        pa.field("last_offence_date", pa.date32()),
        pa.field("gender", pa.string()),
        pa.field("age", pa.int64()),
    ]
)


def habitual_knife_carriers(
    versions: Mapping[str, VersionInfo],
    as_of: date,
    *,
    partnership: PartnershipConfig,
    protector: Protector,
    areas: frozenset[str] | None = None,
) -> pa.Table:
    """The habitual knife carrier list as of a date: one row per person, sorted by person.

    Columns: ``person`` (the police person id's pseudonym), ``offences`` (qualifying offences
    in the lookback), ``recent_offences`` (in the recent window), ``last_offence_date``,
    ``gender`` (the most recent recorded) and ``age`` at ``as_of`` (from the most recent
    recorded date of birth, decrypted in memory and never kept). Only offences in ``areas``
    count (None: every area).
    """
    info = versions.get(POLICE_DATASET)
    if info is None or not info.files:
        return HKC_SCHEMA.empty_table()
    definition = partnership.habitual_knife_carriers
    qualifying = partnership.hkc_qualifying_where.sql
    exclude = partnership.hkc_exclude_where
    if exclude is not None:
        qualifying = f"{qualifying} AND NOT coalesce({exclude.sql}, false)"
    area_filter = views.area_filter(areas)
    # Gender and date of birth are the person's most recent non-null values up to as_of: a
    # later correction wins, and a later record (after as_of) cannot change an earlier list.
    # ``recency`` orders records as ORDER BY committed_at DESC, occurrence_ref DESC does (NULLs
    # last). The person is the only group key of ``latest`` and nothing filters its scan (the
    # conditions are its aggregates'), so that DuckDB passes the carriers down to that scan as
    # a Bloom filter: only their records are read for gender and date of birth.
    # The text holds only the compiled partnership predicates and checked names; values are
    # bound.
    recency = "(committed_at, occurrence_ref IS NOT NULL, occurrence_ref)"
    recorded = f"committed_at < $as_of AND {area_filter}"
    sql = f"""
        WITH carriers AS (
            SELECT suspect_nominal_ref_pseudonym AS person,
                count(DISTINCT occurrence_ref) AS offences,
                count(DISTINCT occurrence_ref)
                    FILTER (WHERE committed_at >= $recent) AS recent_offences,
                max(committed_at) AS last_offence_at
            FROM police
            WHERE suspect_nominal_ref_pseudonym IS NOT NULL
                AND committed_at >= $lookback AND committed_at < $as_of
                AND coalesce({qualifying}, false) AND {area_filter}
            GROUP BY person
            HAVING offences >= $min_offences AND recent_offences >= 1
        ),
        latest AS (
            SELECT suspect_nominal_ref_pseudonym AS person,
                arg_max(suspect_gender, {recency})
                    FILTER (WHERE {recorded} AND suspect_gender IS NOT NULL) AS gender,
                arg_max(suspect_dob_enc, {recency})
                    FILTER (WHERE {recorded} AND suspect_dob_enc IS NOT NULL) AS dob_enc
            FROM police
            GROUP BY person
        )
        SELECT person, offences, recent_offences,
            CAST(last_offence_at AS DATE) AS last_offence_date, gender, dob_enc
        FROM carriers JOIN latest USING (person)
        ORDER BY person
    """  # noqa: S608
    table = engine.query(
        sql,
        {
            "as_of": as_of,
            "lookback": add_months(as_of, -definition.lookback_months),
            "recent": add_months(as_of, -definition.recent_months),
            "min_offences": definition.min_offences,
        },
        # The police contract's view (coded fields as their main code), as every predicate
        # of the partnership's file is written against it.
        {"police": views.relation(partnership.police, info.files)},
    )
    ciphertexts = table.column("dob_enc")
    ages: list[int | None] = []
    if table.num_rows:
        # Protector.decrypt works once per distinct ciphertext; the dates stay in this frame.
        dobs = protector.decrypt(ciphertexts, aad=f"{POLICE_DATASET}/suspect_dob").to_pylist()
        ages = [None if dob is None else age_on(date.fromisoformat(dob), as_of) for dob in dobs]
        del dobs
    return pa.table(
        [
            table.column("person").cast(pa.string()),
            table.column("offences").cast(pa.int64()),
            table.column("recent_offences").cast(pa.int64()),
            table.column("last_offence_date").cast(pa.date32()),
            table.column("gender").cast(pa.string()),
            pa.array(ages, pa.int64()),
        ],
        schema=HKC_SCHEMA,
    )
