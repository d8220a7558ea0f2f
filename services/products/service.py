"""Reading a product: decide, compute, audit, and only then hand the data to the caller.

The audit event of a read is committed before the caller receives a single byte: the result is
computed in full, the event (with the row count) is written and committed, and only then is the
response serialised. If the event cannot be written, the caller gets `AuditUnavailable` (503)
and nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.orm import Session, sessionmaker

from services.audit import service as audit_service
from services.audit.async_writer import AsyncAuditWriter
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import PolicyEngine
from services.authz.service import ProductAccess, product_access
from services.contracts.model import Contract
from services.contracts.protection import Protector
from services.identity.schemas import Principal
from services.kit.epochs import EpochCache, EpochReader
from services.kit.errors import (
    AreaNotPermitted,
    BadRequest,
    Forbidden,
    NotFound,
    QuotaExceeded,
    TogetherError,
)
from services.kit.uow import audit_guard, audited
from services.products import compute, formats, level3, people
from services.products.definition import ProductDefinition
from services.products.engine import ProductResult
from services.products.level3 import Justification
from services.products.parameters import normalise_parameters, parse_parameters
from services.storage import service as storage_service
from services.storage.service import Storage, VersionInfo

FORMATS = ("json", "csv", "parquet", "geojson")
CACHE_ENTRIES = 256


@dataclass
class ProductDeps:
    sessions: sessionmaker[Session]
    catalogue: dict[str, ProductDefinition]
    policy: PolicyEngine
    storage: Storage
    protector: Protector
    k: int
    # Level 3 reads a principal may make a day (None: the partnership's configuration).
    level3_daily_quota: int | None = None
    # ... and an hour (None: the partnership's configuration, else 50).
    level3_hourly_quota: int | None = None
    # Current dataset versions by product sources, valid while the datasets epoch is unchanged.
    epochs: EpochReader | None = None
    versions_cache: EpochCache[tuple[str, ...], dict[str, VersionInfo]] = field(
        default_factory=EpochCache
    )
    # PostgreSQL: the audit events of held reads, written from the server's event loop.
    async_audit: AsyncAuditWriter | None = None
    # Benchmark-only: measure the cost of the audit write by skipping it. Never set in service.
    audit_disabled_for_benchmark: bool = False
    cache: OrderedDict[tuple[Any, ...], ProductResult] = field(default_factory=OrderedDict)
    cache_lock: threading.Lock = field(default_factory=threading.Lock)
    # Every dataset's contract by id, for what a dataset's owner and readers may see of it.
    contracts: Mapping[str, Contract] = field(default_factory=dict)


@dataclass
class ProductRead:
    result: ProductResult
    format: str


def get_definition(deps: ProductDeps, product_id: str) -> ProductDefinition:
    definition = deps.catalogue.get(product_id)
    if definition is None:
        raise NotFound(f"no product {product_id!r}")
    return definition


def _record_refusal(
    deps: ProductDeps,
    ctx: RequestContext,
    product_id: str,
    reason: str,
    parameters: dict[str, Any],
) -> None:
    """The audit event of a request refused before any product was decided on."""
    with audited(deps.sessions, "the refusal") as uow:
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.PRODUCT_REFUSED,
                    outcome=Outcome.REJECTED,
                    reason=reason,
                    resource_type="product",
                    resource=product_id[:100],
                    parameters=parameters,
                ),
            )
        )


def _definition_or_refuse(
    deps: ProductDeps, ctx: RequestContext, product_id: str, parameters: dict[str, Any]
) -> ProductDefinition:
    """The product asked for; an unknown id is refused with 404 and the refusal audited, like
    every other rejected request (security-tests, rule b)."""
    definition = deps.catalogue.get(product_id)
    if definition is not None:
        return definition
    _record_refusal(deps, ctx, product_id, "not_found", parameters)
    raise NotFound(f"no product {product_id[:100]!r}")


# Parameters that name a person. They travel in a header (`X-Person-Id`), never in the URL:
# paths and query strings end up in proxies' and load balancers' logs (security-tests T45).
IDENTIFYING_PARAMETERS = {"person_id": "X-Person-Id"}


def refuse_identifiers_in_url(
    deps: ProductDeps, ctx: RequestContext, product_id: str, names: list[str]
) -> None:
    """Refuses (400, audited) a read that put a person's identifier in its query string."""
    headers = ", ".join(f"{name} in the {IDENTIFYING_PARAMETERS[name]} header" for name in names)
    _record_refusal(deps, ctx, product_id, "identifier_in_url", {"in_url": names})
    raise BadRequest(
        f"send {headers}, not in the URL: URLs are written to proxies' logs",
        extra={"parameters": names},
    )


