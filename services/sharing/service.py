"""Delta Sharing for recipients: what they see, what a query returns, what a file URL opens.

A recipient is an existing principal. The tables it sees are those whose product the same
Casbin policy lets it read (``product_access``), with the same suppression and areas as the
JSON API: each table is materialised per variant (see ``materialise``), so a suppressed reader
gets the suppressed file and a Level 2 reader the file of its own areas. Shares and schemas
are visible when at least one of their tables is.

Every query and every file read writes an audit event, committed before the response leaves;
a file URL is refused (403, no bytes) when it is malformed, altered, expired, presented with
another principal's token, or when its recipient has been disabled or no longer reads that
variant of the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.service import ProductAccess, product_access
from services.identity import service as identity_service
from services.identity.schemas import Principal
from services.identity.tokens import TokenClaims, TokenInvalid, TokenService
from services.kit.clock import utcnow
from services.kit.errors import AreaNotPermitted, BadRequest, Forbidden, NotFound
from services.kit.keys import KeyMaterial
from services.kit.settings import Settings
from services.kit.uow import audited
from services.products.service import ProductDeps
from services.sharing import materialise, protocol, urls
from services.sharing.config import PublishedTable, SharingConfig, load_sharing, share_id
from services.sharing.materialise import Snapshot, Variant
from services.sharing.urls import FileGrant, UrlRefused
from services.storage.objects import LocalStore, ObjectMissing, ObjectStore

AUDIENCE_SUFFIX = ":delta-sharing"
PROFILE_TYPES = ("bearer_token", "oauth_client_credentials")


@dataclass
class SharingDeps:
    config: SharingConfig
    products: ProductDeps
    # Tokens of profiles: the platform's key and issuer, an audience of their own, so that
    # they open the sharing endpoint and nothing else.
    tokens: TokenService
    platform_tokens: TokenService
    url_key: bytes
    # Where materialised files are (keys under sharing/): the platform's object store.
    store: ObjectStore
    endpoint: str | None
    # How long a file URL stays valid (short: it opens the file without a bearer token).
    url_lifetime_seconds: int = urls.URL_LIFETIME_SECONDS


def _sharing_store(settings: Settings, products: ProductDeps) -> ObjectStore:
    # The default local store keeps materialisations where they always were (the data
    # folder's sharing/); any configured store holds them under its own sharing/ prefix.
    if settings.storage_url is None and isinstance(products.storage.store, LocalStore):
        return LocalStore(settings.data_dir)
    return products.storage.store


def build_sharing(
    settings: Settings, products: ProductDeps, platform_tokens: TokenService, keys: KeyMaterial
) -> SharingDeps:
    """The sharing endpoint's wiring; a bad sharing file stops the platform here."""
    tokens = TokenService(
        keys.jwt_private_key_pem,
        issuer=settings.issuer,
        audience=settings.audience + AUDIENCE_SUFFIX,
        lifetime=settings.sharing_token_lifetime_seconds,
        leeway=settings.token_leeway_seconds,
    )
    return SharingDeps(
        config=load_sharing(settings.sharing_file, products.catalogue, materialise.today()),
        products=products,
        tokens=tokens,
        platform_tokens=platform_tokens,
        url_key=urls.derive_key(keys.hmac_key),
        store=_sharing_store(settings, products),
        endpoint=settings.sharing_endpoint,
        url_lifetime_seconds=settings.sharing_url_lifetime_seconds,
    )


def verify_bearer(deps: SharingDeps, token: str) -> TokenClaims:
    """A profile's token, or a platform access token (an OAuth client-credentials profile)."""
    try:
        return deps.tokens.verify(token)
    except TokenInvalid as exc:
        if exc.reason != "wrong_audience":
            raise
    return deps.platform_tokens.verify(token)


# Profiles


def issue_profile(
    deps: SharingDeps,
    principal: Principal,
    ctx: RequestContext,
    *,
    endpoint: str,
    token_endpoint: str,
    kind: str,
) -> dict[str, Any]:
    if kind not in PROFILE_TYPES:
        raise BadRequest(f"type must be one of {', '.join(PROFILE_TYPES)}")
    profile: dict[str, Any]
    details: dict[str, Any] = {"type": kind}
    if kind == "bearer_token":
        token, lifetime = deps.tokens.issue(
            client_id=principal.client_id, organisation=principal.organisation
        )
        expires = datetime.fromtimestamp(int(utcnow().timestamp()) + lifetime, tz=UTC)
        expiration = expires.isoformat().replace("+00:00", "Z")
        profile = {
            "shareCredentialsVersion": 1,
            "endpoint": endpoint,
            "bearerToken": token,
            "expirationTime": expiration,
        }
        details["expires_at"] = expiration
    else:
        # The secret is never held in the clear: the analyst adds the one they were given.
        profile = {
            "shareCredentialsVersion": 2,
            "type": "oauth_client_credentials",
            "endpoint": endpoint,
            "tokenEndpoint": token_endpoint,
            "clientId": principal.client_id,
            "clientSecret": "",
        }
    _commit(
        deps,
        ctx,
        AuditRecord(
            action=AuditAction.SHARING_PROFILE_ISSUED,
            outcome=Outcome.SUCCESS,
            resource_type="sharing_profile",
            resource=principal.client_id,
            resource_org=principal.organisation,
            details=details,
        ),
    )
    return profile


