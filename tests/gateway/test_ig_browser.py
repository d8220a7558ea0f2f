"""The IG pages in a real browser (headless Debian Chromium driven by Playwright) against a real
server: create an IG lead with the CLI, sign in, find a person's reads, mark an alert reviewed.

`make test` installs Chromium when it is missing and it can (root). Without it this test skips
with a message, except under CI (CI=true), where a missing browser is a failure."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from services.audit.models import AlertReview, AuditEvent
from services.kit.clock import utcnow
from services.kit.settings import Settings
from services.platform import Platform
from tests.fixtures.audit_events import COUNCIL, POLICE, clock_at, level3_read
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
        expect(reviewed).to_contain_text("Reviewed by user:alice")
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
