"""Who is signed in to the pages, CSRF tokens, and the audited sign-in and sign-out."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from gateway.deps import get_platform, request_context
from gateway.platform import Platform
from services.audit import review
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.identity import people
from services.identity.people import Person
from services.identity.schemas import Principal
from services.kit.clock import utcnow
from services.kit.errors import BadRequest, Forbidden, PayloadTooLarge

MAX_FORM_BYTES = 16 * 1024


@dataclass(frozen=True)
class WebUser:
    person: Person
    principal: Principal
    ctx: RequestContext
    csrf: str


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(24)
        request.session["csrf"] = token
    return token


def _context_for(request: Request, person: Person) -> RequestContext:
    ctx = request_context(request)
    ctx.actor = person.actor
    ctx.actor_org = person.organisation
    ctx.actor_roles = [person.role]
    return ctx


def _signed_in(platform: Platform, username: Any) -> Person | None:
    if not isinstance(username, str):
        return None
    with platform.sessions() as session:
        return people.active_person(session, username)


async def signed_in(request: Request) -> WebUser | None:
    """The person signed in to this session, looked up afresh (a disabled account is out at
    once); None when nobody is, and the page redirects to the sign-in form."""
    platform = get_platform(request)
    person = await run_in_threadpool(_signed_in, platform, request.session.get("user"))
    if person is None:
        request.session.clear()
        return None
    return WebUser(person, person.principal(), _context_for(request, person), csrf_token(request))


SignedIn = Annotated[WebUser | None, Depends(signed_in)]


async def read_form(request: Request) -> dict[str, str]:
    """A url-encoded form, bounded; a repeated field keeps its first value."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge("form too large")
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise BadRequest("a form is sent as application/x-www-form-urlencoded")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("malformed form") from exc
    return {k: v[0] for k, v in parsed.items()}


def check_csrf(platform: Platform, request: Request, form: dict[str, str], what: str) -> None:
    """Refuse (403, audited) a form whose token is not this session's."""
    expected = request.session.get("csrf")
    given = form.get("csrf", "")
    if isinstance(expected, str) and given and hmac.compare_digest(expected, given):
        return
    ctx = request_context(request)
    user = request.session.get("user")
    if isinstance(user, str):
        ctx.actor = people.ACTOR_PREFIX + user
    audit_service.record_committed(
        platform.sessions,
        ctx,
        AuditRecord(
            action=AuditAction.IG_REQUEST_REFUSED,
            outcome=Outcome.DENIED,
            reason="csrf_token_invalid",
            resource_type="ig_page",
            resource=what[:200],
        ),
    )
    raise Forbidden("the form has expired or did not come from this site; reload and try again")


def start_session(request: Request, person: Person) -> None:
    """A fresh session for the person: a new CSRF token and a new start time."""
    request.session.clear()
    request.session["user"] = person.username
    request.session["started"] = int(time.time())
    request.session["csrf"] = secrets.token_urlsafe(24)


def _failures(platform: Platform, username: str) -> int:
    since = utcnow() - timedelta(seconds=platform.settings.ig_lockout_seconds)
    with platform.sessions() as session:
        return review.count_recent(
            session, AuditAction.IG_SIGN_IN_FAILED.value, "user", username, since
        )


def _record_failure(platform: Platform, ctx: RequestContext, username: str, reason: str) -> None:
    # No claim of a failed sign-in is trusted, so the actor stays empty; the name is the resource.
    audit_service.record_committed(
        platform.sessions,
        ctx,
        AuditRecord(
            action=AuditAction.IG_SIGN_IN_FAILED,
            outcome=Outcome.DENIED,
            reason=reason,
            resource_type="user",
            resource=username[:100],
        ),
    )


def _record_success(platform: Platform, ctx: RequestContext, person: Person, method: str) -> None:
    signed = RequestContext(
        request_id=ctx.request_id,
        client_address=ctx.client_address,
        actor=person.actor,
        actor_org=person.organisation,
        actor_roles=[person.role],
    )
    audit_service.record_committed(
        platform.sessions,
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
    platform: Platform, ctx: RequestContext, username: str, password: str
) -> Person | None:
    """The person when the name and password are right and the account is not locked out."""
    username = username.strip()[:100]
    if not username or not password:
        _record_failure(platform, ctx, username or "-", "missing_credentials")
        return None
    if _failures(platform, username) >= platform.settings.ig_lockout_attempts:
        _record_failure(platform, ctx, username, "locked_out")
        return None
    with platform.sessions() as session:
        person = people.verify_password(session, username, password[:1024])
    if person is None:
        _record_failure(platform, ctx, username, "bad_credentials")
        return None
    _record_success(platform, ctx, person, "password")
    return person


def oidc_sign_in(
    platform: Platform,
    ctx: RequestContext,
    username: str | None,
    organisation: str | None,
    refusal: str | None,
) -> Person | None:
    if refusal is not None or username is None or organisation is None:
        _record_failure(platform, ctx, username or "-", refusal or "oidc_refused")
        return None
    with platform.sessions() as session:
        person = people.person_for_oidc(session, username, organisation)
    if person is None:
        _record_failure(platform, ctx, username, "oidc_no_matching_account")
        return None
    _record_success(platform, ctx, person, "oidc")
    return person


def record_sign_out(platform: Platform, user: WebUser) -> None:
    audit_service.record_committed(
        platform.sessions,
        user.ctx,
        AuditRecord(
            action=AuditAction.IG_SIGNED_OUT,
            outcome=Outcome.SUCCESS,
            resource_type="user",
            resource=user.person.username,
            resource_org=user.person.organisation,
        ),
    )
