"""Which stored columns a contract field becomes: one definition for everything that reads them.

Validation writes these columns, the products' views read them, and the catalogue checks
product definitions against them; if any of the three had its own idea of the names, a product
could read a column that is never written (or miss one that is).

A plain field is stored under its own name with its own type. An identifier is stored as its
keyed pseudonym (``<field>_pseudonym``, text), which is what joins and counts read; when the
contract lets Level 3 show it, its ciphertext is kept as well (``<field>_enc``, bytes). A
direct identifier is stored only as ciphertext. A contract that describes a person has one more
column, ``person_key`` (text), the cross-agency link derived from the person's fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services.contracts.model import Contract, ContractField, FieldType, Protection

PERSON_KEY_COLUMN = "person_key"


class StoredKind(StrEnum):
    VALUE = "value"  # the field's value, of the field's type
    PSEUDONYM = "pseudonym"  # text
    CIPHERTEXT = "ciphertext"  # bytes
    PERSON_KEY = "person_key"  # text


@dataclass(frozen=True)
class StoredColumn:
    name: str
    kind: StoredKind
    # The contract type of a VALUE column; None for the others, whose type is their kind's.
    type: FieldType | None = None


def field_columns(spec: ContractField) -> list[StoredColumn]:
    """The stored columns of one field, the one a query reads first."""
    if spec.protection is Protection.NONE:
        return [StoredColumn(spec.name, StoredKind.VALUE, spec.type)]
    if spec.protection is Protection.IDENTIFIER:
        columns = [StoredColumn(f"{spec.name}_pseudonym", StoredKind.PSEUDONYM)]
        if spec.reveal_at_level3:
            columns.append(StoredColumn(f"{spec.name}_enc", StoredKind.CIPHERTEXT))
        return columns
    return [StoredColumn(f"{spec.name}_enc", StoredKind.CIPHERTEXT)]


def query_column(spec: ContractField) -> str:
    """The stored column a query reads for a field: its value, else its pseudonym (joining
    needs only that; the ciphertext is for Level 3 display), else its ciphertext."""
    return field_columns(spec)[0].name


def stored_columns(contract: Contract) -> list[StoredColumn]:
    """Every stored column of a dataset, in the order they are written."""
    columns = [column for spec in contract.fields for column in field_columns(spec)]
    if contract.person is not None:
        columns.append(StoredColumn(PERSON_KEY_COLUMN, StoredKind.PERSON_KEY))
    return columns
