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
from services.identity import accounts, counters, oauth, web_sessions
from services.identity import repository as identity_repository
from services.identity.accounts import Person
from services.kit.clock import utcnow
from services.kit.uow import UnitOfWork, audited, transaction


def issue_token(
    deps: AdminDeps,
    ctx: RequestContext,
    *,
    content_type: str,
    body: bytes,
    authorization: str | None,
    policy: oauth.TokenPolicy | None = None,
    rejection_window_seconds: int = 60,
) -> oauth.TokenResponse:
    """OAuth 2.0 client credentials: a signed token, or the RFC's error (429 when limited);
    either way accounted for in the audit trail before the answer is returned.

    The limits are checked first, the costly check (Argon2 or a signature) runs outside any
    transaction, and the outcome commits with its event and the failure counters. A malformed
    or limited request costs nothing: it is audited in aggregate (first of its kind from the
    address in a window, the others counted), so a flood cannot fill the audit table."""
    policy = policy or oauth.TokenPolicy()
    address = ctx.client_address or "-"
    parsed = oauth.parse_request(content_type, body, authorization, policy)
    if isinstance(parsed, oauth.TokenResponse):
        _note_refusal(deps, ctx, AuditAction.TOKEN_REFUSED, parsed, rejection_window_seconds)
        return parsed
    now = utcnow()
    with deps.sessions() as session:
        limit = oauth.limited(session, policy, parsed, address, now)
    if limit is not None:
        _note_refusal(deps, ctx, AuditAction.TOKEN_REFUSED, limit, rejection_window_seconds)
        return limit
    checked = oauth.check_credentials(deps.sessions, parsed, policy, now)
    with audited(deps.sessions, "the token request") as uow:
        result: oauth.TokenResponse
        if checked.principal is not None and (
            checked.jti is None
            or oauth.claim_jti(
                uow.session, parsed.client_id, checked.jti, checked.jti_expires or 0, now
            )
        ):
            result = oauth.issued(deps.tokens, parsed, checked.principal)
            ctx.actor = checked.principal.client_id
            ctx.actor_org = checked.principal.organisation
            ctx.actor_roles = checked.principal.roles
            record = AuditRecord(
                action=AuditAction.TOKEN_ISSUED,
                outcome=Outcome.SUCCESS,
                details={"method": parsed.method},
            )
        else:
            result = checked.refusal or oauth.replayed(parsed)
            details: dict[str, object] = {
                # The id a caller claims is recorded as claimed, never as the actor.
                "claimed_client_id": parsed.client_id[:64],
                "method": parsed.method,
            }
            locked = oauth.count_failure(uow.session, policy, parsed, address, now)
            if locked is None:
                record = AuditRecord(
                    action=AuditAction.TOKEN_REFUSED,
                    outcome=Outcome.DENIED,
                    reason=result.reason,
                    details=details,
                )
            else:
                record = _locked_out(uow, parsed.client_id, result.reason, details, locked, policy)
        uow.audit(audit_service.event(ctx, record))
    return result


def _locked_out(
    uow: UnitOfWork,
    claimed_client_id: str,
    reason: str | None,
    details: dict[str, object],
    failures: int,
    policy: oauth.TokenPolicy,
) -> AuditRecord:
    """The failure that locks a client out: `client.locked_out` (denied, so the `denials` rule
    counts it too), about the claimed client and, when it exists, its organisation, so that
    organisation's IG leads see it (the `lockout` alert rule). The claim is never the actor."""
    client = identity_repository.get_by_client_id(uow.session, claimed_client_id)
    return AuditRecord(
        action=AuditAction.CLIENT_LOCKED_OUT,
        outcome=Outcome.DENIED,
        reason=reason,
        resource_type="client",
        resource=claimed_client_id[:64],
        resource_org=client.organisation if client is not None else None,
        details=details | {"lockout": {"failures": failures, "seconds": policy.lockout_seconds}},
    )


def _note_refusal(
    deps: AdminDeps,
    ctx: RequestContext,
    action: AuditAction,
    refusal: oauth.TokenResponse,
    window_seconds: int,
) -> None:
    details: dict[str, object] = {"claimed_client_id": (refusal.client_id or "")[:64]}
    note_rejection(deps, ctx, action, refusal.reason or "refused", details, window_seconds)


