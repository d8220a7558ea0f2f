"""Server-rendered pages for information-governance leads, under /ig/.

Pages authenticate with the signed session cookie (`SignedIn`), never with a bearer token, and
run the same audited use cases as the API (`services.review.service`). No page runs JavaScript;
every value is escaped by Jinja2's autoescaping; every form carries the session's CSRF token.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from gateway.deps import PlatformDep, request_context
from gateway.web import auth
from gateway.web.auth import SignedIn, WebUser
from services.admin import sign_in as sign_in_service
from services.audit.alerts import RULE_TITLES, RULES
from services.audit.catalogue import AuditAction, Outcome
from services.audit.review import FILTER_NAMES
from services.identity import oidc
from services.kit.errors import TogetherError
from services.kit.partnership import ORGANISATIONS
from services.review import service as review_service

HERE = Path(__file__).resolve().parent
SIGN_IN = "/ig/sign-in"
# Reachable without a session (pinned, with the API's public paths, by a test).
PUBLIC_PATHS = frozenset({SIGN_IN, "/ig/oidc/start", "/ig/oidc/callback", "/ig/static/style.css"})

router = APIRouter(prefix="/ig", include_in_schema=False)
templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_OIDC: dict[int, oidc.OidcSignIn] = {}


def _render(
    name: str, status: int = 200, user: WebUser | None = None, **values: Any
) -> HTMLResponse:
    context: dict[str, Any] = {
        "user": user.person if user else None,
        "csrf": user.csrf if user else None,
    }
    context.update(values)
    html = templates.get_template(name).render(context)
    return HTMLResponse(html, status_code=status)


def _to_sign_in() -> RedirectResponse:
    return RedirectResponse(SIGN_IN, status_code=303)


def _error(user: WebUser | None, exc: TogetherError) -> HTMLResponse:
    return _render("error.html", exc.status, user, code=exc.status, message=exc.detail)


@router.get("/static/style.css")
async def stylesheet() -> FileResponse:
    return FileResponse(HERE / "static" / "style.css", media_type="text/css")


# Signing in and out


def _oidc_for(settings: Any) -> oidc.OidcSignIn | None:
    if not oidc.configured(settings):
        return None
    client = _OIDC.get(id(settings))
    if client is None:
        client = _OIDC[id(settings)] = oidc.OidcSignIn(settings)
    return client


@router.get("/sign-in")
async def sign_in_form(request: Request, platform: PlatformDep) -> HTMLResponse:
    return _render(
        "sign_in.html",
        csrf=auth.csrf_token(request),
        oidc=oidc.configured(platform.settings),
        failed=False,
    )


@router.post("/sign-in")
async def sign_in(request: Request, platform: PlatformDep) -> Response:
    form = await auth.read_form(request)
    try:
        await run_in_threadpool(auth.check_csrf, platform, request, form, SIGN_IN)
    except TogetherError as exc:
        return _error(None, exc)
    ctx = request_context(request)
    person = await run_in_threadpool(
        sign_in_service.password_sign_in,
        platform.admin,
        ctx,
        form.get("username", ""),
        form.get("password", ""),
    )
    if person is None:
        # One message for every reason: the reason is in the audit trail, not on the page.
        return _render(
            "sign_in.html",
            401,
            csrf=auth.csrf_token(request),
            oidc=oidc.configured(platform.settings),
            failed=True,
        )
    auth.start_session(request, person)
    return RedirectResponse("/ig/events", status_code=303)


@router.get("/oidc/start")
async def oidc_start(request: Request, platform: PlatformDep) -> Response:
    client = _oidc_for(platform.settings)
    if client is None:
        return _to_sign_in()
    callback = str(request.url_for("oidc_callback"))
    response: Response = await client.redirect(request, callback)
    return response


@router.get("/oidc/callback", name="oidc_callback")
async def oidc_callback(request: Request, platform: PlatformDep) -> Response:
    client = _oidc_for(platform.settings)
    if client is None:
        return _to_sign_in()
    identity = await client.identity(request)
    ctx = request_context(request)
    person = await run_in_threadpool(
        sign_in_service.oidc_sign_in,
        platform.admin,
        ctx,
        identity.username,
        identity.organisation,
        identity.refusal,
    )
    if person is None:
        return _render("sign_in.html", 401, csrf=auth.csrf_token(request), oidc=True, failed=True)
    auth.start_session(request, person)
    return RedirectResponse("/ig/events", status_code=303)


@router.post("/sign-out")
async def sign_out(request: Request, user: SignedIn, platform: PlatformDep) -> Response:
    if user is None:
        return _to_sign_in()
    form = await auth.read_form(request)
    try:
        await run_in_threadpool(auth.check_csrf, platform, request, form, "/ig/sign-out")
    except TogetherError as exc:
        return _error(user, exc)
    await run_in_threadpool(sign_in_service.record_sign_out, platform.admin, user.ctx, user.person)
    request.session.clear()
    return _to_sign_in()


# Reviewing


@router.get("/")
async def home(user: SignedIn) -> Response:
    return _to_sign_in() if user is None else RedirectResponse("/ig/events", status_code=303)


def _query(params: dict[str, str], **changes: str | None) -> str:
    merged = {**params, **changes}
    return urlencode({k: v for k, v in merged.items() if v})


@router.get("/events")
async def events(request: Request, user: SignedIn, platform: PlatformDep) -> Response:
    if user is None:
        return _to_sign_in()
    params = {
        k: v
        for k, v in request.query_params.items()
        if (k in FILTER_NAMES or k in ("cursor", "limit")) and v
    }
    try:
        page = await run_in_threadpool(
            review_service.search_events, platform.review, user.principal, user.ctx, params
        )
    except TogetherError as exc:
        return _error(user, exc)
    filters = {k: v for k, v in params.items() if k in FILTER_NAMES}
    export = {fmt: "/v1/audit/events?" + _query(filters, format=fmt) for fmt in ("csv", "ndjson")}
    next_url = "/ig/events?" + _query(params, cursor=page.next_cursor) if page.next_cursor else None
    return _render(
        "events.html",
        user=user,
        events=page.events,
        filters=filters,
        next_url=next_url,
        export=export,
        actions=[a.value for a in AuditAction],
        outcomes=[o.value for o in Outcome],
        organisations=sorted(ORGANISATIONS),
    )


@router.get("/events/{event_id}")
async def event(event_id: str, user: SignedIn, platform: PlatformDep) -> Response:
    if user is None:
        return _to_sign_in()
    try:
        found = await run_in_threadpool(
            review_service.event_detail, platform.review, user.principal, user.ctx, event_id
        )
    except TogetherError as exc:
        return _error(user, exc)
    return _render("event.html", user=user, event=found)


@router.get("/people")
async def find_person(request: Request, user: SignedIn) -> Response:
    if user is None:
        return _to_sign_in()
    person_id = request.query_params.get("person_id", "").strip()
    if not person_id:
        return RedirectResponse("/ig/events", status_code=303)
    return RedirectResponse("/ig/people/" + quote(person_id, safe=""), status_code=303)


@router.get("/people/{person_id}")
async def person(
    person_id: str, request: Request, user: SignedIn, platform: PlatformDep
) -> Response:
    if user is None:
        return _to_sign_in()
    params = {k: v for k, v in request.query_params.items() if k in ("cursor", "limit") and v}
    try:
        page = await run_in_threadpool(
            review_service.person_history,
            platform.review,
            user.principal,
            user.ctx,
            person_id,
            params,
        )
    except TogetherError as exc:
        return _error(user, exc)
    next_url = None
    if page.next_cursor:
        next_url = f"/ig/people/{quote(person_id, safe='')}?" + _query(
            params, cursor=page.next_cursor
        )
    return _render(
        "person.html", user=user, person_id=person_id, events=page.events, next_url=next_url
    )


@router.get("/alerts")
async def alerts(request: Request, user: SignedIn, platform: PlatformDep) -> Response:
    if user is None:
        return _to_sign_in()
    params = {
        k: v for k, v in request.query_params.items() if k in ("since", "until", "rule", "state")
    }
    params.setdefault("state", "open")
    if params["state"] == "all":
        params.pop("state")
    try:
        found = await run_in_threadpool(
            review_service.list_alerts, platform.review, user.principal, user.ctx, params
        )
    except TogetherError as exc:
        return _error(user, exc)
    return _render(
        "alerts.html",
        user=user,
        alerts=found,
        filters=params,
        state=request.query_params.get("state", "open"),
        rules=[(r, RULE_TITLES[r]) for r in RULES],
    )


@router.post("/alerts/{alert_id}/review")
async def review_alert(
    alert_id: str, request: Request, user: SignedIn, platform: PlatformDep
) -> Response:
    if user is None:
        return _to_sign_in()
    form = await auth.read_form(request)
    try:
        await run_in_threadpool(
            auth.check_csrf, platform, request, form, f"/ig/alerts/{alert_id}/review"
        )
        alert = await run_in_threadpool(
            review_service.review_alert,
            platform.review,
            user.principal,
            user.ctx,
            alert_id,
            form.get("comment", ""),
        )
    except TogetherError as exc:
        return _error(user, exc)
    day = alert.occurred_at.astimezone(review_service.zone(platform.review)).date().isoformat()
    return RedirectResponse(
        "/ig/alerts?" + urlencode({"state": "reviewed", "since": day}) + f"#alert-{alert.id}",
        status_code=303,
    )


@router.get("/checkpoints")
async def checkpoints(user: SignedIn, platform: PlatformDep, verify: str | None = None) -> Response:
    if user is None:
        return _to_sign_in()
    verify_log = verify == "1"
    try:
        found = await run_in_threadpool(
            partial(review_service.checkpoints, verify_log=verify_log),
            platform.review,
            user.principal,
            user.ctx,
        )
    except TogetherError as exc:
        return _error(user, exc)
    return _render("checkpoints.html", user=user, checkpoints=found, verified_log=verify_log)
