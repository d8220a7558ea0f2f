"""A subject access request: what the platform holds about one person, and who has seen them.

An IG lead gives the identifying values their organisation holds about a person (identifiers
such as the police person id, or surname, forename and date of birth together). Every dataset
with data is searched through the same keyed pseudonymisation the rows were stored with
(services/retention/selectors.py), so nothing stored is decrypted to search. The answer says:

- which datasets and versions hold rows about the person, and how many (every stored file of
  every version not purged by a deletion is read once, with the search columns alone);
- for the current version, the person's fields grouped by classification, with values only
  from the requester's own organisation's data: an IG lead answers for what their organisation
  holds, and learns of another organisation's data only what it is (field names and
  classifications), so that they can refer the person to that organisation;
- the Level 3 products that listed the person, and every audited read that returned them (the
  person history of the audit review, in the requester's review scope).

The answer's audit event (`subject_access.answered`) commits before anything is returned, and
records which kinds of identifier were given, never their values. Protected values are
decrypted only after that commit, as a Level 3 read reveals names only once it is audited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.audit import review
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.review import Scope
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import Decision, PolicyEngine, Resource
from services.authz.vocabulary import Action, ResourceType
from services.contracts.columns import StoredKind, field_columns
from services.contracts.model import Classification, Contract, ContractField, Protection
from services.contracts.protection import Protector
from services.identity.schemas import Principal
from services.kit.clock import utcnow
from services.kit.errors import BadRequest, Forbidden, StoredVersionMissing, TogetherError
from services.kit.uow import audited
from services.retention import selectors
from services.retention.selectors import PersonQuery, Selector
from services.storage.models import Dataset, DatasetVersion, VersionFile
from services.storage.objects import ObjectMissing
from services.storage.service import Storage

FORMATS = ("json", "csv")
# The police person pseudonyms Level 3 products list people by (services/products/people.py
# builds its people table from this column): the person ids of the audit trail derive from it.
PEOPLE_SOURCE = "police.occurrences"
PEOPLE_COLUMN = "suspect_nominal_ref_pseudonym"
# The audit event's resource when nothing is held, or when rows are held but none is a police
# row (no person id was ever handed out for the person).
NOT_FOUND = "not-found"
NO_PERSON_ID = "no-person-id"
# Reads listed per person id; more are counted as not listed (`reads_complete` false).
MAX_READS = review.MAX_EXPORT_LIMIT
CLASSIFICATIONS = tuple(c.value for c in Classification)

CSV_COLUMNS = (
    "section",
    "dataset",
    "owner",
    "version",
    "current",
    "rows",
    "classification",
    "field",
    "protection",
    "stored_as",
    "values",
    "product",
    "level",
    "event_id",
    "occurred_at",
    "action",
    "actor",
    "actor_org",
    "purpose",
    "case_reference",
)


@dataclass(frozen=True)
class SubjectAccessDeps:
    sessions: sessionmaker[Session]
    policy: PolicyEngine
    storage: Storage
    protector: Protector
    # The shipped contracts: which identifiers exist at all (an unknown one is a 400).
    contracts: Mapping[str, Contract]
    # The active version of a dataset's contract (services/lifecycle), its fields as stored.
    active_contract: Callable[[str], Contract]
    # Police person pseudonyms to the person ids Level 3 hands out (services/products/people).
    person_ids: Callable[[pa.Array], pa.Array]
    # The requester's audit review scope (services/review), whose person history is reused.
    review_scope: Callable[[Principal, RequestContext], tuple[Scope, object]]


@dataclass(frozen=True)
class _Version:
    number: int
    contract_version: str
    created_at: datetime
    files: tuple[str, ...]


@dataclass
class _Dataset:
    """One dataset's versions and what the search found in each of its files."""

    id: str
    current: int | None
    versions: list[_Version] = field(default_factory=list)
    file_rows: dict[str, int] = field(default_factory=dict)  # stored rows of each file
    matches: dict[str, int] = field(default_factory=dict)  # the person's rows in each file
    people: set[str] = field(default_factory=set)  # police pseudonyms of the matched rows


# Authorisation


