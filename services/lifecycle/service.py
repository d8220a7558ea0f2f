"""The life of a contract version: loaded as a draft, signed off, activated, retired.

A YAML file in `contracts/` is a proposal. Loading a new or changed file records a draft with
its content hash and its classification against the active version (services/contracts/
changes.py); an unchanged file does nothing. A draft is approved when the owning
organisation's IG lead and the VRU's IG lead have both signed off the same content (two
different principals), and active when the owner activates it; the version active before it is
retired then. Uploads validate against the active version's stored YAML, never the file on
disk, which may be a newer draft.

The first load of an installation (no contract version recorded at all) makes every shipped
contract active at once, as the installation: the operator at the server's shell, like
`together grants approve`. A contract added after that is a draft like any change.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import Decision, PolicyEngine, Resource
from services.authz.vocabulary import Action, ResourceType
from services.contracts.changes import ChangeKind, classify, version_problem
from services.contracts.loader import (
    ContractError,
    check_file_name,
    contract_files,
    load_contract,
)
from services.contracts.model import Contract
from services.contracts.protection import Protector
from services.identity.schemas import Principal
from services.kit.clock import utcnow
from services.kit.db import make_engine, session_factory
from services.kit.errors import BadRequest, Forbidden, NotFound, TogetherError
from services.kit.ids import new_id
from services.kit.uow import audited
from services.kit.yamlfile import StrictLoader
from services.lifecycle import checks
from services.lifecycle.models import ContractSignoff, ContractVersion, VersionState
from services.storage import service as storage_service
from services.storage.service import Storage

VRU = "vru"
OWNER, VRU_CAPACITY = "owner", "vru"


class ContractNotActive(TogetherError):
    code = "CONTRACT_NOT_ACTIVE"
    status = 409
    title = "This contract has no active version"


class ContractVersionState(TogetherError):
    code = "CONTRACT_VERSION_STATE"
    status = 409
    title = "This contract version is not in a state that allows this"


class AlreadySignedOff(TogetherError):
    code = "ALREADY_SIGNED_OFF"
    status = 409
    title = "This sign-off is already given"


@dataclass
class LifecycleDeps:
    sessions: sessionmaker[Session]
    policy: PolicyEngine | None = None
    # For the check of a major change against the data held; without them (`together db
    # upgrade`), the check is made when the draft is first shown or signed.
    storage: Storage | None = None
    protector: Protector | None = None
    _parsed: dict[str, Contract] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class LoadResult:
    dataset: str
    version: str | None
    outcome: str  # installed, draft, unchanged, refused
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "outcome": self.outcome,
            "detail": self.detail,
        }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse(deps: LifecycleDeps, row: ContractVersion) -> Contract:
    """The contract a stored version holds (validated when it was loaded), parsed once."""
    with deps._lock:
        found = deps._parsed.get(row.content_sha256)
    if found is not None:
        return found
    data = yaml.load(row.yaml_text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    contract = Contract.model_validate(data)
    with deps._lock:
        deps._parsed[row.content_sha256] = contract
    return contract


# Loading


def _versions(session: Session, dataset_id: str, *, lock: bool = False) -> list[ContractVersion]:
    statement = (
        select(ContractVersion)
        .where(ContractVersion.dataset_id == dataset_id)
        .order_by(ContractVersion.loaded_at, ContractVersion.version)
    )
    if lock:
        statement = statement.with_for_update()
    return list(session.execute(statement).scalars())


def _active(rows: list[ContractVersion]) -> ContractVersion | None:
    return next((row for row in rows if row.state == VersionState.ACTIVE), None)


def _loaded_event(ctx: RequestContext, row: ContractVersion, installed: bool) -> AuditRecord:
    return AuditRecord(
        action=AuditAction.CONTRACT_LOADED,
        outcome=Outcome.SUCCESS,
        resource_type="contract",
        resource=row.dataset_id,
        resource_org=row.owner,
        details={
            "version": row.version,
            "state": row.state,
            "content_sha256": row.content_sha256,
            "installed": installed,
            "classification": row.classification,
        },
    )


def load_directory(deps: LifecycleDeps, ctx: RequestContext, directory: Path) -> list[LoadResult]:
    """Record each new or changed contract file of `directory` (one transaction per file)."""
    try:
        paths = contract_files(directory)
    except ContractError as exc:
        return [LoadResult(str(exc.path or directory), None, "refused", str(exc))]
    with deps.sessions() as session:
        install = session.execute(select(func.count(ContractVersion.id))).scalar_one() == 0
    results: list[LoadResult] = []
    for path in paths:
        try:
            contract = load_contract(path)
            check_file_name(path, contract)
        except ContractError as exc:
            results.append(LoadResult(path.stem, None, "refused", str(exc)))
            continue
        text = path.read_bytes()
        results.append(_load_one(deps, ctx, contract, text, install=install))
    return results


def _load_one(
    deps: LifecycleDeps, ctx: RequestContext, contract: Contract, data: bytes, *, install: bool
) -> LoadResult:
    digest = sha256(data)
    with deps.sessions() as session:
        rows = _versions(session, contract.id)
    if any(row.content_sha256 == digest for row in rows):
        return LoadResult(contract.id, contract.version, "unchanged")
    active = _active(rows)
    classification: dict[str, Any]
    if active is not None:
        report = classify(parse(deps, active), contract)
        if report.kind is ChangeKind.NONE:
            return LoadResult(
                contract.id,
                contract.version,
                "unchanged",
                "only comments or layout differ from the active version: nothing recorded",
            )
        problem = version_problem(active.version, contract.version, report.kind)
        if problem is not None:
            why = problem if "change" in problem else f"a {report.kind} change: {problem}"
            return LoadResult(contract.id, contract.version, "refused", why)
        classification = {"against": active.version} | report.as_json()
    else:
        change = {"kind": "major", "where": "contract", "what": "new contract"}
        classification = {"against": None, "kind": "major", "changes": [change]}
    if any(row.version == contract.version for row in rows):
        return LoadResult(
            contract.id,
            contract.version,
            "refused",
            f"version {contract.version} is already recorded with other content; "
            "give the change a new version number",
        )
    installing = install and not rows
    actor = ctx.actor or "installation"
    if installing:
        row = installed_version(contract, data, actor)
    else:
        row = ContractVersion(
            id=new_id(),
            dataset_id=contract.id,
            version=contract.version,
            owner=contract.owner,
            content_sha256=digest,
            yaml_text=data.decode("utf-8"),
            state=VersionState.DRAFT,
            classification=classification,
            loaded_by=actor,
            loaded_at=utcnow(),
        )
    try:
        with audited(deps.sessions, "loading a contract") as uow:
            uow.session.add(row)
            uow.session.flush()
            uow.audit(audit_service.event(ctx, _loaded_event(ctx, row, installing)))
    except IntegrityError:
        return LoadResult(contract.id, contract.version, "unchanged", "loaded by another process")
    if installing:
        return LoadResult(contract.id, contract.version, "installed", "active")
    return LoadResult(contract.id, contract.version, "draft", classification["kind"])


def installed_version(contract: Contract, data: bytes, actor: str) -> ContractVersion:
    """The row of a shipped contract made active by the installation's first load."""
    now = utcnow()
    return ContractVersion(
        id=new_id(),
        dataset_id=contract.id,
        version=contract.version,
        owner=contract.owner,
        content_sha256=sha256(data),
        yaml_text=data.decode("utf-8"),
        state=VersionState.ACTIVE,
        classification=None,
        loaded_by=actor,
        loaded_at=now,
        activated_by=actor,
        activated_at=now,
    )


