"""Server-rendered pages for information-governance leads, under /ig/.

Pages authenticate with the signed session cookie (`SignedIn`), never with a bearer token, and
run the same audited use cases as the API (`services.review.service`, and for data governance
`services.retention`). No page runs JavaScript; every value is escaped by Jinja2's autoescaping;
every form carries the session's CSRF token. A person's identifying values travel only in POST
bodies, never in a URL (paths and query strings end up in proxy and access logs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from gateway.deps import PlatformDep, request_context
from gateway.routes.audit_review import to_csv, to_ndjson
from gateway.routes.subject_access import to_csv as subject_access_csv
from gateway.web import auth
from gateway.web.auth import SignedIn, WebUser
from services.admin import grants as grants_service
from services.admin import sign_in as sign_in_service
from services.audit.alerts import RULE_TITLES, RULES
from services.audit.catalogue import AuditAction, Outcome
from services.audit.review import FILTER_NAMES, MAX_EXPORT_LIMIT
from services.contracts.model import Contract, Protection
from services.identity import oidc
from services.kit.errors import BadRequest, NotFound, TogetherError
from services.kit.partnership import ORGANISATIONS
from services.lifecycle import service as lifecycle_service
from services.platform import Platform
from services.retention import service as governance
from services.retention import subject_access
from services.retention.models import DeletionKind, DeletionState
from services.retention.selectors import PersonQuery
from services.review import service as review_service
from services.review.repository import ActorName

HERE = Path(__file__).resolve().parent
SIGN_IN = "/ig/sign-in"
EXPORT = "/ig/events/export"
EXPORT_FORMATS = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
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
    await auth.start_session(request, platform, person)
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
    await auth.start_session(request, platform, person)
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
    await run_in_threadpool(
        sign_in_service.record_sign_out,
        platform.admin,
        user.ctx,
        user.person,
        request.session.get("sid"),
    )
    request.session.clear()
    return _to_sign_in()


# Reviewing


@router.get("/")
async def home(user: SignedIn) -> Response:
    return _to_sign_in() if user is None else RedirectResponse("/ig/events", status_code=303)


async def _names(platform: Platform, actors: Iterable[str | None]) -> dict[str, ActorName]:
    """Registry names of the actors on a page: one look-up for the whole page."""
    return await run_in_threadpool(review_service.actor_names, platform.review, list(actors))


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
    # As many events as one export may hold, not one screen's worth; the limit is audited.
    limit = str(MAX_EXPORT_LIMIT)
    export = {
        fmt: EXPORT + "?" + _query(filters, format=fmt, limit=limit) for fmt in EXPORT_FORMATS
    }
    next_url = "/ig/events?" + _query(params, cursor=page.next_cursor) if page.next_cursor else None
    return _render(
        "events.html",
        user=user,
        events=page.events,
        names=await _names(platform, (e["actor"] for e in page.events)),
        filters=filters,
        next_url=next_url,
        export=export,
        export_limit=MAX_EXPORT_LIMIT,
        actions=[a.value for a in AuditAction],
        outcomes=[o.value for o in Outcome],
        organisations=sorted(ORGANISATIONS),
    )


@router.get("/events/export")
async def export_events(request: Request, user: SignedIn, platform: PlatformDep) -> Response:
    """The events page's filters as a CSV or NDJSON download, for the signed-in lead.

    The same use case, scope and audit event as the API's export (`GET /v1/audit/events` with
    `format`), so that a lead need not hold a bearer token to take the events away.
    """
    if user is None:
        return _to_sign_in()
    params = {
        k: v
        for k, v in request.query_params.items()
        if (k in FILTER_NAMES or k in ("cursor", "limit", "format")) and v
    }
    fmt = params.pop("format", "csv")
    if fmt not in EXPORT_FORMATS:
        return _error(user, BadRequest("format is csv or ndjson"))
    try:
        page = await run_in_threadpool(
            partial(review_service.search_events, fmt=fmt),
            platform.review,
            user.principal,
            user.ctx,
            params,
        )
    except TogetherError as exc:
        return _error(user, exc)
    # The same bytes as the API's export of the same page.
    body = to_csv(page.events) if fmt == "csv" else to_ndjson(page.events)
    headers = {"Content-Disposition": f'attachment; filename="audit-events.{fmt}"'}
    if page.next_cursor:
        headers["X-Next-Cursor"] = page.next_cursor
    return Response(body, media_type=EXPORT_FORMATS[fmt], headers=headers)


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
    return _render(
        "event.html", user=user, event=found, names=await _names(platform, [found["actor"]])
    )


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
        "person.html",
        user=user,
        person_id=person_id,
        events=page.events,
        names=await _names(platform, (e["actor"] for e in page.events)),
        next_url=next_url,
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
        names=await _names(
            platform,
            [a.actor for a in found] + [r.reviewer for a in found for r in a.reviews],
        ),
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
        found, coverage = await run_in_threadpool(
            partial(review_service.checkpoints, verify_log=verify_log),
            platform.review,
            user.principal,
            user.ctx,
        )
    except TogetherError as exc:
        return _error(user, exc)
    return _render(
        "checkpoints.html",
        user=user,
        checkpoints=found,
        coverage=coverage,
        verified_log=verify_log,
    )


EXPIRING_DAYS = 30


@router.get("/grants/expiring")
async def expiring_grants(user: SignedIn, platform: PlatformDep) -> Response:
    if user is None:
        return _to_sign_in()
    try:
        found = await run_in_threadpool(
            partial(grants_service.list_expiring, days=EXPIRING_DAYS),
            platform.admin,
            user.principal,
            user.ctx,
        )
    except TogetherError as exc:
        return _error(user, exc)
    return _render("expiring_grants.html", user=user, grants=found, days=EXPIRING_DAYS)


@router.get("/contracts")
async def contracts(user: SignedIn, platform: PlatformDep) -> Response:
    """Drafts and approved versions the lead may sign off or activate, with each change and,
    for a major one, the check of the data held against the draft."""
    if user is None:
        return _to_sign_in()
    try:
        found = await run_in_threadpool(
            lifecycle_service.signable, platform.lifecycle, user.principal
        )
    except TogetherError as exc:
        return _error(user, exc)
    organisation = user.principal.organisation
    for version in found:
        signers = {s["signed_by"] for s in version["signoffs"]}
        version["can_sign"] = user.ctx.actor not in signers and organisation in (
            version["owner"],
            lifecycle_service.VRU,
        )
    return _render("contracts.html", user=user, versions=found, organisation=organisation)


async def _posted(
    request: Request,
    user: WebUser,
    platform: Platform,
    path: str,
    act: Callable[[dict[str, str]], str],
) -> Response:
    """A form posted to `path`: read it, check its CSRF token, then run `act` with it in the
    thread pool (a blocking service call answering the page to go to next); a refusal is
    rendered as the error page."""
    try:
        form = await auth.read_form(request)
        await run_in_threadpool(auth.check_csrf, platform, request, form, path)
        target = await run_in_threadpool(act, form)
    except TogetherError as exc:
        return _error(user, exc)
    return RedirectResponse(target, status_code=303)


async def _contract_step(
    request: Request, user: WebUser, platform: Platform, dataset: str, version: str, step: str
) -> Response:
    def act(form: dict[str, str]) -> str:
        if step == "signoff":
            lifecycle_service.sign_off(
                platform.lifecycle,
                user.principal,
                user.ctx,
                dataset,
                version,
                user.principal.organisation,
                form.get("content_sha256") or None,
            )
        else:
            lifecycle_service.activate(
                platform.lifecycle, user.principal, user.ctx, dataset, version
            )
        return f"/ig/contracts#contract-{dataset}-{version}"

    path = f"/ig/contracts/{quote(dataset, safe='')}/{quote(version, safe='')}/{step}"
    return await _posted(request, user, platform, path, act)


@router.post("/contracts/{dataset}/{version}/signoff")
async def sign_off_contract(
    dataset: str, version: str, request: Request, user: SignedIn, platform: PlatformDep
) -> Response:
    if user is None:
        return _to_sign_in()
    return await _contract_step(request, user, platform, dataset, version, "signoff")


@router.post("/contracts/{dataset}/{version}/activate")
async def activate_contract(
    dataset: str, version: str, request: Request, user: SignedIn, platform: PlatformDep
) -> Response:
    if user is None:
        return _to_sign_in()
    return await _contract_step(request, user, platform, dataset, version, "activate")


# Data governance: withdrawals, erasures, their certificates, and subject access

DELETIONS = "/ig/deletions"
SUBJECT_ACCESS = "/ig/subject-access"
# The API's bounds on the same values (gateway/routes/governance.py, subject_access.py).
MAX_IDENTIFIER_NAME = 64
MAX_IDENTIFIER_VALUE = 200
MAX_NAME = 100
MAX_REASON = 500
MAX_CASE_REFERENCE = 100
MAX_UPLOAD_ID = 36
OPEN_WITHDRAWAL = (DeletionState.REQUESTED.value, DeletionState.DELETING.value)


def _distinct(values: Iterable[Any]) -> list[str]:
    """A field's values across the person's rows, each once, in the order first held."""
    seen: dict[str, None] = {}
    for value in values:
        if value is None:
            text = "(empty)"
        elif isinstance(value, bool):
            text = "true" if value else "false"  # as the CSV and the API write them
        else:
            text = str(value)
        seen.setdefault(text, None)
    return list(seen)


templates.filters["distinct"] = _distinct


def _identifiers(contracts: Iterable[Contract]) -> list[str]:
    return sorted(
        {
            spec.name
            for contract in contracts
            for spec in contract.fields
            if spec.protection is Protection.IDENTIFIER
        }
    )


def _field(form: dict[str, str], name: str, limit: int, label: str) -> str | None:
    value = form.get(name, "").strip()
    if len(value) > limit:
        raise BadRequest(f"{label} is longer than {limit} characters")
    return value or None


def _person_query(form: dict[str, str]) -> PersonQuery:
    """The person a form names: an identifier (its name and value), and/or surname, forename
    and date of birth. A blank field is not given; the use case says what is missing."""
    name = _field(form, "identifier_name", MAX_IDENTIFIER_NAME, "the identifier's name")
    value = _field(form, "identifier_value", MAX_IDENTIFIER_VALUE, "the identifier")
    if value and not name:
        raise BadRequest("choose which identifier the value is")
    dob_text = _field(form, "dob", 10, "the date of birth")
    try:
        dob = date.fromisoformat(dob_text) if dob_text else None
    except ValueError as exc:
        raise BadRequest("the date of birth is written YYYY-MM-DD") from exc
    return PersonQuery(
        identifiers={name: value} if name and value else {},
        surname=_field(form, "surname", MAX_NAME, "the surname"),
        forename=_field(form, "forename", MAX_NAME, "the forename"),
        dob=dob,
    )


def _deletion_url(dataset: str, deletion_id: str, suffix: str = "") -> str:
    return f"{DELETIONS}/{quote(dataset, safe='')}/{quote(deletion_id, safe='')}{suffix}"


def _erasure_contract(platform: Platform, dataset: str) -> Contract:
    """The contract an erasure is matched against: the active version, else the shipped one
    (a dataset with nothing active yet still shows its form; the use case decides)."""
    try:
        return platform.governance.active_contract(dataset)
    except TogetherError:
        return platform.contracts[dataset]


def _owned_deletions(platform: Platform, user: WebUser) -> list[dict[str, Any]]:
    """Each dataset the lead's organisation owns, with its deletions (one audited listing per
    dataset, as the API's) and what an erasure form may ask of it."""
    organisation = user.principal.organisation
    found = []
    for dataset in sorted(d for d, c in platform.contracts.items() if c.owner == organisation):
        deletions = governance.list_deletions(
            platform.governance, user.principal, user.ctx, dataset
        )
        contract = _erasure_contract(platform, dataset)
        found.append(
            {
                "id": dataset,
                "title": platform.contracts[dataset].title,
                "open": [
                    d
                    for d in deletions
                    if d["kind"] == DeletionKind.WITHDRAWAL.value and d["state"] in OPEN_WITHDRAWAL
                ],
                "deletions": deletions,
                "identifiers": _identifiers([contract]),
                "by_name": contract.person is not None,
            }
        )
    return found