def _decide(deps: SubjectAccessDeps, principal: Principal, ctx: RequestContext) -> Decision:
    """An IG lead answers for their own organisation; anyone else is refused, audited."""
    decision = deps.policy.decide(
        principal,
        Action.SUBJECT_ACCESS,
        Resource(ResourceType.PEOPLE, "subject-access", principal.organisation),
    )
    if not decision.allowed:
        audit_service.record_denial(
            deps.sessions,
            ctx,
            decision,
            reason="not an IG lead",
            resource_type="person",
            resource_org=principal.organisation,
            details={"action": Action.SUBJECT_ACCESS.value},
        )
        raise Forbidden("a subject access request is answered by an IG lead")
    return decision


def _asked_with(query: PersonQuery, fmt: str) -> dict[str, Any]:
    """What the audit event says was given: the kinds of identifier, never their values."""
    return {
        "identifiers": sorted(name[:64] for name in query.identifiers)[:20],
        "name_and_dob": query.surname is not None,
        "format": fmt[:10],
    }


def _check(deps: SubjectAccessDeps, query: PersonQuery, fmt: str) -> None:
    if fmt not in FORMATS:
        raise BadRequest("format is json or csv")
    query.check()
    known = {
        spec.name
        for contract in deps.contracts.values()
        for spec in contract.fields
        if spec.protection is Protection.IDENTIFIER
    }
    unknown = sorted(set(query.identifiers) - known)
    if unknown:
        raise BadRequest(
            f"{', '.join(repr(name[:64]) for name in unknown[:5])} is not an identifier of any "
            f"dataset (identifiers: {', '.join(sorted(known)) or 'none'})"
        )


# The search


def _datasets(session: Session) -> list[_Dataset]:
    """Every dataset's versions not purged by a deletion, with their files, oldest first."""
    current: dict[str, int | None] = {
        dataset_id: number
        for dataset_id, number in session.execute(select(Dataset.id, Dataset.current_version))
    }
    rows = session.execute(
        select(
            DatasetVersion.dataset_id,
            DatasetVersion.version,
            DatasetVersion.contract_version,
            DatasetVersion.created_at,
            VersionFile.path,
            VersionFile.row_count,
        )
        .join(VersionFile, VersionFile.version_pk == DatasetVersion.id)
        .where(DatasetVersion.purged_at.is_(None))
        .order_by(DatasetVersion.dataset_id, DatasetVersion.version, VersionFile.id)
    ).all()
    found: dict[str, _Dataset] = {}
    files: dict[tuple[str, int], list[str]] = {}
    meta: dict[tuple[str, int], tuple[str, datetime]] = {}
    for dataset_id, number, contract_version, created_at, path, row_count in rows:
        item = found.setdefault(dataset_id, _Dataset(dataset_id, current.get(dataset_id)))
        item.file_rows[path] = int(row_count)
        files.setdefault((dataset_id, number), []).append(path)
        meta[(dataset_id, number)] = (contract_version, created_at)
    for (dataset_id, number), paths in files.items():
        contract_version, created_at = meta[(dataset_id, number)]
        found[dataset_id].versions.append(
            _Version(number, contract_version, created_at, tuple(paths))
        )
    return list(found.values())


def _local(deps: SubjectAccessDeps, item: _Dataset, path: str) -> Path:
    try:
        return deps.storage.absolute(path)
    except ObjectMissing:
        number = next((v.number for v in item.versions if path in v.files), 0)
        raise StoredVersionMissing(item.id, number) from None


def _read(deps: SubjectAccessDeps, item: _Dataset, path: str, columns: Iterable[str]) -> pa.Table:
    """The columns of one stored file. A file written under an earlier contract version may
    lack a column added since: that column is read as empty (it holds nothing to find)."""
    wanted = list(dict.fromkeys(columns))
    local = _local(deps, item, path)
    try:
        return deps.storage.read_columns((local,), wanted)
    except pa.ArrowInvalid as exc:
        if "No match for FieldRef" not in str(exc):
            raise
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for column in wanted:
        try:
            arrays.append(deps.storage.read_columns((local,), [column]).column(column))
        except pa.ArrowInvalid as exc:
            if "No match for FieldRef" not in str(exc):
                raise
            arrays.append(pa.nulls(item.file_rows[path], pa.string()))
    return pa.table(arrays, names=wanted)