# What uploads use


def active_contract(deps: LifecycleDeps, dataset_id: str) -> Contract:
    """The active version of a dataset's contract, from its stored YAML; `ContractNotActive`
    naming the latest version's state when there is none."""
    with deps.sessions() as session:
        rows = _versions(session, dataset_id)
    active = _active(rows)
    if active is None:
        if not rows:
            raise ContractNotActive(f"contract {dataset_id} has no version loaded")
        latest = rows[-1]
        raise ContractNotActive(
            f"contract {dataset_id} has no active version: version {latest.version} is "
            f"{latest.state}"
        )
    return parse(deps, active)


def governing_contract(deps: LifecycleDeps, dataset_id: str) -> Contract:
    """The contract whose retention a dataset's rows follow: the active version, else (a
    contract retired with no successor takes no uploads, but its data is still kept only as
    long as it said) the version retired last; `ContractNotActive` when neither exists."""
    with deps.sessions() as session:
        rows = _versions(session, dataset_id)
    active = _active(rows)
    if active is not None:
        return parse(deps, active)
    retired = [(row.retired_at, row) for row in rows if row.retired_at is not None]
    if retired:
        return parse(deps, max(retired, key=lambda pair: pair[0])[1])
    return active_contract(deps, dataset_id)


# The changelog and the sign-off page


