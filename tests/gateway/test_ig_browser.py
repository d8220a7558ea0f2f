"""The IG pages in a real browser (headless Debian Chromium driven by Playwright) against a real
server: create an IG lead with the CLI, sign in, find a person's reads, mark an alert reviewed.

`make test` installs Chromium when it is missing and it can (root). Without it this test skips
with a message, except under CI (CI=true), where a missing browser is a failure."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.admin import accounts as people_admin
from services.admin import principals
from services.audit import chain as audit_chain
from services.audit import checkpoints
from services.audit.catalogue import AuditAction, Outcome
from services.audit.models import AlertReview, AuditEvent
from services.identity.schemas import RoleGrant
from services.kit.clock import utcnow
from services.kit.settings import Settings
from services.platform import Platform
from tests.fixtures.app import ClientCredentials, MakeClient, cli_context
from tests.fixtures.audit_events import COUNCIL, POLICE, clock_at, level3_read, make_event
from tests.live import LiveServer, settings_env, together_bin

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "a long enough password"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the browser test")
    pytest.skip(f"{reason} (run `make test` as root to install Debian's chromium)")


@pytest.fixture
def browser_page() -> Iterator[object]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_an_ig_lead_signs_in_finds_a_person_and_reviews_an_alert(
    settings: Settings,
    platform: Platform,
    tmp_path: Path,
    browser_page: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from playwright.sync_api import Page, expect

    page: Page = browser_page  # type: ignore[assignment]
    created = subprocess.run(
        [
            together_bin(),
            "users",
            "create",
            "alice",
            "--org",
            POLICE,
            "--role",
            "ig_lead",
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
        env=settings_env(settings),
        capture_output=True,
        text=True,
        check=False,
    )
    assert created.returncode == 0, created.stderr

    # Two nights ago, 23:00 London time: out of office hours, and within the default 30 days.
    night = (utcnow().astimezone(ZoneInfo("Europe/London")) - timedelta(days=2)).replace(
        hour=23, minute=0, second=0, microsecond=0
    )
    with clock_at(monkeypatch, night):
        ours = level3_read(
            platform, actor="pc-7", org=POLICE, subjects=["p-77", "p-78"], case_reference="OP-77"
        )
    with clock_at(monkeypatch, night + timedelta(hours=1)):
        level3_read(
            platform, actor="cc-3", org=COUNCIL, subjects=["p-77"], case_reference="CC-SECRET"
        )
    level3_read(platform, actor="pc-8", org=POLICE, subjects=["p-99"], case_reference="OP-99")

    server = LiveServer(settings, tmp_path / "server.log")
    try:
        page.goto(server.url + "/ig/")
        expect(page).to_have_url(server.url + "/ig/sign-in")
        page.fill("#username", "alice")
        page.fill("#password", "not the password")
        page.click("button:has-text('Sign in')")
        expect(page.get_by_role("alert")).to_contain_text("Sign-in failed")
        page.fill("#username", "alice")
        page.fill("#password", PASSWORD)
        page.click("button:has-text('Sign in')")
        expect(page).to_have_url(server.url + "/ig/events")
        expect(page.locator("header")).to_contain_text("alice (ig_lead, hampshire-constabulary)")

        page.fill("#nav-person", "p-77")
        page.click("button:has-text('Access history')")
        expect(page).to_have_url(server.url + "/ig/people/p-77")
        rows = page.locator("table.events tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("OP-77")
        expect(rows.first).to_contain_text("pc-7")
        body = page.content()
        assert "CC-SECRET" not in body and "OP-99" not in body
        rows.first.locator("a").click()
        expect(page).to_have_url(server.url + f"/ig/events/{ours}")
        expect(page.locator("dl.detail")).to_contain_text("p-78")

        page.click("header >> text=Alerts")
        alert = page.locator(f"section.alert[id='alert-out_of_hours.{ours}']")
        expect(alert).to_contain_text("outside office hours")
        alert.locator("textarea").fill("Checked with the duty inspector: authorised call-out.")
        alert.locator("button:has-text('Mark reviewed')").click()
        reviewed = page.locator(f"section.alert[id='alert-out_of_hours.{ours}']")
        expect(reviewed).to_contain_text("Reviewed by alice (hampshire-constabulary) user:alice")
        expect(reviewed.locator(".state")).to_have_text("reviewed")
        page.click("button:has-text('Sign out')")
        expect(page).to_have_url(server.url + "/ig/sign-in")
    finally:
        server.stop()

    with platform.sessions() as session:
        reviews = session.scalars(select(AlertReview)).all()
        assert [(r.alert_id, r.reviewer) for r in reviews] == [
            (f"out_of_hours.{ours}", "user:alice")
        ]
        actions = [
            (e.action, e.outcome, e.reason)
            for e in session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action.like("ig.%") | AuditEvent.action.like("audit.%"))
                .order_by(AuditEvent.seq)
            )
        ]
    assert actions[0] == ("ig.sign_in_failed", "denied", "bad_credentials")
    assert ("ig.signed_in", "success", None) in actions
    assert ("audit.person_history", "success", None) in actions
    assert ("audit.alert_reviewed", "success", None) in actions
    assert actions[-1] == ("ig.signed_out", "success", None)


ARTEFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts" / "ig-pages"
LONG = "HIP2024" + "0042" * 23  # the longest case reference stored, unbroken


def _fits(page: object, name: str) -> None:
    """The page does not scroll sideways at its viewport; a screenshot is kept for review."""
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], (name, width)


def test_pages_name_actors_fit_1280_px_and_export_with_the_session(
    settings: Settings,
    platform: Platform,
    tmp_path: Path,
    browser_page: object,
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from playwright.sync_api import Page, expect

    page: Page = browser_page  # type: ignore[assignment]
    people_admin.create_user(
        platform.admin,
        cli_context(),
        username="lena",
        organisation=POLICE,
        role="ig_lead",
        password=PASSWORD,
    )
    terminal = make_client(org=POLICE, name="Custody suite terminal", roles=("l1_reader",))
    night = (utcnow().astimezone(ZoneInfo("Europe/London")) - timedelta(days=2)).replace(
        hour=23, minute=0, second=0, microsecond=0
    )
    with clock_at(monkeypatch, night):
        read = level3_read(
            platform,
            actor=terminal.client_id,
            org=POLICE,
            subjects=["p-5" * 20],
            case_reference=LONG,
            details={"note": "x" * 300},
        )
    for n in range(6):  # six refusals within the same second
        with clock_at(monkeypatch, night + timedelta(minutes=5, milliseconds=50 * n)):
            make_event(
                platform,
                actor=terminal.client_id,
                org=POLICE,
                action=AuditAction.ACCESS_DENIED,
                outcome=Outcome.DENIED,
            )
    # The terminal's role ends in 20 days: the expiring-grants page lists it.
    principals.set_roles(
        platform.admin,
        cli_context(),
        terminal.client_id,
        [RoleGrant("l1_reader", None, utcnow() + timedelta(days=20, hours=1))],
    )
    audit_chain.seal_all(platform.sessions)
    with platform.sessions() as session:
        checkpoints.write_checkpoint(session, platform.audit_signer)
        session.commit()

    server = LiveServer(settings, tmp_path / "server.log")
    try:
        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto(server.url + "/ig/sign-in")
        page.fill("#username", "lena")
        page.fill("#password", PASSWORD)
        page.click("button:has-text('Sign in')")
        expect(page).to_have_url(server.url + "/ig/events")

        row = page.locator("table.events tbody tr", has_text=LONG)
        # The organisation has its own column here; the actor cell names the client by its id.
        expect(row.locator("td.actor")).to_have_text(f"Custody suite terminal {terminal.client_id}")
        expect(row).to_contain_text("hampshire-constabulary")
        since = page.locator("input[name=since]")
        expect(since).to_have_value("")
        expect(since).to_have_attribute("placeholder", "YYYY-MM-DD")
        faint, text = since.evaluate(
            "el => [getComputedStyle(el, '::placeholder').color, getComputedStyle(el).color]"
        )
        assert faint != text, (faint, text)
        _fits(page, "events")

        with page.expect_download() as csv_download:
            page.click("p.exports >> text=CSV")
        exported = Path(csv_download.value.path()).read_text()
        assert exported.startswith("occurred_at,event_id,action"), exported[:200]
        assert read in exported and terminal.client_id in exported
        assert "Custody suite terminal" not in exported  # exports keep the ids
        with page.expect_download() as ndjson_download:
            page.click("p.exports >> text=NDJSON")
        lines = Path(ndjson_download.value.path()).read_text().splitlines()
        assert read in {json.loads(line)["event_id"] for line in lines}

        page.goto(server.url + f"/ig/events/{read}")
        expect(page.locator("dl.detail")).to_contain_text("Custody suite terminal")
        _fits(page, "event")

        page.goto(server.url + "/ig/people/" + "p-5" * 20)
        expect(page.locator("table.events td.actor")).to_contain_text("Custody suite terminal")
        _fits(page, "person")

        page.goto(server.url + "/ig/alerts?state=all&since=" + night.date().isoformat())
        burst = page.locator("section.alert[data-rule=denials]")
        expect(burst).to_contain_text("6 denials")
        expect(burst).to_contain_text("within 0.2 s")
        expect(burst).to_contain_text("Custody suite terminal (hampshire-constabulary)")
        _fits(page, "alerts")

        page.goto(server.url + "/ig/checkpoints?verify=1")
        expect(page.locator("main")).to_contain_text("verify against the latest checkpoint")
        _fits(page, "checkpoints")

        page.click("nav >> text=Expiring grants")
        expect(page).to_have_url(server.url + "/ig/grants/expiring")
        grant = page.locator("#expiring-grants tbody tr", has_text=terminal.client_id)
        expect(grant).to_contain_text("Custody suite terminal")
        expect(grant).to_contain_text("l1_reader")
        expect(grant.locator("td").nth(5)).to_have_text("20")
        _fits(page, "expiring-grants")
    finally:
        server.stop()

    with platform.sessions() as session:
        exports = [
            e.parameters
            for e in session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == "audit.queried", AuditEvent.actor == "user:lena")
                .order_by(AuditEvent.seq)
            )
            if e.parameters.get("format") in ("csv", "ndjson")
        ]
    assert [p["format"] for p in exports] == ["csv", "ndjson"]


def test_two_ig_leads_sign_off_a_contract_draft_and_the_owner_activates_it(
    settings: Settings,
    platform: Platform,
    tmp_path: Path,
    browser_page: object,
    make_client: MakeClient,
    token_for: Callable[[ClientCredentials], str],
    api: TestClient,
) -> None:
    from playwright.sync_api import Page, expect

    from services.lifecycle import service as lifecycle
    from tests.ingestion.helpers import police_rows, to_csv
    from tests.ingestion.test_uploads import push

    page: Page = browser_page  # type: ignore[assignment]
    for username, org in (("hana", POLICE), ("victor", "vru")):
        people_admin.create_user(
            platform.admin,
            cli_context(),
            username=username,
            organisation=org,
            role="ig_lead",
            password=PASSWORD,
        )
    rows = police_rows(200)
    over_60 = sum(1 for row in rows if row["victim_age"] and int(row["victim_age"]) > 60)
    assert push(api, token_for(make_client()), to_csv(rows)).status_code == 201
    # The owner proposes 2.0.0: victims over 60 would be refused (a narrower domain: major).
    proposal = tmp_path / "contracts"
    proposal.mkdir()
    source = (settings.contracts_dir / "police.occurrences.yaml").read_text(encoding="utf-8")
    (proposal / "police.occurrences.yaml").write_text(
        source.replace("version: 1.0.0", "version: 2.0.0").replace(
            "    minimum: 0\n    maximum: 120\n", "    minimum: 0\n    maximum: 60\n"
        ),
        encoding="utf-8",
    )
    loaded = lifecycle.load_directory(platform.lifecycle, cli_context(), proposal)
    assert [r.outcome for r in loaded] == ["draft"]
    draft = "section[id='contract-police.occurrences-2.0.0']"

    def sign_in(username: str) -> None:
        page.goto(server.url + "/ig/sign-in")
        page.fill("#username", username)
        page.fill("#password", PASSWORD)
        page.click("button:has-text('Sign in')")
        expect(page).to_have_url(server.url + "/ig/events")
        page.click("nav >> text=Contracts")
        expect(page).to_have_url(server.url + "/ig/contracts")

    server = LiveServer(settings, tmp_path / "server.log")
    try:
        page.set_viewport_size({"width": 1280, "height": 800})
        sign_in("hana")
        section = page.locator(draft)
        expect(section.locator(".state")).to_have_text("draft")
        expect(section).to_contain_text("major change against 1.0.0")
        expect(section.locator("table.changes")).to_contain_text("maximum 120 -> 60")
        # The report of the data held is on the page before anyone signs.
        expect(section.locator(".validation")).to_contain_text(f"{over_60} violation")
        expect(section.locator("table.totals")).to_contain_text("maximum")
        _fits(page, "contracts")
        section.locator("button:has-text('Sign off for hampshire-constabulary')").click()
        expect(page.locator(draft).locator("ul.signoffs")).to_contain_text("user:hana")
        expect(page.locator(draft).locator("button")).to_have_count(0)
        page.click("button:has-text('Sign out')")

        sign_in("victor")
        page.locator(draft).locator("button:has-text('Sign off for vru')").click()
        expect(page.locator(draft).locator(".state")).to_have_text("approved")
        # Only the owner activates.
        expect(page.locator(draft).locator("button")).to_have_count(0)
        page.click("button:has-text('Sign out')")

        sign_in("hana")
        page.locator(draft).locator("button:has-text('Activate')").click()
        expect(page.locator("main")).to_contain_text("No contract version waits")
    finally:
        server.stop()

    states = {
        v["version"]: v["state"]
        for v in lifecycle.changelog(platform.lifecycle, "police.occurrences")
    }
    assert states == {"2.0.0": "active", "1.0.0": "retired"}
    with platform.sessions() as session:
        steps = [
            (e.action, e.actor)
            for e in session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action.like("contract.%"))
                .order_by(AuditEvent.seq)
            )
        ]
    assert steps == [
        ("contract.loaded", "test"),
        ("contract.signed_off", "user:hana"),
        ("contract.signed_off", "user:victor"),
        ("contract.approved", "user:victor"),
        ("contract.activated", "user:hana"),
    ]


def test_an_ig_lead_answers_a_subject_access_request_and_confirms_a_withdrawal(
    settings: Settings,
    platform: Platform,
    tmp_path: Path,
    browser_page: object,
    api: TestClient,
    police_token: str,
) -> None:
    from playwright.sync_api import Page, expect

    from services.retention import certificates
    from tests.ingestion.helpers import police_rows, to_csv
    from tests.ingestion.test_uploads import push

    page: Page = browser_page  # type: ignore[assignment]
    people_admin.create_user(
        platform.admin,
        cli_context(),
        username="sofia",
        organisation=POLICE,
        role="ig_lead",
        password=PASSWORD,
    )
    rows = police_rows(60)
    assert push(api, police_token, to_csv(rows)).status_code == 201
    suspect = next(row for row in rows if row["suspect_nominal_ref"])
    asked = api.delete(
        "/v1/datasets/police.occurrences", headers={"Authorization": f"Bearer {police_token}"}
    )
    assert asked.status_code == 202, asked.text
    deletion_id = asked.json()["id"]

    server = LiveServer(settings, tmp_path / "server.log")
    try:
        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto(server.url + "/ig/sign-in")
        page.fill("#username", "sofia")
        page.fill("#password", PASSWORD)
        page.click("button:has-text('Sign in')")
        expect(page).to_have_url(server.url + "/ig/events")

        page.click("nav >> text=Subject access")
        expect(page).to_have_url(server.url + "/ig/subject-access")
        page.select_option("#sar-identifier-name", "suspect_nominal_ref")
        page.fill("#sar-identifier-value", suspect["suspect_nominal_ref"])
        page.click("button:has-text('Search')")
        # The answer of a POST: the person's values are nowhere in the address.
        expect(page).to_have_url(server.url + "/ig/subject-access")
        expect(page.locator("table.sar-datasets")).to_contain_text("police.occurrences")
        expect(page.locator("table.sar-fields")).to_contain_text(suspect["suspect_surname"])
        _fits(page, "subject-access")
        with page.expect_download() as csv_download:
            page.click("button:has-text('Download CSV')")
        exported = Path(csv_download.value.path()).read_text()
        assert exported.startswith("section,dataset,owner"), exported[:200]

        page.click("nav >> text=Deletions")
        expect(page).to_have_url(server.url + "/ig/deletions")
        _fits(page, "deletions")
        page.locator(f"#withdrawal-{deletion_id}").locator(
            "button:has-text('Confirm withdrawal')"
        ).click()
        expect(page).to_have_url(server.url + f"/ig/deletions/police.occurrences/{deletion_id}")
        expect(page.get_by_role("status")).to_contain_text("Certified: 60 rows removed")
        with page.expect_download() as certificate_download:
            page.click("text=Download the signed certificate")
        document = json.loads(Path(certificate_download.value.path()).read_text())
    finally:
        server.stop()

    keys = {k.key_id: k.raw for k in platform.audit_signer.published_keys()}
    assert certificates.verify(document, keys) == []
    assert document["certificate"]["confirmed_by"] == "user:sofia"