def _mask(selector: Selector, table: pa.Table) -> pa.Array:
    mask = selector.removed(table)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    return mask


def _count(mask: pa.Array) -> int:
    return int(pc.sum(mask.cast(pa.int64())).as_py() or 0)


def _scan(deps: SubjectAccessDeps, item: _Dataset, selector: Selector) -> None:
    """Read each distinct file of the dataset once, with the search columns alone."""
    columns = list(selector.columns)
    if item.id == PEOPLE_SOURCE:
        columns.append(PEOPLE_COLUMN)
    for path in item.file_rows:
        table = _read(deps, item, path, columns)
        mask = _mask(selector, table)
        found = _count(mask)
        item.matches[path] = found
        if found and item.id == PEOPLE_SOURCE:
            pseudonyms = table.column(PEOPLE_COLUMN).filter(mask).to_pylist()
            item.people.update(p for p in pseudonyms if p)


@dataclass(frozen=True)
class _FieldRows:
    """One field of the person's rows in the current version: its stored values (ciphertext
    for a protected field, decrypted only after the answer's audit event commits)."""

    spec: ContractField
    stored_as: str
    stored: list[Any] | None


def _current_rows(
    deps: SubjectAccessDeps,
    item: _Dataset,
    contract: Contract,
    selector: Selector,
    with_values: bool,
) -> tuple[int, list[_FieldRows]]:
    """The person's rows of the current version: how many, and their fields (stored values
    read, with the matched rows' other columns, only for the requester's own data)."""
    version = next((v for v in item.versions if v.number == item.current), None)
    if version is None:
        return 0, []
    held = [path for path in version.files if item.matches.get(path)]
    rows = sum(item.matches[path] for path in held)
    shown: dict[str, tuple[str, str | None]] = {}
    for spec in contract.fields:
        columns = field_columns(spec)
        readable = next((c for c in columns if c.kind is not StoredKind.PSEUDONYM), None)
        if readable is None:
            shown[spec.name] = (StoredKind.PSEUDONYM.value, None)
        else:
            shown[spec.name] = (readable.kind.value, readable.name if with_values else None)
    values: dict[str, list[Any]] = {name: [] for name, (_, col) in shown.items() if col}
    if values and rows:
        wanted = [col for _, col in shown.values() if col]
        for path in held:
            table = _read(deps, item, path, [*selector.columns, *wanted])
            matched = table.filter(_mask(selector, table))
            for name, (_, column) in shown.items():
                if column is not None:
                    values[name].extend(matched.column(column).to_pylist())
    return rows, [
        _FieldRows(spec, shown[spec.name][0], values.get(spec.name) if with_values else None)
        for spec in contract.fields
    ]


@dataclass
class _Found:
    """A dataset that holds rows about the person, before its values are revealed."""

    item: _Dataset
    contract: Contract
    matched_on: list[str]
    values_shown: bool
    current_rows: int
    fields: list[_FieldRows]

    def versions(self) -> list[dict[str, Any]]:
        out = []
        for version in reversed(self.item.versions):
            rows = sum(self.item.matches.get(path, 0) for path in version.files)
            if rows:
                out.append(
                    {
                        "version": version.number,
                        "current": version.number == self.item.current,
                        "contract_version": version.contract_version,
                        "created_at": version.created_at.isoformat(timespec="seconds"),
                        "rows": rows,
                    }
                )
        return out

    @property
    def stored_rows(self) -> int:
        """Distinct stored rows about the person (a file held by several versions counts once)."""
        return sum(self.item.matches.values())


def _search(
    deps: SubjectAccessDeps, principal: Principal, query: PersonQuery
) -> tuple[list[_Found], list[dict[str, str]]]:
    with deps.sessions() as session:
        datasets = _datasets(session)
    found: list[_Found] = []
    not_searched: list[dict[str, str]] = []
    for item in datasets:
        try:
            contract = deps.active_contract(item.id)
        except TogetherError as exc:
            not_searched.append({"dataset": item.id, "reason": exc.detail})
            continue
        selector = selectors.person(contract, query, deps.protector, strict=False)
        if selector is None:
            not_searched.append(
                {
                    "dataset": item.id,
                    "reason": "none of the identifying values given applies to its contract",
                }
            )
            continue
        _scan(deps, item, selector)
        if not any(item.matches.values()):
            continue
        own = contract.owner == principal.organisation
        rows, fields = _current_rows(deps, item, contract, selector, own)
        found.append(
            _Found(item, contract, list(selector.criteria["matched_on"]), own, rows, fields)
        )
    return found, not_searched