@router.get("/deletions")
async def deletions(user: SignedIn, platform: PlatformDep) -> Response:
    """The lead's organisation's datasets: withdrawals waiting for a decision, every deletion
    with its certificate, and a form to erase or rectify one person's rows."""
    if user is None:
        return _to_sign_in()
    try:
        found = await run_in_threadpool(_owned_deletions, platform, user)
    except TogetherError as exc:
        return _error(user, exc)
    return _render(
        "deletions.html",
        user=user,
        datasets=found,
        organisation=user.principal.organisation,
        names=await _names(platform, (d["requested_by"] for s in found for d in s["deletions"])),
    )


@router.post("/deletions/{dataset}/withdrawals/{deletion_id}/decision")
async def decide_withdrawal(
    dataset: str, deletion_id: str, request: Request, user: SignedIn, platform: PlatformDep
) -> Response:
    if user is None:
        return _to_sign_in()
    signed_in = user

    def act(form: dict[str, str]) -> str:
        decision = form.get("decision")
        if decision not in ("confirm", "refuse"):
            raise BadRequest("the decision is confirm or refuse")
        found = governance.decide_withdrawal(
            platform.governance,
            signed_in.principal,
            signed_in.ctx,
            dataset,
            deletion_id,
            confirm=decision == "confirm",
        )
        return _deletion_url(dataset, found["id"])

    path = _deletion_url(dataset, deletion_id, "/decision")
    return await _posted(request, user, platform, path, act)


