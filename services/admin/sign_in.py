"""Signing in, audited: API clients exchanging credentials for a token, and people signing in
to the review pages with a password or through their organisation's OpenID Connect provider.

A refusal is recorded with its reason, and no claim of a refused caller is trusted as the actor.
"""

from __future__ import annotations

from datetime import timedelta

from services.admin.deps import AdminDeps
from services.audit import review
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.identity import accounts, oauth
from services.identity.accounts import Person
from services.kit.clock import utcnow
from services.kit.uow import audited


def issue_token(
    deps: AdminDeps,
    ctx: RequestContext,
    *,
    content_type: str,
    body: bytes,
    authorization: str | None,
) -> oauth.TokenResponse:
    """OAuth 2.0 client credentials: a signed token, or the RFC's error; either way audited
    before the answer is returned."""
    with audited(deps.sessions, "the token request") as uow:
        result = oauth.client_credentials(
            uow.session,
            deps.tokens,
            content_type=content_type,
            body=body,
            authorization=authorization,
        )
        if result.principal is not None:
            ctx.actor = result.principal.client_id
            ctx.actor_org = result.principal.organisation
            ctx.actor_roles = result.principal.roles
            record = AuditRecord(action=AuditAction.TOKEN_ISSUED, outcome=Outcome.SUCCESS)
        else:
            record = AuditRecord(
                action=AuditAction.TOKEN_REFUSED,
                outcome=Outcome.DENIED,
                reason=result.reason,
                # The id a caller claims is recorded as claimed, never as the actor.
                details={"claimed_client_id": (result.client_id or "")[:64]},
            )
        uow.audit(audit_service.event(ctx, record))
    return result


def signed_in_person(deps: AdminDeps, username: object) -> Person | None:
    """The person a page session names, looked up afresh so a disabled account is out at once."""
    if not isinstance(username, str):
        return None
    with deps.sessions() as session:
        return accounts.active_person(session, username)


def refuse_page_request(
    deps: AdminDeps, ctx: RequestContext, username: object, reason: str, page: str
) -> None:
    """Record a page request refused before any work (a form without this session's token)."""
    if isinstance(username, str):
        ctx.actor = accounts.ACTOR_PREFIX + username
    audit_service.record_committed(
        deps.sessions,
        ctx,
        AuditRecord(
            action=AuditAction.IG_REQUEST_REFUSED,
            outcome=Outcome.DENIED,
            reason=reason,
            resource_type="ig_page",
            resource=page[:200],
        ),
    )


def _failures(deps: AdminDeps, username: str) -> int:
    since = utcnow() - timedelta(seconds=deps.lockout_seconds)
    with deps.sessions() as session:
        return review.count_recent(
            session, AuditAction.IG_SIGN_IN_FAILED.value, "user", username, since
        )


def _record_failure(deps: AdminDeps, ctx: RequestContext, username: str, reason: str) -> None:
    # No claim of a failed sign-in is trusted, so the actor stays empty; the name is the resource.
    audit_service.record_committed(
        deps.sessions,
        ctx,
        AuditRecord(
            action=AuditAction.IG_SIGN_IN_FAILED,
            outcome=Outcome.DENIED,
            reason=reason,
            resource_type="user",
            resource=username[:100],
        ),
    )


def _record_success(deps: AdminDeps, ctx: RequestContext, person: Person, method: str) -> None:
    signed = RequestContext(
        request_id=ctx.request_id,
        client_address=ctx.client_address,
        actor=person.actor,
        actor_org=person.organisation,
        actor_roles=[person.role],
    )
    audit_service.record_committed(
        deps.sessions,
        signed,
        AuditRecord(
            action=AuditAction.IG_SIGNED_IN,
            outcome=Outcome.SUCCESS,
            resource_type="user",
            resource=person.username,
            resource_org=person.organisation,
            details={"method": method},
        ),
    )


def password_sign_in(
    deps: AdminDeps, ctx: RequestContext, username: str, password: str
) -> Person | None:
    """The person when the name and password are right and the account is not locked out."""
    username = username.strip()[:100]
    if not username or not password:
        _record_failure(deps, ctx, username or "-", "missing_credentials")
        return None
    if _failures(deps, username) >= deps.lockout_attempts:
        _record_failure(deps, ctx, username, "locked_out")
        return None
    with deps.sessions() as session:
        person = accounts.verify_password(session, username, password[:1024])
    if person is None:
        _record_failure(deps, ctx, username, "bad_credentials")
        return None
    _record_success(deps, ctx, person, "password")
    return person


def oidc_sign_in(
    deps: AdminDeps,
    ctx: RequestContext,
    username: str | None,
    organisation: str | None,
    refusal: str | None,
) -> Person | None:
    """The account the provider's identity maps to, if there is an active one."""
    if refusal is not None or username is None or organisation is None:
        _record_failure(deps, ctx, username or "-", refusal or "oidc_refused")
        return None
    with deps.sessions() as session:
        person = accounts.person_for_oidc(session, username, organisation)
    if person is None:
        _record_failure(deps, ctx, username, "oidc_no_matching_account")
        return None
    _record_success(deps, ctx, person, "oidc")
    return person


def record_sign_out(deps: AdminDeps, ctx: RequestContext, person: Person) -> None:
    audit_service.record_committed(
        deps.sessions,
        ctx,
        AuditRecord(
            action=AuditAction.IG_SIGNED_OUT,
            outcome=Outcome.SUCCESS,
            resource_type="user",
            resource=person.username,
            resource_org=person.organisation,
        ),
    )