# Who has seen the person


def _reads(
    session: Session, scope: Scope, person_ids: list[str]
) -> tuple[list[dict[str, Any]], bool]:
    """Every audited read that returned one of the person's ids, newest first (the audit
    review's person history, page after page, in the requester's scope)."""
    events: dict[str, dict[str, Any]] = {}
    complete = True
    for person_id in person_ids:
        cursor: str | None = None
        listed = 0
        while True:
            page = review.person_history(
                session, scope, person_id, cursor=cursor, limit=review.MAX_EXPORT_LIMIT
            )
            for event in page.events:
                events.setdefault(event["event_id"], event)
            listed += len(page.events)
            cursor = page.next_cursor
            if cursor is None:
                break
            if listed >= MAX_READS:
                complete = False
                break
    ordered = sorted(events.values(), key=lambda e: e["occurred_at"], reverse=True)
    return ordered, complete


def _products(reads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Level 3 products whose audited reads listed the person."""
    found: dict[str, dict[str, Any]] = {}
    for event in reads:
        if event["action"] != AuditAction.PRODUCT_READ.value or event["level"] != 3:
            continue
        product = found.setdefault(
            event["resource"],
            {
                "product": event["resource"],
                "level": event["level"],
                "reads": 0,
                "first_read_at": event["occurred_at"],
                "last_read_at": event["occurred_at"],
            },
        )
        product["reads"] += 1
        product["first_read_at"] = min(product["first_read_at"], event["occurred_at"])
        product["last_read_at"] = max(product["last_read_at"], event["occurred_at"])
    return sorted(found.values(), key=lambda p: str(p["product"]))


def _person_ids(deps: SubjectAccessDeps, found: list[_Found]) -> list[str]:
    pseudonyms = sorted({p for item in found for p in item.item.people})
    if not pseudonyms:
        return []
    ids = deps.person_ids(pa.array(pseudonyms, pa.string())).to_pylist()
    return sorted({i for i in ids if i})


# The answer


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def _revealed(deps: SubjectAccessDeps, dataset: str, rows: _FieldRows) -> list[Any] | None:
    """A field's values as the partner sent them: decrypted when protected."""
    if rows.stored is None:
        return None
    if rows.stored_as == StoredKind.CIPHERTEXT.value:
        tokens = pa.array(rows.stored, pa.binary())
        return list(deps.protector.decrypt(tokens, aad=f"{dataset}/{rows.spec.name}").to_pylist())
    return [_plain(value) for value in rows.stored]


def _dataset_json(deps: SubjectAccessDeps, found: _Found) -> dict[str, Any]:
    fields: dict[str, list[dict[str, Any]]] = {level: [] for level in CLASSIFICATIONS}
    for rows in found.fields:
        entry: dict[str, Any] = {
            "field": rows.spec.name,
            "type": rows.spec.type.value,
            "protection": rows.spec.protection.value,
            "stored_as": rows.stored_as,
        }
        if rows.spec.description:
            entry["description"] = " ".join(rows.spec.description.split())
        values = _revealed(deps, found.item.id, rows) if found.current_rows else None
        if values is not None:
            entry["values"] = values
        fields[rows.spec.classification.value].append(entry)
    return {
        "dataset": found.item.id,
        "title": found.contract.title,
        "owner": found.contract.owner,
        "values_shown": found.values_shown,
        "matched_on": found.matched_on,
        "stored_rows": found.stored_rows,
        "versions": found.versions(),
        "current": {
            "version": found.item.current,
            "rows": found.current_rows,
            "fields": fields,
        },
    }


def answer(
    deps: SubjectAccessDeps,
    principal: Principal,
    ctx: RequestContext,
    query: PersonQuery,
    fmt: str = "json",
) -> dict[str, Any]:
    """What the platform holds about the person and who has seen them, audited before it is
    returned; a search that finds nothing is answered (and audited) as such."""
    decision = _decide(deps, principal, ctx)
    try:
        _check(deps, query, fmt)
    except TogetherError as exc:
        audit_service.record_committed(
            deps.sessions,
            ctx,
            AuditRecord(
                action=AuditAction.SUBJECT_ACCESS,
                outcome=Outcome.REJECTED,
                reason=exc.code.lower(),
                resource_type="person",
                resource_org=principal.organisation,
                parameters=_asked_with(query, fmt),
                matched_rule=decision.rule,
                policy_version=decision.policy_version,
            ),
        )
        raise
    scope, _ = deps.review_scope(principal, ctx)
    found, not_searched = _search(deps, principal, query)
    person_ids = _person_ids(deps, found)
    stored_rows = sum(item.stored_rows for item in found)
    resource = person_ids[0] if person_ids else (NO_PERSON_ID if found else NOT_FOUND)
    with audited(deps.sessions, "the subject access request") as uow:
        reads, complete = _reads(uow.session, scope, person_ids)
        products = _products(reads)
        details: dict[str, Any] = {
            "datasets": {
                item.item.id: {str(v["version"]): v["rows"] for v in item.versions()}
                for item in found
            },
            # The owners of the data found: their IG leads see this event in their review.
            "owners": sorted({item.contract.owner for item in found}),
            "values_shown": sorted(item.item.id for item in found if item.values_shown),
            "products": [p["product"] for p in products],
            "reads": len(reads),
        }
        if len(person_ids) > 1:
            details["person_ids"] = person_ids
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.SUBJECT_ACCESS,
                    outcome=Outcome.SUCCESS,
                    resource_type="person",
                    resource=resource,
                    resource_org=scope.organisation or principal.organisation,
                    parameters=_asked_with(query, fmt),
                    rows=stored_rows,
                    matched_rule=decision.rule,
                    policy_version=decision.policy_version,
                    details=details,
                ),
            )
        )
    # Committed: only now are protected values decrypted and the answer returned.
    held = bool(found)
    return {
        "answered_at": utcnow().isoformat(timespec="seconds"),
        "organisation": principal.organisation,
        "asked_with": {
            "identifiers": sorted(query.identifiers),
            "name_and_dob": query.surname is not None,
        },
        "held": held,
        "summary": (
            f"{stored_rows} stored row(s) about this person in {len(found)} dataset(s)"
            if held
            else "the platform holds no rows about this person"
        ),
        "person_ids": person_ids,
        "stored_rows": stored_rows,
        "datasets": [_dataset_json(deps, item) for item in found],
        "not_searched": not_searched,
        "products": products,
        "reads": reads,
        "reads_complete": complete,
    }