# Listing


def visible_tables(
    deps: SharingDeps, principal: Principal
) -> list[tuple[PublishedTable, ProductAccess]]:
    decided: dict[str, ProductAccess] = {}
    visible = []
    for table in deps.config.tables:
        access = decided.get(table.product)
        if access is None:
            access = product_access(deps.products.policy, principal, table.product, table.level)
            decided[table.product] = access
        if access.allowed and _within_areas(deps, table, access):
            visible.append((table, access))
    return visible


def _within_areas(deps: SharingDeps, table: PublishedTable, access: ProductAccess) -> bool:
    """False when the table's fixed CSP areas are not all among the reader's."""
    if access.areas is None:
        return True
    definition = deps.products.catalogue[table.product]
    for name, value in table.parameters.items():
        spec = definition.parameter(name)
        if spec is not None and spec.type == "csp":
            values = value if isinstance(value, list) else [value]
            if any(str(v) not in access.areas for v in values):
                return False
    return True


def _table_item(table: PublishedTable) -> dict[str, Any]:
    return {
        "name": table.name,
        "schema": table.schema,
        "share": table.share,
        "shareId": table.share_id,
        "id": table.id,
    }


def list_shares(
    deps: SharingDeps, principal: Principal, max_results: int | None, token: str | None
) -> dict[str, Any]:
    names = list(dict.fromkeys(t.share for t, _ in visible_tables(deps, principal)))
    return protocol.page([{"name": n, "id": share_id(n)} for n in names], max_results, token)


def _visible_in(
    deps: SharingDeps, principal: Principal, share: str, schema: str | None = None
) -> list[PublishedTable]:
    share, schema = share.lower(), schema.lower() if schema is not None else None
    tables = [
        t
        for t, _ in visible_tables(deps, principal)
        if t.share == share and (schema is None or t.schema == schema)
    ]
    if not tables:
        what = f"schema {share}.{schema}" if schema is not None else f"share {share}"
        raise NotFound(f"no {what} is shared with you")
    return tables


def get_share(deps: SharingDeps, principal: Principal, share: str) -> dict[str, Any]:
    name = _visible_in(deps, principal, share)[0].share
    return {"share": {"name": name, "id": share_id(name)}}


def list_schemas(
    deps: SharingDeps,
    principal: Principal,
    share: str,
    max_results: int | None,
    token: str | None,
) -> dict[str, Any]:
    tables = _visible_in(deps, principal, share)
    schemas = list(dict.fromkeys(t.schema for t in tables))
    items = [{"name": s, "share": tables[0].share} for s in schemas]
    return protocol.page(items, max_results, token)


def list_tables(
    deps: SharingDeps,
    principal: Principal,
    share: str,
    schema: str | None,
    max_results: int | None,
    token: str | None,
) -> dict[str, Any]:
    tables = _visible_in(deps, principal, share, schema)
    return protocol.page([_table_item(t) for t in tables], max_results, token)


# One table


@dataclass(frozen=True)
class TableRead:
    table: PublishedTable
    access: ProductAccess
    snapshot: Snapshot


def open_table(
    deps: SharingDeps,
    principal: Principal,
    ctx: RequestContext,
    share: str,
    schema: str,
    name: str,
) -> TableRead:
    """A table the recipient may read, at its current version for the recipient's variant."""
    table = deps.config.find(share, schema, name)
    if not isinstance(table, PublishedTable):
        raise NotFound(f"no table {share}.{schema}.{name}"[:200])
    access = product_access(deps.products.policy, principal, table.product, table.level)
    if not access.allowed:
        audit_service.record_denial(
            deps.products.sessions,
            ctx,
            access,
            reason="tier not permitted",
            resource_type="sharing_table",
            resource=table.key,
            level=table.level,
        )
        raise Forbidden(f"you may not read {table.key} (Level {table.level})")
    try:
        snapshot = materialise.current_snapshot(
            deps.products, deps.store, table, Variant.of(access, table.level)
        )
    except AreaNotPermitted:
        # The table's fixed csp parameter names an area outside the reader's.
        audit_service.record_denial(
            deps.products.sessions,
            ctx,
            access,
            reason="outside the reader's areas",
            resource_type="sharing_table",
            resource=table.key,
            level=table.level,
        )
        raise
    return TableRead(table, access, snapshot)