@router.post("/deletions/{dataset}/erasures")
async def erase_person(
    dataset: str, request: Request, user: SignedIn, platform: PlatformDep
) -> Response:
    if user is None:
        return _to_sign_in()
    signed_in = user

    def act(form: dict[str, str]) -> str:
        erasure = governance.ErasureRequest(
            person=_person_query(form),
            reason=_field(form, "reason", MAX_REASON, "the reason") or "",
            case_reference=_field(form, "case_reference", MAX_CASE_REFERENCE, "the case reference")
            or "",
            rectification=form.get("rectification") == "1",
            corrected_upload=_field(form, "corrected_upload", MAX_UPLOAD_ID, "the upload id"),
        )
        found = governance.erase(
            platform.governance, signed_in.principal, signed_in.ctx, dataset, erasure
        )
        return _deletion_url(dataset, found["id"])

    path = f"{DELETIONS}/{quote(dataset, safe='')}/erasures"
    return await _posted(request, user, platform, path, act)


def _one_deletion(
    platform: Platform, user: WebUser, dataset: str, deletion_id: str
) -> dict[str, Any]:
    """One deletion of the dataset, through the audited listing: refused alike, whatever the
    id, to anyone the listing refuses."""
    for found in governance.list_deletions(platform.governance, user.principal, user.ctx, dataset):
        if found["id"] == deletion_id:
            return found
    raise NotFound(f"no deletion {deletion_id!r} of {dataset}")


