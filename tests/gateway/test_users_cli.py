"""`together users`: accounts for people, created, listed and disabled from the command line."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.admin import accounts as people_admin
from services.audit.models import AuditEvent
from services.identity.models import User
from services.kit.errors import BadRequest
from services.platform import Platform
from tests.fixtures.app import cli_context
from tests.fixtures.cli import run_cli

PASSWORD = "a long enough password"


def run(
    platform: Platform, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(platform.settings, "users", *args, stdin=stdin)


def test_users_create_list_disable(api: TestClient, platform: Platform) -> None:
    create = ("create", "alice", "--org", "hiwfrs", "--role", "ig_lead", "--password-stdin")
    created = run(platform, *create, stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    short = run(
        platform,
        *("create", "bob", "--org", "hiwfrs", "--role", "ig_lead", "--password-stdin"),
        stdin="short\n",
    )
    assert short.returncode == 2 and "12 characters" in short.stderr
    for name, role in (("alice", "ig_lead"), ("bob", "l3_practitioner")):
        with pytest.raises(BadRequest):
            people_admin.create_user(
                platform.admin,
                cli_context(),
                username=name,
                organisation="hiwfrs",
                role=role,
                password=PASSWORD,
            )
    oidc = run(platform, "create", "carol@example.org", "--org", "vru", "--role", "admin", "--oidc")
    assert oidc.returncode == 0, oidc.stderr

    listed = json.loads(run(platform, "list").stdout)
    assert [(u["username"], u["sign_in"], u["disabled"]) for u in listed] == [
        ("alice", "local", False),
        ("carol@example.org", "oidc", False),
    ]
    assert "argon2" not in json.dumps(listed)
    with platform.sessions() as session:
        stored = session.scalars(select(User).where(User.username == "alice")).one()
        assert stored.password_hash and stored.password_hash.startswith("$argon2id$")
        assert PASSWORD not in stored.password_hash

    # Signed in, then disabled: the very next page is the sign-in form.
    form = api.get("/ig/sign-in").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token
    response = api.post(
        "/ig/sign-in",
        data={"username": "alice", "password": PASSWORD, "csrf": token.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert api.get("/ig/events").status_code == 200
    assert run(platform, "disable", "alice").returncode == 0
    after = api.get("/ig/events", follow_redirects=False)
    assert after.status_code == 303 and after.headers["location"] == "/ig/sign-in"

    with platform.sessions() as session:
        actions = [
            (e.action, e.resource)
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action.like("user.%")).order_by(AuditEvent.seq)
            )
        ]
    assert actions == [
        ("user.created", "alice"),
        ("user.created", "carol@example.org"),
        ("user.listed", None),
        ("user.disabled", "alice"),
    ]