def metadata_lines(read: TableRead, *, delta: bool = False) -> list[dict[str, Any]]:
    """The protocol and metaData lines, in the parquet response format or the delta one."""
    table, snapshot = read.table, read.snapshot
    metadata: dict[str, Any] = {
        "id": table.id,
        "name": table.name,
        "description": table.description,
        "format": {"provider": "parquet"},
        "schemaString": snapshot.schema_string,
        "partitionColumns": [],
        "configuration": configuration(table, snapshot),
    }
    if delta:
        # The Delta log's own actions, wrapped: the connector replays them as a local log.
        metadata["format"]["options"] = {}
        metadata["createdTime"] = _millis(snapshot.created_at)
        return [
            {"protocol": {"deltaProtocol": {"minReaderVersion": 1, "minWriterVersion": 2}}},
            {
                "metaData": {
                    "deltaMetadata": metadata,
                    "version": snapshot.version,
                    "size": snapshot.size_bytes,
                    "numFiles": 1,
                }
            },
        ]
    metadata.update({"size": snapshot.size_bytes, "numFiles": 1})
    return [{"protocol": {"minReaderVersion": 1}}, {"metaData": metadata}]


def _millis(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def configuration(table: PublishedTable, snapshot: Snapshot) -> dict[str, str]:
    """What the table is, for the analyst: the product, its parameters, the disclosure."""
    return {
        "together.product": table.product,
        "together.level": str(table.level),
        "together.parameters": json.dumps(snapshot.parameters, sort_keys=True),
        "together.sources": json.dumps(snapshot.sources, sort_keys=True),
        "together.suppressed": "true" if snapshot.variant.suppressed else "false",
        "together.areas": ",".join(snapshot.variant.areas or ()) or "all",
        "together.materialised_at": snapshot.created_at,
    }


def check_query(read: TableRead, body: dict[str, Any]) -> None:
    """Refuse what this server does not share: history and change feeds."""
    for name in ("timestamp", "startingVersion", "endingVersion", "startingTimestamp"):
        if body.get(name) is not None:
            raise BadRequest(f"{name}: the history of published tables is not shared")
    version = body.get("version")
    if version is not None and version != read.snapshot.version:
        raise BadRequest(
            f"version {version!r}: only the current version "
            f"({read.snapshot.version}) of this table is shared"
        )


def query_lines(
    deps: SharingDeps,
    principal: Principal,
    ctx: RequestContext,
    read: TableRead,
    endpoint: str,
    *,
    delta: bool = False,
) -> list[dict[str, Any]]:
    """The query's answer; its audit event is committed before this returns."""
    snapshot = read.snapshot
    expires = int(utcnow().timestamp()) + deps.url_lifetime_seconds
    token = urls.seal(deps.url_key, FileGrant(snapshot.file_id, principal.client_id, expires))
    url = f"{endpoint}/files/{token}"
    stats = f'{{"numRecords":{snapshot.row_count}}}'
    lines = metadata_lines(read, delta=delta)
    if delta:
        created = _millis(snapshot.created_at)
        add = {
            "path": url,
            "partitionValues": {},
            "size": snapshot.size_bytes,
            "modificationTime": created,
            "dataChange": True,
            "stats": stats,
        }
        file: dict[str, Any] = {
            "id": snapshot.file_id,
            "version": snapshot.version,
            "timestamp": created,
            "expirationTimestamp": expires * 1000,
            "deltaSingleAction": {"add": add},
        }
    else:
        file = {
            "url": url,
            "id": snapshot.file_id,
            "partitionValues": {},
            "size": snapshot.size_bytes,
            "stats": stats,
            "version": snapshot.version,
            "expirationTimestamp": expires * 1000,
        }
    lines.append({"file": file})
    _commit(
        deps,
        ctx,
        AuditRecord(
            action=AuditAction.SHARING_QUERIED,
            outcome=Outcome.SUCCESS,
            resource_type="sharing_table",
            resource=read.table.key,
            level=read.table.level,
            parameters=snapshot.parameters,
            rows=snapshot.row_count,
            matched_rule=read.access.rule,
            policy_version=read.access.policy_version,
            details={
                "product": read.table.product,
                "version": snapshot.version,
                "file": snapshot.file_id,
                "sources": snapshot.sources,
                **snapshot.variant.describe(),
            },
        ),
    )
    return lines


# File URLs


@dataclass(frozen=True)
class FileRead:
    path: Path
    size: int


def read_file(
    deps: SharingDeps,
    ctx: RequestContext,
    token: str,
    authorization: str | None,
    byte_range: str | None,
    *,
    audit: bool = True,
) -> FileRead:
    """The file a URL names, after every check; its audit event is committed first.

    ``audit`` is False only for HEAD, which returns the size and no byte of the file.
    """
    grant: FileGrant | None = None
    try:
        grant = urls.open_token(deps.url_key, token, int(utcnow().timestamp()))
        principal, snapshot, table, access = _check_grant(deps, grant, authorization)
    except UrlRefused as refused:
        _refuse(deps, ctx, refused.reason, refused.grant or grant)
        raise Forbidden("this file URL is not valid for you (or no longer)") from None
    ctx.actor = principal.client_id
    ctx.actor_org = principal.organisation
    ctx.actor_roles = principal.roles
    if audit:
        _commit(
            deps,
            ctx,
            AuditRecord(
                action=AuditAction.SHARING_FILE_READ,
                outcome=Outcome.SUCCESS,
                resource_type="sharing_table",
                resource=table.key,
                level=table.level,
                parameters=snapshot.parameters,
                rows=snapshot.row_count,
                matched_rule=access.rule,
                policy_version=access.policy_version,
                details={
                    "product": table.product,
                    "version": snapshot.version,
                    "file": snapshot.file_id,
                    # The principal the URL was issued to (the actor too): a URL is no
                    # anonymous capability, each fetch is on its recipient's record.
                    "recipient": grant.recipient,
                    "range": (byte_range or "")[:100] or None,
                    **snapshot.variant.describe(),
                },
            ),
        )
    try:
        # From the store, through the local cache of an S3 store: any replica can answer.
        path = deps.store.local_path(snapshot.file_key)
    except ObjectMissing:
        raise NotFound("the file of this URL is no longer stored") from None
    return FileRead(path, snapshot.size_bytes)


def _check_grant(
    deps: SharingDeps, grant: FileGrant, authorization: str | None
) -> tuple[Principal, Snapshot, PublishedTable, ProductAccess]:
    if authorization:
        # The URL alone is the credential the connectors use; a request that also names a
        # principal must name the URL's own recipient.
        scheme, _, bearer = authorization.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise TokenInvalid("not_a_bearer_token")
            claims = verify_bearer(deps, bearer.strip())
        except TokenInvalid:
            raise UrlRefused("presented_token_invalid", grant) from None
        if claims.client_id != grant.recipient:
            raise UrlRefused("another_recipient", grant)
    with deps.products.sessions() as session:
        principal = identity_service.active_principal(session, grant.recipient)
        found = materialise.snapshot_of_file(session, deps.store, grant.file_id)
    if principal is None:
        raise UrlRefused("recipient_disabled", grant)
    if found is None:
        raise UrlRefused("file_unknown", grant)
    snapshot, _product = found
    table = next((t for t in deps.config.tables if t.key == snapshot.table_key), None)
    if table is None:
        raise UrlRefused("table_withdrawn", grant)
    access = product_access(deps.products.policy, principal, table.product, table.level)
    if not access.allowed:
        raise UrlRefused("access_withdrawn", grant)
    if Variant.of(access, table.level) != snapshot.variant:
        raise UrlRefused("disclosure_changed", grant)
    if deps.store.info(snapshot.file_key) is None:
        raise UrlRefused("file_missing", grant)
    return principal, snapshot, table, access


def _refuse(deps: SharingDeps, ctx: RequestContext, reason: str, grant: FileGrant | None) -> None:
    # The recipient named inside an authentic URL is recorded as named, never as the actor.
    details: dict[str, Any] = {}
    if grant is not None:
        details = {"recipient": grant.recipient, "file": grant.file_id}
    with audited(deps.products.sessions, "the refused file URL") as uow:
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.ACCESS_DENIED,
                    outcome=Outcome.DENIED,
                    reason=reason,
                    resource_type="sharing_file",
                    details=details,
                ),
            )
        )


def _commit(deps: SharingDeps, ctx: RequestContext, record: AuditRecord) -> None:
    # No audit, no data (security-tests T25): a failure here is AuditUnavailable.
    with audited(deps.products.sessions, "the sharing request") as uow:
        uow.audit(audit_service.event(ctx, record))