def formats_for(definition: ProductDefinition) -> list[str]:
    return [f for f in FORMATS if f != "geojson" or definition.level == 2]


def suppression_applies(level: int, access: ProductAccess) -> bool:
    """Whether a read of a product of ``level`` under ``access`` withholds small numbers.

    Every answer about suppression (a read, its cache key and audit event, the list of
    products, the access explanation) comes from here, so none can disagree with another.
    Level 3 rows are facts about one person, never statistics: nothing there is suppressed.
    """
    return access.allowed and not access.unsuppressed and level < 3


def list_readable(deps: ProductDeps, principal: Principal) -> list[dict[str, Any]]:
    readable = []
    for definition in sorted(deps.catalogue.values(), key=lambda d: (d.level, d.id)):
        access = product_access(deps.policy, principal, definition.id, definition.level)
        if access.allowed:
            readable.append(
                {
                    "id": definition.id,
                    "level": definition.level,
                    "title": definition.title,
                    "description": definition.description,
                    "parameters": [p.describe() for p in definition.parameters],
                    "formats": formats_for(definition),
                    "suppressed": suppression_applies(definition.level, access),
                    "areas": sorted(access.areas) if access.areas is not None else None,
                }
            )
    return readable


def explain(
    deps: ProductDeps, principal: Principal, ctx: RequestContext, product_id: str
) -> dict[str, Any]:
    definition = _definition_or_refuse(deps, ctx, product_id, {})
    access = product_access(deps.policy, principal, definition.id, definition.level)
    with audited(deps.sessions, "the access explanation") as uow:
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.ACCESS_EXPLAINED,
                    outcome=Outcome.SUCCESS,
                    resource_type="product",
                    resource=definition.id,
                    level=definition.level,
                    matched_rule=access.rule,
                    policy_version=access.policy_version,
                    details={"allowed": access.allowed},
                ),
            )
        )
    return {
        "product": definition.id,
        "level": definition.level,
        "allowed": access.allowed,
        "rule": access.rule,
        "policy_version": access.policy_version,
        "suppressed": suppression_applies(definition.level, access),
        "areas": sorted(access.areas) if access.areas is not None else None,
        "roles": principal.roles,
    }


def _deny(
    deps: ProductDeps,
    ctx: RequestContext,
    definition: ProductDefinition,
    access: ProductAccess,
    reason: str,
    parameters: dict[str, Any],
) -> None:
    audit_service.record_denial(
        deps.sessions,
        ctx,
        access,
        reason=reason,
        resource_type="product",
        resource=definition.id,
        level=definition.level,
        parameters=parameters,
        # No version was read; the datasets show whose data was asked for, so the owners' IG
        # leads see the refusal.
        details={"sources": {dataset: None for dataset in definition.sources}},
    )


def _format_and_parameters(
    definition: ProductDefinition, pairs: list[tuple[str, str]]
) -> tuple[str, dict[str, Any]]:
    formats = [value for name, value in pairs if name == "format"]
    if len(formats) > 1:
        raise BadRequest("format given more than once")
    fmt = formats[0] if formats else "json"
    if fmt not in formats_for(definition):
        raise BadRequest(f"format must be one of {', '.join(formats_for(definition))}")
    params = parse_parameters(
        definition, [(name, value) for name, value in pairs if name != "format"]
    )
    return fmt, params