def _signoff_json(signoff: ContractSignoff) -> dict[str, Any]:
    return {
        "organisation": signoff.organisation,
        "capacity": signoff.capacity,
        "signed_by": signoff.signed_by,
        "content_sha256": signoff.content_sha256,
        "signed_at": signoff.signed_at.isoformat(timespec="seconds"),
    }


def _iso(moment: Any) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def version_json(row: ContractVersion, signoffs: list[ContractSignoff]) -> dict[str, Any]:
    classification = row.classification or {}
    return {
        "version": row.version,
        "state": row.state,
        "owner": row.owner,
        "content_sha256": row.content_sha256,
        "classification": classification.get("kind"),
        "against": classification.get("against"),
        "changes": classification.get("changes", []),
        "validation": row.validation,
        "signoffs": [_signoff_json(s) for s in signoffs],
        "loaded_by": row.loaded_by,
        "loaded_at": _iso(row.loaded_at),
        "approved_at": _iso(row.approved_at),
        "activated_by": row.activated_by,
        "activated_at": _iso(row.activated_at),
        "retired_at": _iso(row.retired_at),
    }


def _signoffs(session: Session, ids: list[str]) -> dict[str, list[ContractSignoff]]:
    found: dict[str, list[ContractSignoff]] = {i: [] for i in ids}
    if ids:
        statement = (
            select(ContractSignoff)
            .where(ContractSignoff.version_id.in_(ids))
            .order_by(ContractSignoff.signed_at, ContractSignoff.id)
        )
        for signoff in session.execute(statement).scalars():
            found[signoff.version_id].append(signoff)
    return found


def changelog(deps: LifecycleDeps, dataset_id: str) -> list[dict[str, Any]]:
    """Every version of a dataset's contract, newest first, with its sign-offs."""
    with deps.sessions() as session:
        rows = _versions(session, dataset_id)
        if not rows:
            raise NotFound(f"no contract for dataset {dataset_id!r}")
        signoffs = _signoffs(session, [row.id for row in rows])
        return [version_json(row, signoffs[row.id]) for row in reversed(rows)]


def ensure_validation(deps: LifecycleDeps, dataset_id: str, version: str) -> None:
    """Check a major draft against the dataset's current version, once per dataset version;
    the report is stored with the draft (a pure function of immutable inputs)."""
    if deps.storage is None or deps.protector is None:
        return
    with deps.sessions() as session:
        rows = _versions(session, dataset_id)
        row = next((r for r in rows if r.version == version), None)
        if row is None or row.state != VersionState.DRAFT:
            return
        if (row.classification or {}).get("kind") != ChangeKind.MAJOR.value:
            return
        current = storage_service.current_version(session, deps.storage, dataset_id)
        held = (row.validation or {}).get("dataset_version")
        if current is None:
            if row.validation is None:
                row.validation = {"checked": False, "reason": "the dataset holds no data yet"}
                session.commit()
            return
        if held == current.version:
            return
        stored_under = next((r for r in rows if r.version == current.contract_version), None)
        under_row = stored_under if stored_under is not None else _active(rows)
        if under_row is None:
            row.validation = {
                "checked": False,
                "dataset_version": current.version,
                "reason": f"the data's contract version {current.contract_version} is not recorded",
            }
            session.commit()
            return
        under = parse(deps, under_row)
        row.validation = checks.validate_current(
            parse(deps, row), under, current, deps.storage, deps.protector
        )
        session.commit()


def signable(deps: LifecycleDeps, principal: Principal | None) -> list[dict[str, Any]]:
    """Drafts and approved versions the caller may sign off or activate, for the IG page:
    every contract for the VRU's leads, their own organisation's for the others."""
    with deps.sessions() as session:
        statement = (
            select(ContractVersion)
            .where(ContractVersion.state.in_([VersionState.DRAFT, VersionState.APPROVED]))
            .order_by(ContractVersion.dataset_id, ContractVersion.loaded_at)
        )
        if principal is not None and principal.organisation != VRU:
            statement = statement.where(ContractVersion.owner == principal.organisation)
        rows = list(session.execute(statement).scalars())
    out: list[dict[str, Any]] = []
    for row in rows:
        ensure_validation(deps, row.dataset_id, row.version)
    with deps.sessions() as session:
        signoffs = _signoffs(session, [row.id for row in rows])
        for row in rows:
            fresh = session.get(ContractVersion, row.id)
            assert fresh is not None
            out.append({"dataset": fresh.dataset_id} | version_json(fresh, signoffs[fresh.id]))
    return out


