"""The `together` command line, run as a user would, against the test's database."""

from __future__ import annotations

import json
import subprocess

from sqlalchemy import select

from services.audit.models import AuditEvent
from services.platform import Platform
from tests.fixtures.cli import run_cli


def run(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(platform.settings, *args)


def test_clients_create_list_roles_disable(platform: Platform) -> None:
    created = run(
        platform, "clients", "create", "rms", "--org", "hiwfrs", "--role", "partner_system"
    )
    assert created.returncode == 0, created.stderr
    client = json.loads(created.stdout)
    assert client["client_secret"] and client["organisation"] == "hiwfrs"

    refused = run(platform, "clients", "roles", client["client_id"], "--role", "l2_reader")
    assert refused.returncode == 2 and "areas" in refused.stderr
    changed = run(
        platform, "clients", "roles", client["client_id"], "--role", "l2_reader", "--area", "Havant"
    )
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout) == [{"role": "l2_reader", "area": "Havant"}]

    listed = json.loads(run(platform, "clients", "list").stdout)
    assert [c["roles"] for c in listed] == [[{"role": "l2_reader", "area": "Havant"}]]
    assert "client_secret" not in json.dumps(listed)
    assert run(platform, "clients", "disable", client["client_id"]).returncode == 0
    assert json.loads(run(platform, "clients", "list").stdout)[0]["disabled"] is True

    with platform.sessions() as session:
        actions = [
            e.action for e in session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars()
        ]
    assert actions == ["client.created", "client.roles_changed", "client.disabled"]


def test_contracts_lint(platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert run(platform, "contracts", "lint").returncode == 0
    bad = tmp_path / "health.bad.yaml"
    bad.write_text("id: health.bad\n")
    result = run(platform, "contracts", "lint", str(bad))
    assert result.returncode == 1
    assert "error" in result.stdout


def test_sharing_refresh(platform: Platform) -> None:
    """Every Level 1 table in both variants; run again, nothing new is materialised."""
    first = run(platform, "sharing", "refresh")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    level1 = [t for t in platform.sharing.config.tables if t.level == 1]
    assert len(lines) == 2 * len(level1)
    assert any("(suppressed, areas all)" in line for line in lines)
    assert any("(unsuppressed, areas all)" in line for line in lines)
    again = run(platform, "sharing", "refresh")
    assert again.stdout == first.stdout