def _raw_parameters(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The request's parameters as given, for the audit record (bounded in size)."""
    raw: dict[str, list[str]] = {}
    for name, value in pairs[:50]:
        raw.setdefault(name[:40], []).append(value[:100])
    return {name: values if len(values) > 1 else values[0] for name, values in raw.items()}


def read_product(
    deps: ProductDeps,
    principal: Principal,
    ctx: RequestContext,
    product_id: str,
    pairs: list[tuple[str, str]],
    why: Justification | None = None,
) -> ProductRead:
    """Decide, compute, audit, and only then (Level 3) decrypt names for the caller.

    ``why`` is the request's purpose and case reference, required at Level 3.
    """
    raw = _raw_parameters(pairs)
    definition = _definition_or_refuse(deps, ctx, product_id, raw)
    access = product_access(deps.policy, principal, definition.id, definition.level)
    why = why or Justification(None, None)
    if not access.allowed:
        _deny(deps, ctx, definition, access, "tier not permitted", raw)
        raise Forbidden(f"you may not read {definition.id} (Level {definition.level})")
    is_level3 = definition.level == 3
    if is_level3:
        level3.refuse_unjustified(deps.sessions, ctx, definition, access, why, raw)
    purpose, case_reference = why.recordable() if is_level3 else (None, None)
    # A Level 3 read's quota count, given back if the read is not answered after all.
    taken: level3.QuotaTaken | None = None
    try:
        fmt, params = _format_and_parameters(definition, pairs)
        if is_level3:
            daily = deps.level3_daily_quota or level3.daily_quota(definition)
            hourly = deps.level3_hourly_quota or level3.hourly_quota(definition)
            taken = level3.take_quota(deps.sessions, ctx, principal, definition, why, daily, hourly)
        versions = current_versions(deps, definition.sources, ctx)
        result = _computed(deps, definition, params, versions, access)
    except QuotaExceeded:
        raise
    except AreaNotPermitted:
        _give_back(deps, taken)
        _deny(deps, ctx, definition, access, "outside the reader's areas", raw)
        raise
    except TogetherError as exc:
        _give_back(deps, taken)
        with audited(deps.sessions, "the refusal") as uow:
            uow.audit(
                audit_service.event(
                    ctx,
                    AuditRecord(
                        action=AuditAction.PRODUCT_REFUSED,
                        outcome=Outcome.REJECTED,
                        reason=exc.code.lower(),
                        resource_type="product",
                        resource=definition.id,
                        level=definition.level,
                        purpose=purpose,
                        case_reference=case_reference,
                        parameters=raw,
                        matched_rule=access.rule,
                        policy_version=access.policy_version,
                    ),
                )
            )
        raise
    except BaseException:
        _give_back(deps, taken)
        raise
    if not deps.audit_disabled_for_benchmark:
        try:
            _audit_read(deps, ctx, definition, access, result, fmt, purpose, case_reference)
        except BaseException:
            # Not audited, so not answered (T25): the read does not count against the quota.
            _give_back(deps, taken)
            raise
    if is_level3:
        # Decided, audited and committed: only now are names and dates of birth decrypted.
        result = people.reveal(definition, result, deps.protector)
    return ProductRead(result, fmt)


def export(deps: ProductDeps, ctx: RequestContext, read: ProductRead) -> bytes:
    """A read's answer as a file, whose disclosure is audited before it is sent (T48).

    The read itself is already audited (``product.read``); the file exists only after that (at
    Level 3 its names are decrypted only after it), so its SHA-256 goes in an event of its own,
    ``product.exported``, committed before the caller sends a byte. Not audited, not sent.
    """
    result = read.result
    if read.format == "csv":
        body = formats.to_csv(result)
    elif read.format == "parquet":
        body = formats.to_parquet(result)
    elif read.format == "geojson":
        body = orjson.dumps(formats.to_geojson(result), option=orjson.OPT_NON_STR_KEYS)
    else:
        raise ValueError(f"{read.format} is not a file format")
    if deps.audit_disabled_for_benchmark:
        return body
    record = AuditRecord(
        action=AuditAction.PRODUCT_EXPORTED,
        outcome=Outcome.SUCCESS,
        resource_type="product",
        resource=result.product,
        level=result.level,
        parameters={**result.parameters, "format": read.format},
        rows=len(result.rows),
        details={
            "format": read.format,
            "sha256": hashlib.sha256(body).hexdigest(),
            "bytes": len(body),
            "columns": formats.export_columns(result),
            "sources": result.sources,
        },
    )
    with audit_guard("the export"):
        audit_service.record_grouped(deps.sessions, ctx, record)
    return body


def _give_back(deps: ProductDeps, taken: level3.QuotaTaken | None) -> None:
    if taken is not None:
        level3.give_back(deps.sessions, taken)


def current_versions(
    deps: ProductDeps, sources: list[str], ctx: RequestContext | None = None
) -> dict[str, VersionInfo]:
    """The current versions of a product's sources; no query while none has changed.

    The epochs come from the request (read once when it was authenticated), or are read here.
    """

    def load() -> dict[str, VersionInfo]:
        with deps.sessions() as session:
            return storage_service.current_versions(session, deps.storage, list(sources))

    if deps.epochs is None:
        return load()
    epochs = ctx.cache_epochs if ctx is not None and ctx.cache_epochs is not None else None
    epoch = (epochs or deps.epochs.read()).datasets
    return dict(deps.versions_cache.get(tuple(sources), epoch, load))


def forget_dataset(deps: ProductDeps, dataset_id: str) -> int:
    """Drop this process's cached results computed from any version of `dataset_id` (after a
    deletion: no cached figure keeps counting rows that are gone). Other processes never serve
    theirs again (a result is keyed by its sources' versions, and those are no longer current)
    and evict them in time. The number dropped."""
    with deps.cache_lock:
        stale = [key for key in deps.cache if any(d == dataset_id for d, _ in key[2])]
        for key in stale:
            del deps.cache[key]
    return len(stale)


def _cache_key(
    deps: ProductDeps,
    definition: ProductDefinition,
    params: dict[str, Any],
    versions: dict[str, VersionInfo],
    access: ProductAccess,
) -> tuple[Any, ...]:
    return (
        definition.id,
        repr(sorted(normalise_parameters(definition, params).items())),
        tuple(sorted((d, v.version) for d, v in versions.items())),
        suppression_applies(definition.level, access),
        access.areas,
        deps.k,
    )


def read_if_cached(
    deps: ProductDeps,
    principal: Principal,
    ctx: RequestContext,
    product_id: str,
    pairs: list[tuple[str, str]],
) -> tuple[ProductRead, AuditRecord | None] | None:
    """A permitted, well-formed Level 1 or 2 read whose answer this process already holds.

    Returns the read and its audit event, which the caller writes with ``audit_held_read``
    before it sends anything; or None when anything would need a query, a computation or a
    refusal: the caller then takes ``read_product``, which does all of that. Never blocks, so
    the gateway may call it on its event loop.
    """
    definition = deps.catalogue.get(product_id)
    epochs = ctx.cache_epochs
    if definition is None or definition.level > 2 or deps.epochs is None or epochs is None:
        return None
    access = product_access(deps.policy, principal, definition.id, definition.level)
    if not access.allowed:
        return None
    try:
        fmt, params = _format_and_parameters(definition, pairs)
    except TogetherError:
        return None
    held, versions = deps.versions_cache.peek(tuple(definition.sources), epochs.datasets)
    if not held or versions is None:
        return None
    key = _cache_key(deps, definition, params, versions, access)
    with deps.cache_lock:
        result = deps.cache.get(key)
        if result is None:
            return None
        deps.cache.move_to_end(key)
    if deps.audit_disabled_for_benchmark:
        return ProductRead(result, fmt), None
    return ProductRead(result, fmt), _read_record(definition, access, result, fmt, None, None)


async def audit_held_read(deps: ProductDeps, ctx: RequestContext, record: AuditRecord) -> None:
    """Write a held read's audit event and return once it is committed; AuditUnavailable if
    it cannot be. On PostgreSQL from the event loop itself (no thread in between)."""
    # No audit, no data (security-tests T25).
    with audit_guard("the held read"):
        if deps.async_audit is not None and not record.subjects:
            await deps.async_audit.record(ctx, record)
        else:
            await asyncio.wrap_future(audit_service.submit_grouped(deps.sessions, ctx, record))


def _computed(
    deps: ProductDeps,
    definition: ProductDefinition,
    params: dict[str, Any],
    versions: dict[str, VersionInfo],
    access: ProductAccess,
) -> ProductResult:
    """A product's result, from the cache when the same question met the same versions.

    Versions are immutable, so a result is valid for as long as its sources' versions are
    current: the key holds them, and a new upload simply makes new keys. Each process keeps
    its own cache; nothing in it must agree across processes.
    """
    key = _cache_key(deps, definition, params, versions, access)
    with deps.cache_lock:
        cached = deps.cache.get(key)
        if cached is not None:
            deps.cache.move_to_end(key)
            return cached
    result = compute.run(
        definition,
        params,
        versions=versions,
        suppress=suppression_applies(definition.level, access),
        k=deps.k,
        areas=access.areas,
        protector=deps.protector,
        assessments=lambda: level3.latest_assessments(deps.sessions),
    )
    if definition.level <= 2:
        # Level 3 results name people: never kept beyond the request that asked for them.
        with deps.cache_lock:
            deps.cache[key] = result
            while len(deps.cache) > CACHE_ENTRIES:
                deps.cache.popitem(last=False)
    return result


def _read_record(
    definition: ProductDefinition,
    access: ProductAccess,
    result: ProductResult,
    fmt: str,
    purpose: str | None,
    case_reference: str | None,
) -> AuditRecord:
    """The audit event of a successful read."""
    details: dict[str, Any] = {
        "sources": result.sources,
        "contract_versions": result.contract_versions,
        "suppressed": suppression_applies(definition.level, access),
        "areas": sorted(access.areas) if access.areas is not None else None,
    }
    district = definition.spec.people.district if definition.spec.people else None
    if district is not None:
        # Which districts the people returned live in: a reviewer can check them against the
        # reader's areas without seeing anyone's name.
        details["districts"] = sorted({str(r[district]) for r in result.rows if r.get(district)})
    return AuditRecord(
        action=AuditAction.PRODUCT_READ,
        outcome=Outcome.SUCCESS,
        resource_type="product",
        resource=definition.id,
        level=definition.level,
        purpose=purpose,
        case_reference=case_reference,
        parameters={**result.parameters, "format": fmt},
        rows=len(result.rows),
        matched_rule=access.rule,
        policy_version=access.policy_version,
        details=details,
        subjects=people.subjects(definition, result.rows),
    )


def _audit_read(
    deps: ProductDeps,
    ctx: RequestContext,
    definition: ProductDefinition,
    access: ProductAccess,
    result: ProductResult,
    fmt: str,
    purpose: str | None = None,
    case_reference: str | None = None,
) -> None:
    record = _read_record(definition, access, result, fmt, purpose, case_reference)
    # No audit, no data (security-tests T25).
    with audit_guard("the read"):
        # Committed with the events of concurrent reads (one flush for all); returns only
        # once this read's own event is committed.
        audit_service.record_grouped(deps.sessions, ctx, record)


def assess_carrier(
    deps: ProductDeps,
    principal: Principal,
    ctx: RequestContext,
    body: Any,
    why: Justification,
) -> dict[str, Any]:
    """Grade a habitual knife carrier (RAG, lead agency): a Level 3 act, with purpose and case.

    The body names the person (`person_id`), so that no person id is ever in a URL (T45).

    The person must be on the list as of ``as_of`` (default today) and in the grader's areas;
    otherwise the answer is the same 404 whether or not they exist.
    """
    definition = get_definition(deps, level3.HKC_PRODUCT)
    access = product_access(deps.policy, principal, definition.id, definition.level)
    allowed, rule, policy_version = level3.may_assess(deps.policy, principal)
    if not (access.allowed and allowed):
        decision = (
            access
            if not access.allowed
            else ProductAccess(False, rule, policy_version, False, None)
        )
        audit_service.record_denial(
            deps.sessions,
            ctx,
            decision,
            reason="may not grade habitual knife carriers",
            resource_type="product",
            resource=definition.id,
            level=3,
        )
        raise Forbidden("you may not grade habitual knife carriers")
    level3.refuse_unjustified(deps.sessions, ctx, definition, access, why, {})
    purpose, case_reference = why.recordable()
    assert purpose is not None and case_reference is not None
    person_id, body = level3.person_of(body)
    rag, lead_agency, as_of = level3.parse_assessment(body)
    versions = current_versions(deps, definition.sources)
    current = compute.run(
        definition,
        {"as_of": as_of},
        versions=versions,
        suppress=False,
        k=deps.k,
        areas=access.areas,
        protector=deps.protector,
    )
    on_list = any(row.get("person_id") == person_id for row in current.rows)
    if not on_list:
        with audited(deps.sessions, "the refused grading") as uow:
            uow.audit(
                audit_service.event(
                    ctx,
                    AuditRecord(
                        action=AuditAction.PRODUCT_REFUSED,
                        outcome=Outcome.REJECTED,
                        reason="not on the list in the reader's areas",
                        resource_type="product",
                        resource=definition.id,
                        level=3,
                        purpose=purpose,
                        case_reference=case_reference,
                        matched_rule=rule,
                        policy_version=policy_version,
                        details={"as_of": as_of.isoformat(), "assessment": True},
                    ),
                )
            )
        level3.require_found(False)
    with audited(deps.sessions, "the grading") as uow:
        return level3.record_assessment(
            uow,
            ctx,
            principal,
            person_id,
            rag,
            lead_agency,
            purpose,
            case_reference,
            rule,
            policy_version,
        )