# Sign-off and activation


def _find(session: Session, dataset_id: str, version: str) -> ContractVersion:
    row = session.execute(
        select(ContractVersion)
        .where(ContractVersion.dataset_id == dataset_id, ContractVersion.version == version)
        .with_for_update()
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no version {version!r} of contract {dataset_id!r}")
    return row


def _refuse(
    deps: LifecycleDeps,
    ctx: RequestContext,
    decision: Decision | None,
    reason: str,
    dataset_id: str,
    owner: str | None,
    details: dict[str, Any],
) -> None:
    audit_service.record_denial(
        deps.sessions,
        ctx,
        decision,
        reason=reason,
        resource_type="contract",
        resource=dataset_id[:100],
        resource_org=owner,
        details=details,
    )


def _owner_of(deps: LifecycleDeps, dataset_id: str, version: str) -> str | None:
    with deps.sessions() as session:
        row = session.execute(
            select(ContractVersion.owner).where(
                ContractVersion.dataset_id == dataset_id, ContractVersion.version == version
            )
        ).scalar_one_or_none()
    return row


def _decide(
    deps: LifecycleDeps,
    principal: Principal | None,
    ctx: RequestContext,
    action: Action,
    dataset_id: str,
    version: str,
    organisation: str | None,
    owner: str | None,
) -> Decision | None:
    """The policy's decision for a person or client (None for the installation); refusals
    are audited. A version that does not exist is a 404 only after the refusal check, so that
    a caller with no say learns nothing from it."""
    if principal is None:
        if owner is None:
            raise NotFound(f"no version {version!r} of contract {dataset_id!r}")
        return None
    assert deps.policy is not None
    details = {"action": action.value, "version": version[:40], "as_org": organisation}
    decision = deps.policy.decide(
        principal, action, Resource(ResourceType.CONTRACTS, dataset_id, organisation)
    )
    if not decision.allowed:
        _refuse(
            deps, ctx, decision, "not an IG lead of that organisation", dataset_id, owner, details
        )
        raise Forbidden(f"only an IG lead of {organisation} may do this")
    if owner is None:
        raise NotFound(f"no version {version!r} of contract {dataset_id!r}")
    return decision


def _capacity(owner: str, organisation: str, taken: set[str]) -> str:
    if organisation not in (owner, VRU):
        raise BadRequest(f"a sign-off is given for the owner ({owner}) or for {VRU}")
    if owner == VRU:
        # The VRU's own contracts: two VRU IG leads, one in each capacity.
        return OWNER if OWNER not in taken else VRU_CAPACITY
    return OWNER if organisation == owner else VRU_CAPACITY


def sign_off(
    deps: LifecycleDeps,
    principal: Principal | None,
    ctx: RequestContext,
    dataset_id: str,
    version: str,
    organisation: str,
    content_sha256: str | None = None,
) -> dict[str, Any]:
    """One IG lead's sign-off (or the installation's, from the command line) of a draft,
    for `organisation` (the owner or the VRU); the second approves the draft."""
    owner = _owner_of(deps, dataset_id, version)
    decision = _decide(
        deps, principal, ctx, Action.CONTRACT_SIGNOFF, dataset_id, version, organisation, owner
    )
    ensure_validation(deps, dataset_id, version)
    actor = ctx.actor or "installation"
    try:
        with audited(deps.sessions, "signing off a contract") as uow:
            row = _find(uow.session, dataset_id, version)
            if row.state != VersionState.DRAFT:
                raise ContractVersionState(
                    f"version {version} of {dataset_id} is {row.state}, not a draft"
                )
            if content_sha256 is not None and content_sha256 != row.content_sha256:
                raise ContractVersionState(
                    "the draft you signed is not this one (its content hash differs): "
                    "read it again before signing"
                )
            held = _signoffs(uow.session, [row.id])[row.id]
            mine = next((s for s in held if s.signed_by == actor), None)
            if mine is not None:
                raise AlreadySignedOff(
                    f"you have already signed off version {version} of {dataset_id} (for "
                    f"{mine.organisation}); the other sign-off must come from another person"
                )
            taken = {s.capacity for s in held}
            capacity = _capacity(row.owner, organisation, taken)
            if capacity in taken:
                other = next(s for s in held if s.capacity == capacity)
                raise AlreadySignedOff(
                    f"version {version} of {dataset_id} is already signed off for "
                    f"{other.organisation} by {other.signed_by}"
                )
            if (row.classification or {}).get("kind") == ChangeKind.MAJOR.value and (
                row.validation is None and deps.storage is not None
            ):
                raise ContractVersionState("the check of this major change is not ready yet")
            now = utcnow()
            signoff = ContractSignoff(
                version_id=row.id,
                capacity=capacity,
                organisation=organisation,
                signed_by=actor,
                content_sha256=row.content_sha256,
                signed_at=now,
            )
            uow.session.add(signoff)
            uow.session.flush()
            held.append(signoff)
            base = {
                "version": row.version,
                "content_sha256": row.content_sha256,
                "organisation": organisation,
                "capacity": capacity,
            }
            uow.audit(
                audit_service.event(
                    ctx,
                    _event(AuditAction.CONTRACT_SIGNED_OFF, row, decision, base),
                )
            )
            if {s.capacity for s in held} == {OWNER, VRU_CAPACITY}:
                row.state = VersionState.APPROVED
                row.approved_at = now
                signers = [s.signed_by for s in held]
                details = {"version": row.version, "content_sha256": row.content_sha256}
                uow.audit(
                    audit_service.event(
                        ctx,
                        _event(
                            AuditAction.CONTRACT_APPROVED,
                            row,
                            decision,
                            details | {"signed_by": signers},
                        ),
                    )
                )
            result = {"dataset": row.dataset_id} | version_json(row, held)
    except IntegrityError as exc:
        raise AlreadySignedOff("another sign-off of this version was given meanwhile") from exc
    except AlreadySignedOff as exc:
        _refuse(
            deps,
            ctx,
            decision,
            "signed off twice",
            dataset_id,
            owner,
            {"version": version[:40], "as_org": organisation, "why": exc.detail},
        )
        raise
    return result


def _event(
    action: AuditAction, row: ContractVersion, decision: Decision | None, details: dict[str, Any]
) -> AuditRecord:
    return AuditRecord(
        action=action,
        outcome=Outcome.SUCCESS,
        resource_type="contract",
        resource=row.dataset_id,
        resource_org=row.owner,
        matched_rule=decision.rule if decision else None,
        policy_version=decision.policy_version if decision else None,
        details=details,
    )


def activate(
    deps: LifecycleDeps,
    principal: Principal | None,
    ctx: RequestContext,
    dataset_id: str,
    version: str,
) -> dict[str, Any]:
    """The owner makes an approved version active; the version active before it is retired."""
    owner = _owner_of(deps, dataset_id, version)
    decision = _decide(
        deps, principal, ctx, Action.CONTRACT_ACTIVATE, dataset_id, version, owner, owner
    )
    with audited(deps.sessions, "activating a contract") as uow:
        rows = _versions(uow.session, dataset_id, lock=True)
        row = next((r for r in rows if r.version == version), None)
        if row is None:
            raise NotFound(f"no version {version!r} of contract {dataset_id!r}")
        if row.state != VersionState.APPROVED:
            raise ContractVersionState(
                f"version {version} of {dataset_id} is {row.state}: only an approved version "
                "is activated"
            )
        now = utcnow()
        previous = _active(rows)
        if previous is not None:
            previous.state = VersionState.RETIRED
            previous.retired_at = now
        row.state = VersionState.ACTIVE
        row.activated_by = ctx.actor or "installation"
        row.activated_at = now
        details = {
            "version": row.version,
            "content_sha256": row.content_sha256,
            "retired": previous.version if previous is not None else None,
        }
        uow.audit(
            audit_service.event(ctx, _event(AuditAction.CONTRACT_ACTIVATED, row, decision, details))
        )
        signoffs = _signoffs(uow.session, [row.id])[row.id]
        result = {"dataset": row.dataset_id} | version_json(row, signoffs)
    return result


def load_into_database(url: str, directory: Path, ctx: RequestContext) -> list[LoadResult]:
    """Load `directory` into the database at `url` with nothing else of the platform: what
    `together db upgrade` does after migrating (no keys needed; a major change's check against
    the data is made when the draft is first shown or signed)."""
    engine = make_engine(url)
    try:
        return load_directory(LifecycleDeps(sessions=session_factory(engine)), ctx, directory)
    finally:
        engine.dispose()


def active_versions(deps: LifecycleDeps) -> dict[str, str]:
    """The active version number of every contract that has one."""
    with deps.sessions() as session:
        rows = session.execute(
            select(ContractVersion.dataset_id, ContractVersion.version).where(
                ContractVersion.state == VersionState.ACTIVE
            )
        ).all()
    return {dataset: version for dataset, version in rows}