# How many refusals of one kind from one address are audited one by one in a window before the
# rest are only counted. Bearer tokens refused at the API keep a generous number of individual
# events (a partner's misconfigured system is seen request by request); a flood is still bounded.
INDIVIDUALLY: dict[str, int] = {AuditAction.AUTHENTICATION_FAILED.value: 100}


def note_rejection(
    deps: AdminDeps,
    ctx: RequestContext,
    action: AuditAction,
    reason: str,
    details: dict[str, object],
    window_seconds: int,
) -> None:
    """Account for a refused request without an audit row per request (attacker finding 9).

    Every refusal is counted (in the database, whichever replica answered) under its action,
    address and reason in a fixed window. The first of a window (the first hundred for bearer
    tokens refused at the API: ``INDIVIDUALLY``) is an audit event of its own; the others are only
    counted, and when a later window opens, the counts of the windows that
    closed are written in one summary event (``authentication.refusals_summarised``, its reason
    the refused action). So the number of events per address is bounded by the kinds of refusal
    and the window, and every refusal is still in the trail, as an event or in a count."""
    now = utcnow()
    window = counters.window_start(now, window_seconds)
    key = f"{action.value}|{ctx.client_address or '-'}|{reason}"
    with transaction(deps.sessions) as session:
        count = counters.increment(session, counters.REJECTION, key, window)
    if count > INDIVIDUALLY.get(action.value, 1):
        return
    with audited(deps.sessions, "the refused request") as uow:
        closed = counters.take_unsummarised(uow.session, counters.REJECTION, window)
        counters.forget_old(uow.session, now)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=action,
                    outcome=Outcome.DENIED,
                    reason=reason,
                    details={
                        **details,
                        "aggregation": {
                            "window_start": window.isoformat(),
                            "window_seconds": window_seconds,
                            "note": "further refusals of this kind from this address in the "
                            "window are counted, and summarised when it closes",
                        },
                    },
                ),
            )
        )
        _summarise(uow, closed)


def _summarise(uow: UnitOfWork, closed: list[counters.Unsummarised]) -> None:
    """One event per action for the closed windows that counted more than their first event."""
    by_action: dict[str, list[counters.Unsummarised]] = {}
    for row in closed:
        if row.count > INDIVIDUALLY.get(row.key.split("|", 1)[0], 1):
            by_action.setdefault(row.key.split("|", 1)[0], []).append(row)
    for action_name, rows in by_action.items():
        windows = []
        individually = INDIVIDUALLY.get(action_name, 1)
        for row in rows:
            _, address, reason = row.key.split("|", 2)
            windows.append(
                {
                    "client_address": address,
                    "reason": reason,
                    "window_start": row.window_start.isoformat(),
                    "refusals": row.count,
                    "audited_individually": individually,
                }
            )
        uow.audit(
            audit_service.event(
                RequestContext(),
                AuditRecord(
                    action=AuditAction.AUTHENTICATION_REFUSALS_SUMMARISED,
                    outcome=Outcome.DENIED,
                    reason=action_name,
                    details={
                        "action": action_name,
                        "refusals_not_audited_individually": sum(
                            r.count - individually for r in rows
                        ),
                        "windows": windows,
                    },
                ),
            )
        )


def signed_in_person(deps: AdminDeps, username: object, session_id: object) -> Person | None:
    """The person a page session names, while that session is open on the server (not signed
    out, not ended by disabling the account), looked up afresh so a disabled account is out at
    once."""
    if not isinstance(username, str):
        return None
    with deps.sessions() as session:
        if web_sessions.session_username(session, session_id) != username:
            return None
        return accounts.active_person(session, username)


def open_page_session(deps: AdminDeps, person: Person, lifetime_seconds: int) -> str:
    """The server side of a new page session (its sign-in is audited already); the id goes
    into the signed cookie."""
    with transaction(deps.sessions) as session:
        return web_sessions.open_session(session, person.username, lifetime_seconds)


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


def record_sign_out(
    deps: AdminDeps, ctx: RequestContext, person: Person, session_id: object = None
) -> None:
    """End the page session on the server, with its event: the cookie is worthless after."""
    with audited(deps.sessions, "the sign-out") as uow:
        web_sessions.end_session(uow.session, session_id)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.IG_SIGNED_OUT,
                    outcome=Outcome.SUCCESS,
                    resource_type="user",
                    resource=person.username,
                    resource_org=person.organisation,
                ),
            )
        )