# Declared before the deletion's page, whose path would otherwise take the `.json`.
@router.get("/deletions/{dataset}/{deletion_id}.json")
async def deletion_certificate(
    dataset: str, deletion_id: str, user: SignedIn, platform: PlatformDep
) -> Response:
    """The signed certificate as a file: the API's document, which `together deletions verify`
    checks offline with the published key."""
    if user is None:
        return _to_sign_in()
    try:
        found = await run_in_threadpool(_one_deletion, platform, user, dataset, deletion_id)
        if "certificate" not in found:
            raise NotFound(f"deletion {deletion_id} has no certificate: it is {found['state']}")
    except TogetherError as exc:
        return _error(user, exc)
    body = json.dumps(found, indent=2, ensure_ascii=False) + "\n"
    return Response(
        body.encode("utf-8"),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="deletion-certificate-{found["id"]}.json"'
        },
    )


@router.get("/deletions/{dataset}/{deletion_id}")
async def deletion(
    dataset: str, deletion_id: str, user: SignedIn, platform: PlatformDep
) -> Response:
    """One deletion: where a decision or an erasure lands, with its certificate's summary."""
    if user is None:
        return _to_sign_in()
    try:
        found = await run_in_threadpool(_one_deletion, platform, user, dataset, deletion_id)
    except TogetherError as exc:
        return _error(user, exc)
    actors = [found["requested_by"], found.get("certificate", {}).get("confirmed_by")]
    return _render(
        "deletion.html",
        user=user,
        d=found,
        download=_deletion_url(dataset, found["id"], ".json"),
        names=await _names(platform, actors),
    )


@router.get("/subject-access")
async def subject_access_form(user: SignedIn, platform: PlatformDep) -> Response:
    if user is None:
        return _to_sign_in()
    return _render(
        "subject_access.html",
        user=user,
        identifiers=_identifiers(platform.contracts.values()),
        asked={},
        answer=None,
    )


@router.post("/subject-access")
async def subject_access_answer(
    request: Request, user: SignedIn, platform: PlatformDep
) -> Response:
    """The answer as tables, or (`format=csv`) the API's CSV of the same answer; each is one
    audited subject access request."""
    if user is None:
        return _to_sign_in()
    try:
        form = await auth.read_form(request)
        await run_in_threadpool(auth.check_csrf, platform, request, form, SUBJECT_ACCESS)
        fmt = form.get("format") or "html"
        if fmt not in ("html", "csv"):
            raise BadRequest("format is html or csv")
        document = await run_in_threadpool(
            subject_access.answer,
            platform.subject_access,
            user.principal,
            user.ctx,
            _person_query(form),
            "csv" if fmt == "csv" else "json",
        )
    except TogetherError as exc:
        return _error(user, exc)
    if fmt == "csv":
        return Response(
            subject_access_csv(document),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="subject-access.csv"'},
        )
    asked = {
        k: form.get(k, "").strip()
        for k in ("identifier_name", "identifier_value", "surname", "forename", "dob")
    }
    return _render(
        "subject_access.html",
        user=user,
        identifiers=_identifiers(platform.contracts.values()),
        asked=asked,
        answer=document,
        classifications=subject_access.CLASSIFICATIONS,
        events=document["reads"],
        names=await _names(platform, (e["actor"] for e in document["reads"])),
        next_url=None,
    )
