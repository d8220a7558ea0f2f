"""A major change checked against the data already held: the dataset's current version read
back and validated against the draft, so that the IG leads see what the change would refuse
before they approve it.

The stored version is typed and protected; the validator reads text. Plain fields are turned
back into text; a protected field (stored as a pseudonym or ciphertext) can be checked only
for presence, and for keys, through its pseudonym, for uniqueness: its text rules are listed
as not re-checked rather than reported as passed.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from services.contracts.columns import query_column
from services.contracts.model import Contract, ContractField, FieldType, Protection
from services.contracts.protection import Protector
from services.contracts.validation import BatchValidator, ValidationReport
from services.storage.service import Storage, VersionInfo

_BATCH_ROWS = 65_536
_PRESENT = "present"


def _as_text(column: pa.ChunkedArray, spec: ContractField) -> pa.ChunkedArray:
    if spec.type is FieldType.BOOLEAN:
        return pc.if_else(column, "true", "false")
    if spec.type is FieldType.TIMESTAMP:
        return pc.strftime(column, format="%Y-%m-%dT%H:%M:%S")
    return pc.cast(column, pa.string())


def _presence_only(spec: ContractField) -> ContractField:
    """The draft's field reduced to what a protected stored column can still show."""
    return spec.model_copy(
        update={
            "type": FieldType.STRING,
            "protection": Protection.NONE,
            "allowed_values": None,
            "pattern": None,
            "max_length": None,
            "minimum": None,
            "maximum": None,
            "not_after": None,
            "on_or_after": None,
            "on_or_before": None,
            "subcode_separator": None,
        }
    )


def _without_links(spec: ContractField, unchecked: set[str]) -> ContractField:
    """A plain field compared with a field checked for presence only loses that comparison."""
    update = {
        name: None for name in ("on_or_after", "on_or_before") if getattr(spec, name) in unchecked
    }
    return spec.model_copy(update=update) if update else spec


def validate_current(
    draft: Contract,
    stored_under: Contract,
    current: VersionInfo,
    storage: Storage,
    protector: Protector,
) -> dict[str, Any]:
    """The report of validating the current version's rows against the draft."""
    old_fields = {spec.name: spec for spec in stored_under.fields}
    specs: list[ContractField] = []
    sources: dict[str, tuple[str, ContractField, str]] = {}  # field -> (column, old spec, how)
    not_rechecked: list[str] = []
    for spec in draft.fields:
        old = old_fields.get(spec.name)
        if old is None:
            specs.append(spec)  # a new field: absent from the data; fine unless required
            continue
        if spec.protection is Protection.NONE and old.protection is Protection.NONE:
            specs.append(spec)
            sources[spec.name] = (old.name, old, "value")
            continue
        specs.append(_presence_only(spec))
        not_rechecked.append(spec.name)
        keyed = old.protection is Protection.IDENTIFIER and spec.name in draft.key
        sources[spec.name] = (query_column(old), old, "pseudonym" if keyed else "presence")
    unchecked = set(not_rechecked)
    specs = [_without_links(spec, unchecked) for spec in specs]
    checked = draft.model_copy(update={"fields": specs, "person": None})
    columns = sorted({column for column, _, _ in sources.values()})
    table = storage.read_columns(current.files, columns)
    arrays: dict[str, pa.ChunkedArray] = {}
    for name, (column, old, how) in sources.items():
        values = table.column(column)
        if how == "value":
            arrays[name] = _as_text(values, old)
        elif how == "pseudonym":
            arrays[name] = pc.cast(values, pa.string())
        else:
            arrays[name] = pc.if_else(pc.is_null(values), pa.scalar(None, pa.string()), _PRESENT)
    report = ValidationReport()
    validator = BatchValidator(checked, protector)
    text = pa.table(arrays) if arrays else pa.table({})
    rows = text.num_rows
    if not arrays:
        validator.check_header([], report)
    first_row = 1
    for batch in text.to_batches(max_chunksize=_BATCH_ROWS):
        validator.process(batch, first_row, report)
        first_row += batch.num_rows
    validator.finish(report)
    return {
        "checked": True,
        "dataset_version": current.version,
        "stored_under": stored_under.version,
        "rows": rows,
        "ok": report.ok,
        "not_rechecked": not_rechecked,
        "report": report.to_dict(),
    }