def flat_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The answer as one flat table (`CSV_COLUMNS`): a line per dataset, version and field,
    then a line per product that listed the person and per audited read."""
    lines: list[dict[str, Any]] = []
    if not document["held"]:
        lines.append({"section": "summary", "values": document["summary"]})
    for dataset in document["datasets"]:
        fields = [
            (level, entry)
            for level in CLASSIFICATIONS
            for entry in dataset["current"]["fields"][level]
        ]
        for version in dataset["versions"]:
            for level, entry in fields:
                values = entry.get("values") if version["current"] else None
                lines.append(
                    {
                        "section": "data",
                        "dataset": dataset["dataset"],
                        "owner": dataset["owner"],
                        "version": version["version"],
                        "current": version["current"],
                        "rows": version["rows"],
                        "classification": level,
                        "field": entry["field"],
                        "protection": entry["protection"],
                        "stored_as": entry["stored_as"],
                        "values": values,
                    }
                )
    for product in document["products"]:
        lines.append(
            {
                "section": "product",
                "product": product["product"],
                "level": product["level"],
                "rows": product["reads"],
                "occurred_at": product["last_read_at"],
            }
        )
    for event in document["reads"]:
        lines.append(
            {
                "section": "read",
                "product": event["resource"] if event["resource_type"] == "product" else None,
                "level": event["level"],
                "rows": event["rows"],
                "event_id": event["event_id"],
                "occurred_at": event["occurred_at"],
                "action": event["action"],
                "actor": event["actor"],
                "actor_org": event["actor_org"],
                "purpose": event["purpose"],
                "case_reference": event["case_reference"],
            }
        )
    return lines
