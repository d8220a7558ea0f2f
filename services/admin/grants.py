"""Roles that need a second person: requested by an administrator, approved by an IG lead.

One administrator alone could otherwise read Level 3: create a second admin client, grant it
`l3_practitioner` in every area and read named people (security-tests T11). So through the API
a grant of a role in `SECOND_PERSON_ROLES` (Level 3, ig_lead, admin) is only *requested*: the
client's roles do not change until an IG lead of the client's organisation, who is neither the
requester nor the grantee, approves it. Removals and other roles take effect at once. Each step
(request, approval, refusal) commits with its audit event, which carries the roles before and
after, the request id and the policy version; the IG leads' review alerts are computed from
those events.

The command line is the installation itself (the operator at the server's shell, who could
write the database directly): its role changes take effect at once, and it may approve a
pending request (`together grants approve`); both are audited with the operator as the actor.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.admin.deps import AdminDeps
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import Decision, Resource
from services.authz.models import APPROVED, PENDING, REFUSED, GrantRequest
from services.authz.vocabulary import (
    AREA_SCOPED_ROLES,
    ROLES,
    SECOND_PERSON_ROLES,
    Action,
    ResourceType,
)
from services.identity import repository as identity_repository
from services.identity import service as identity_service
from services.identity.schemas import Principal, RoleGrant
from services.kit.clock import utcnow
from services.kit.errors import BadRequest, Forbidden, NotFound, TogetherError
from services.kit.ids import new_id
from services.kit.uow import UnitOfWork, audited

# The event each step of a change of a client's roles writes, by `details.change` (kept in the
# details too): `applied` (at once), `requested` (waiting for an IG lead), `approved`, `refused`.
# The `privileged_grant` alert rule reads the requests and approvals.
STEP_EVENTS = {
    "applied": AuditAction.CLIENT_ROLES_CHANGED,
    "requested": AuditAction.GRANT_REQUESTED,
    "approved": AuditAction.GRANT_APPROVED,
    "refused": AuditAction.GRANT_REFUSED,
}


class GrantNotPending(TogetherError):
    code = "GRANT_NOT_PENDING"
    status = 409
    title = "This grant request was already decided"


# A Level 3 grant is time-bound: it ends within this many days of being granted.
LEVEL3_ROLE = "l3_practitioner"
LEVEL3_MAX_DAYS = 366


class ExpiryRequired(BadRequest):
    code = "GRANT_EXPIRY_REQUIRED"
    title = "This role is granted only until a date"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def grant_document(role: str, area: str | None, expires_at: datetime | None) -> dict[str, Any]:
    """A grant as the API, the command line and audit details show it (`expires_at` only on
    a time-bound grant)."""
    document: dict[str, Any] = {"role": role, "area": area}
    if expires_at is not None:
        document["expires_at"] = _iso(expires_at)
    return document


def _documents(grants: Iterable[RoleGrant]) -> list[dict[str, Any]]:
    return [
        grant_document(g.role, g.area, g.expires_at)
        for g in sorted(grants, key=lambda g: (g.role, g.area or ""))
    ]


def _grants(documents: Iterable[dict[str, Any]]) -> set[RoleGrant]:
    return {
        RoleGrant(
            str(d["role"]),
            d.get("area"),
            datetime.fromisoformat(d["expires_at"]) if d.get("expires_at") else None,
        )
        for d in documents
    }


def check_level3_expiry(grants: Iterable[RoleGrant]) -> None:
    """A Level 3 grant names its end, no more than LEVEL3_MAX_DAYS ahead (an expiry in the
    past is refused for every role by `check_grants`)."""
    latest = utcnow() + timedelta(days=LEVEL3_MAX_DAYS)
    for grant in grants:
        if grant.role != LEVEL3_ROLE:
            continue
        if grant.expires_at is None or grant.expires_at > latest:
            raise ExpiryRequired(
                f"{LEVEL3_ROLE} is granted only with an expiry no more than "
                f"{LEVEL3_MAX_DAYS} days ahead (expires_at)"
            )


def _merged(held: Iterable[RoleGrant], added: Iterable[RoleGrant]) -> set[RoleGrant]:
    """`held` with `added`, an added grant replacing a held one of the same role and area
    (a renewal changes only the expiry)."""
    by_key = {(g.role, g.area): g for g in held}
    by_key.update({(g.role, g.area): g for g in added})
    return set(by_key.values())


def needs_second_person(grants: Iterable[RoleGrant]) -> list[RoleGrant]:
    return [g for g in grants if g.role in SECOND_PERSON_ROLES]


def request_json(request: GrantRequest) -> dict[str, Any]:
    return {
        "request_id": request.id,
        "client_id": request.client_id,
        "organisation": request.organisation,
        "roles": request.grants,
        "removals": request.removals,
        "requested_by": request.requested_by,
        "requested_at": request.requested_at.isoformat(timespec="seconds"),
        "state": request.state,
        "decided_by": request.decided_by,
        "decided_at": request.decided_at.isoformat(timespec="seconds")
        if request.decided_at
        else None,
        "approver": f"an ig_lead of {request.organisation} other than the requester and grantee",
    }


def _roles_event(
    uow: UnitOfWork,
    ctx: RequestContext,
    client_id: str,
    organisation: str,
    details: dict[str, Any],
    decision: Decision | None = None,
) -> None:
    uow.audit(
        audit_service.event(
            ctx,
            AuditRecord(
                action=STEP_EVENTS[details["change"]],
                outcome=Outcome.SUCCESS,
                resource_type="client",
                resource=client_id,
                resource_org=organisation,
                matched_rule=decision.rule if decision else None,
                policy_version=decision.policy_version if decision else None,
                details=details,
            ),
        )
    )


def _open_request(
    session: Session,
    ctx: RequestContext,
    client_id: str,
    organisation: str,
    grants: list[RoleGrant],
    removals: Iterable[RoleGrant],
) -> GrantRequest:
    request = GrantRequest(
        id=new_id(),
        client_id=client_id,
        organisation=organisation,
        grants=_documents(grants),
        removals=_documents(removals),
        requested_by=ctx.actor or "unknown",
        requested_by_org=ctx.actor_org,
        requested_at=utcnow(),
        state=PENDING,
    )
    session.add(request)
    session.flush()
    return request


def request_roles(
    deps: AdminDeps, ctx: RequestContext, client_id: str, wanted: list[RoleGrant]
) -> dict[str, Any]:
    """Replace a client's roles, except that added roles needing a second person are requested.

    The caller has passed `principals.require_admin`. Returns the roles now in force and the
    pending request (None when nothing waits).
    """
    target = set(identity_service.check_grants(wanted, ROLES, AREA_SCOPED_ROLES))
    identity_service.check_expiries(target)
    check_level3_expiry(target)
    with audited(deps.sessions, "changing a client's roles") as uow:
        client = identity_repository.get_by_client_id(uow.session, client_id)
        if client is None:
            raise NotFound(f"no client {client_id!r}")
        before = identity_service.to_principal(client)
        current = set(before.grants)
        waiting = needs_second_person(target - current)
        # A renewal waiting for its approval leaves the grant it renews in force meanwhile.
        renewed = {(g.role, g.area) for g in waiting}
        now = (target - set(waiting)) | {g for g in current if (g.role, g.area) in renewed}
        removals: set[RoleGrant] = set()
        if not now:
            # A client keeps at least one role: what the change removes waits for the approval.
            now, removals = current, current - target
        after = before
        if now != current:
            _, after = identity_service.set_grants(
                uow.session, client_id, now, ROLES, AREA_SCOPED_ROLES
            )
            _roles_event(
                uow,
                ctx,
                client_id,
                client.organisation,
                {
                    "change": "applied",
                    "before": _documents(before.grants),
                    "after": _documents(after.grants),
                },
            )
        pending = None
        if waiting:
            request = _open_request(
                uow.session, ctx, client_id, client.organisation, waiting, removals
            )
            pending = request_json(request)
            _roles_event(
                uow,
                ctx,
                client_id,
                client.organisation,
                {
                    "change": "requested",
                    "request_id": request.id,
                    "requested": request.grants,
                    "removals": request.removals,
                    "before": _documents(after.grants),
                },
            )
        if now == current and not waiting:
            _roles_event(
                uow,
                ctx,
                client_id,
                client.organisation,
                {"change": "applied", "before": _documents(current), "after": _documents(current)},
            )
    return {"client_id": client_id, "roles": _documents(after.grants), "pending": pending}


def create_client_requesting(
    deps: AdminDeps,
    ctx: RequestContext,
    *,
    name: str,
    organisation: str,
    grants: list[RoleGrant],
) -> dict[str, Any]:
    """Create a client with the roles that take effect at once; request the others.

    A client is never created without a role in force, so a client whose every role needs a
    second person is refused (400): create it with one that does not, then request the others.
    """
    checked = identity_service.check_grants(grants, ROLES, AREA_SCOPED_ROLES)
    identity_service.check_expiries(checked)
    check_level3_expiry(checked)
    waiting = needs_second_person(checked)
    now = [g for g in checked if g not in waiting]
    if not now:
        raise BadRequest(
            "a new client needs one role that takes effect at once (l1_reader, for example); "
            "l3_practitioner, ig_lead and admin are granted when an IG lead approves them"
        )
    with audited(deps.sessions, "creating a client") as uow:
        created = identity_service.create_client(
            uow.session,
            name=name,
            organisation=organisation,
            grants=now,
            known_roles=ROLES,
            area_scoped_roles=AREA_SCOPED_ROLES,
        )
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.CLIENT_CREATED,
                    outcome=Outcome.SUCCESS,
                    resource_type="client",
                    resource=created.client_id,
                    resource_org=organisation,
                    details={"roles": _documents(created.principal.grants)},
                ),
            )
        )
        pending = None
        if waiting:
            request = _open_request(uow.session, ctx, created.client_id, organisation, waiting, ())
            pending = request_json(request)
            _roles_event(
                uow,
                ctx,
                created.client_id,
                organisation,
                {
                    "change": "requested",
                    "request_id": request.id,
                    "requested": request.grants,
                    "removals": [],
                    "before": _documents(created.principal.grants),
                },
            )
    return {
        "client_id": created.client_id,
        "client_secret": created.client_secret,
        "organisation": organisation,
        "roles": _documents(created.principal.grants),
        "pending": pending,
    }


def _approval_decision(
    deps: AdminDeps, principal: Principal, request_id: str, organisation: str | None
) -> Decision:
    return deps.policy.decide(
        principal, Action.GRANT_APPROVE, Resource(ResourceType.GRANTS, request_id, organisation)
    )


def _refuse(
    deps: AdminDeps, ctx: RequestContext, decision: Decision, reason: str, request_id: str
) -> None:
    audit_service.record_denial(
        deps.sessions,
        ctx,
        decision,
        reason=reason,
        resource_type="grant_request",
        resource=request_id[:64],
    )


def check_approver(
    deps: AdminDeps, principal: Principal, ctx: RequestContext, request_id: str
) -> Decision:
    """Refuse (audited) anyone but an IG lead of the grantee's organisation who is neither the
    requester nor the grantee. A request of another organisation is answered as a missing one."""
    with deps.sessions() as session:
        request = session.get(GrantRequest, request_id)
    owner = request.organisation if request is not None else None
    decision = _approval_decision(deps, principal, request_id, owner)
    if request is None or not decision.allowed:
        approver_somewhere = _approval_decision(
            deps, principal, request_id, principal.organisation
        ).allowed
        if not approver_somewhere:
            _refuse(deps, ctx, decision, "not an IG lead", request_id)
            raise Forbidden("only an IG lead of the client's organisation decides a grant")
        _refuse(
            deps, ctx, decision, "no such grant request in the approver's organisation", request_id
        )
        raise NotFound("no such grant request")
    if principal.client_id in (request.requested_by, request.client_id):
        _refuse(deps, ctx, decision, "a grant needs a second person", request_id)
        raise Forbidden("a grant is decided by someone other than its requester and its grantee")
    return decision


def decide(
    deps: AdminDeps,
    ctx: RequestContext,
    request_id: str,
    *,
    approve: bool,
    decision: Decision | None = None,
) -> dict[str, Any]:
    """Apply (or refuse) a pending request: the client's roles and the request's state change
    with the event, in one transaction. `decision` is the approver's policy decision (None
    for the installation's own command line)."""
    try:
        with audited(deps.sessions, "deciding a grant") as uow:
            request = uow.session.execute(
                select(GrantRequest).where(GrantRequest.id == request_id).with_for_update()
            ).scalar_one_or_none()
            if request is None:
                raise NotFound("no such grant request")
            if request.state != PENDING:
                raise GrantNotPending(f"this grant request was already {request.state}")
            client = identity_repository.get_by_client_id(uow.session, request.client_id)
            if client is None:
                raise NotFound(f"no client {request.client_id!r}")
            before = identity_service.to_principal(client)
            after = before
            if approve:
                roles = _merged(before.grants, _grants(request.grants)) - _grants(request.removals)
                _, after = identity_service.set_grants(
                    uow.session, request.client_id, roles, ROLES, AREA_SCOPED_ROLES
                )
            request.state = APPROVED if approve else REFUSED
            request.decided_by = ctx.actor
            request.decided_at = utcnow()
            _roles_event(
                uow,
                ctx,
                request.client_id,
                request.organisation,
                {
                    "change": "approved" if approve else "refused",
                    "request_id": request.id,
                    "requested_by": request.requested_by,
                    "decided_by": ctx.actor,
                    "requested": request.grants,
                    "before": _documents(before.grants),
                    "after": _documents(after.grants),
                },
                decision,
            )
            result = request_json(request) | {"roles": _documents(after.grants)}
    except GrantNotPending as exc:
        if decision is not None:
            _refuse(deps, ctx, decision, exc.detail, request_id)
        raise
    return result


