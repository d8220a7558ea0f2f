"""Which stored rows a deletion removes: those past retention, or one person's.

A selector names the stored columns it needs (so a file is read with those columns alone when
only counting) and gives, for a table holding them, a mask that is true for each row to remove.
A person is found through the same keyed pseudonymisation the rows were stored with: the
identifying values an IG lead types in are pseudonymised (or turned into the cross-agency person
key) and compared with the stored pseudonyms, so no stored value is decrypted to search.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from services.contracts.columns import PERSON_KEY_COLUMN
from services.contracts.model import Contract, Protection
from services.contracts.protection import Protector
from services.kit.errors import BadRequest
from services.retention.cutoff import cutoff_day, expired_mask


@dataclass(frozen=True)
class Selector:
    columns: tuple[str, ...]
    # What was looked for, as the certificate states it (never an identifying value).
    criteria: dict[str, Any]
    _retention: tuple[Contract, date] | None = None
    _equals: tuple[tuple[str, str], ...] = field(default=())

    def certified(self, deletion_id: str) -> dict[str, Any]:
        """The criteria as a certificate states them. A person's pseudonyms are replaced by a
        digest salted with the deletion's id: it proves which search was made to whoever holds
        the values, without leaving a token that links the certificate to the person."""
        if not self._equals:
            return dict(self.criteria)
        digest = hashlib.sha256(deletion_id.encode())
        for column, value in sorted(self._equals):
            digest.update(f"\x1f{column}\x1f{value}".encode())
        return {"matched_on": self.criteria["matched_on"], "search_digest": digest.hexdigest()}

    def removed(self, table: pa.Table) -> pa.ChunkedArray | pa.Array:
        """True for each row of `table` (which holds `columns`) that goes."""
        if self._retention is not None:
            contract, cutoff = self._retention
            return expired_mask(table, contract, cutoff)
        mask: pa.ChunkedArray | pa.Array = pa.array([False] * table.num_rows, pa.bool_())
        for column, value in self._equals:
            found = pc.fill_null(pc.equal(table.column(column), pa.scalar(value)), False)
            mask = pc.or_(mask, found)
        return mask


def retention(contract: Contract, today: date) -> Selector | None:
    """Rows past the contract's retention; None for a contract that keeps rows with no date."""
    if contract.retention_from is None:
        return None
    cutoff = cutoff_day(contract.retention, today)
    return Selector(
        columns=(contract.retention_from,),
        criteria={
            "retention": contract.retention,
            "retention_from": contract.retention_from,
            "cutoff": cutoff.isoformat(),
            "rule": f"rows whose {contract.retention_from} is before {cutoff.isoformat()}",
        },
        _retention=(contract, cutoff),
    )


@dataclass(frozen=True)
class PersonQuery:
    """The identifying values a partner holds about one person."""

    identifiers: Mapping[str, str] = field(default_factory=dict)
    surname: str | None = None
    forename: str | None = None
    dob: date | None = None

    def check(self) -> None:
        parts = (self.surname, self.forename, self.dob)
        if any(part is not None for part in parts) and not all(parts):
            raise BadRequest(
                "a person is found by surname, forename and date of birth together: a name "
                "alone, or a date of birth alone, could be many people"
            )
        if not self.identifiers and self.surname is None:
            raise BadRequest(
                "give the person's identifiers (e.g. suspect_nominal_ref) or their surname, "
                "forename and date of birth"
            )
        for name, value in self.identifiers.items():
            if not isinstance(value, str) or not value.strip():
                raise BadRequest(f"identifier {name!r} is empty")


def person(
    contract: Contract, query: PersonQuery, protector: Protector, *, strict: bool = True
) -> Selector | None:
    """One person's rows of a dataset: any row whose stored pseudonym of a given identifier, or
    whose person key, is the person's. `strict` (an erasure, which names its dataset) refuses
    an identifier the contract does not have; a subject access search across every dataset
    passes over it. None when nothing given applies to this contract."""
    query.check()
    equals: list[tuple[str, str]] = []
    used: list[str] = []
    for name, value in sorted(query.identifiers.items()):
        spec = next((f for f in contract.fields if f.name == name), None)
        if spec is None or spec.protection is not Protection.IDENTIFIER:
            if strict:
                kinds = [f.name for f in contract.fields if f.protection is Protection.IDENTIFIER]
                raise BadRequest(
                    f"{name!r} is not an identifier of {contract.id} (its identifiers: "
                    f"{', '.join(kinds) or 'none'})"
                )
            continue
        pseudonym = protector.pseudonymise_value(value.strip(), domain=spec.name)
        equals.append((f"{spec.name}_pseudonym", pseudonym))
        used.append(spec.name)
    if query.surname is not None and contract.person is not None:
        assert query.forename is not None and query.dob is not None
        key = protector.person_key(query.surname, query.forename, query.dob)
        if key is not None:
            equals.append((PERSON_KEY_COLUMN, key))
            used.append("person (surname, forename, date of birth)")
    elif query.surname is not None and strict and not equals:
        raise BadRequest(f"{contract.id} does not describe people by name and date of birth")
    if not equals:
        return None
    return Selector(
        columns=tuple(sorted({column for column, _ in equals})),
        criteria={"matched_on": used},
        _equals=tuple(equals),
    )
