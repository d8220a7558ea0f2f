"""Who is signed in to the pages, and CSRF tokens; the audited sign-in and sign-out themselves
are use cases of `services.admin.sign_in`."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from gateway.deps import get_platform, request_context
from services.admin import sign_in as sign_in_service
from services.audit.service import RequestContext
from services.identity.accounts import Person
from services.identity.schemas import Principal
from services.kit.errors import BadRequest, Forbidden, PayloadTooLarge
from services.platform import Platform

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


async def signed_in(request: Request) -> WebUser | None:
    """The person signed in to this session, looked up afresh (a disabled account is out at
    once); None when nobody is, and the page redirects to the sign-in form."""
    platform = get_platform(request)
    person = await run_in_threadpool(
        sign_in_service.signed_in_person,
        platform.admin,
        request.session.get("user"),
        request.session.get("sid"),
    )
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
    sign_in_service.refuse_page_request(
        platform.admin,
        request_context(request),
        request.session.get("user"),
        "csrf_token_invalid",
        what,
    )
    raise Forbidden("the form has expired or did not come from this site; reload and try again")


async def start_session(request: Request, platform: Platform, person: Person) -> None:
    """A fresh session for the person: opened on the server (the cookie names it, and is only
    good while it is open), a new CSRF token and a new start time."""
    session_id = await run_in_threadpool(
        sign_in_service.open_page_session,
        platform.admin,
        person,
        platform.settings.ig_session_max_seconds,
    )
    request.session.clear()
    request.session["user"] = person.username
    request.session["sid"] = session_id
    request.session["started"] = int(time.time())
    request.session["csrf"] = secrets.token_urlsafe(24)