def _reviewed_organisation(
    deps: AdminDeps, principal: Principal | None, ctx: RequestContext
) -> str | None:
    """None (every organisation) for an administrator and the command line, their own for an
    IG lead; anyone else is refused (audited)."""
    if principal is None:
        return None
    manage = deps.policy.decide(
        principal, Action.CLIENT_MANAGE, Resource(ResourceType.PRINCIPALS, "*", None)
    )
    if manage.allowed:
        return None
    own = _approval_decision(deps, principal, "*", principal.organisation)
    if not own.allowed:
        _refuse(deps, ctx, own, "neither an administrator nor an IG lead", "*")
        raise Forbidden("administrators and IG leads only")
    return principal.organisation


EXPIRING_MAX_DAYS = 3660


def list_expiring(
    deps: AdminDeps, principal: Principal | None, ctx: RequestContext, *, days: int = 30
) -> list[dict[str, Any]]:
    """Role grants still in force that end within `days`, soonest first: every organisation's
    for an administrator, their own for an IG lead. The listing is audited before it leaves."""
    organisation = _reviewed_organisation(deps, principal, ctx)
    if not 1 <= days <= EXPIRING_MAX_DAYS:
        raise BadRequest(f"days must be 1 to {EXPIRING_MAX_DAYS}")
    now = utcnow()
    with audited(deps.sessions, "the expiring grants listing") as uow:
        rows = []
        for client, role in identity_repository.expiring_rows(
            uow.session, now + timedelta(days=days), organisation
        ):
            expires_at = role.expires_at
            if expires_at is None or expires_at <= now:
                continue
            rows.append(
                {
                    "client_id": client.client_id,
                    "name": client.name,
                    "organisation": client.organisation,
                    "role": role.role,
                    "area": role.area,
                    "expires_at": _iso(expires_at),
                    "days_left": (expires_at - now).days,
                }
            )
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.GRANT_EXPIRING_LISTED,
                    outcome=Outcome.SUCCESS,
                    resource_type="client_roles",
                    resource_org=organisation,
                    parameters={"days": days},
                    rows=len(rows),
                ),
            )
        )
    return rows


def list_requests(
    deps: AdminDeps, principal: Principal | None, ctx: RequestContext, *, state: str | None
) -> list[dict[str, Any]]:
    """Grant requests: every one for an administrator (and the command line), their own
    organisation's for an IG lead; anyone else is refused (audited). The listing is audited."""
    organisation = _reviewed_organisation(deps, principal, ctx)
    if state is not None and state not in (PENDING, APPROVED, REFUSED):
        raise BadRequest("state must be pending, approved or refused")
    with audited(deps.sessions, "the grant request listing") as uow:
        statement = select(GrantRequest).order_by(GrantRequest.requested_at, GrantRequest.id)
        if organisation is not None:
            statement = statement.where(GrantRequest.organisation == organisation)
        if state is not None:
            statement = statement.where(GrantRequest.state == state)
        rows = [request_json(r) for r in uow.session.execute(statement).scalars()]
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.CLIENTS_LISTED,
                    outcome=Outcome.SUCCESS,
                    resource_type="grant_requests",
                    resource_org=organisation,
                    parameters={"state": state},
                    rows=len(rows),
                ),
            )
        )
    return rows
