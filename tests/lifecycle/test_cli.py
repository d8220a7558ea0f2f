"""The lifecycle from the command line: `together db upgrade` and `together contracts load`
record a changed file as a draft; the installation gives one sign-off and activates."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.cli import run_cli
from tests.lifecycle.conftest import POLICE, POLICE_FILE, World
from tests.lifecycle.test_lifecycle import _minor


def test_the_installation_loads_signs_off_once_and_activates(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOGETHER_CONTRACTS_DIR", str(world.contracts))
    settings = world.settings
    upgraded = run_cli(settings, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "contract" not in upgraded.stdout  # nothing changed: nothing recorded
    world.edit(POLICE_FILE, _minor)
    loaded = run_cli(settings, "contracts", "load")
    assert loaded.returncode == 0, loaded.stderr
    assert f"contract {POLICE} 1.1.0 draft: minor" in loaded.stdout
    again = run_cli(settings, "contracts", "load")
    assert "draft" not in again.stdout

    signed = run_cli(
        settings, "contracts", "signoff", POLICE, "1.1.0", "--as-org", "hampshire-constabulary"
    )
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signed.stdout)["signoffs"][0]["signed_by"] == "cli:contracts-signoff"
    # The installation is one principal: the second sign-off is another person's.
    twice = run_cli(settings, "contracts", "signoff", POLICE, "1.1.0", "--as-org", "vru")
    assert twice.returncode == 2 and "another person" in twice.stderr
    assert world.sign(world.token("vru"), "1.1.0").json()["state"] == "approved"

    activated = run_cli(settings, "contracts", "activate", POLICE, "1.1.0")
    assert activated.returncode == 0, activated.stderr
    assert json.loads(activated.stdout)["state"] == "active"
    versions = json.loads(run_cli(settings, "contracts", "versions", POLICE).stdout)
    assert [(v["version"], v["state"]) for v in versions] == [
        ("1.1.0", "active"),
        ("1.0.0", "retired"),
    ]


def test_a_refused_file_fails_the_load(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_CONTRACTS_DIR", str(world.contracts))
    world.edit(POLICE_FILE, lambda t: t.replace("    maximum: 120\n", "    maximum: 60\n"))
    loaded = run_cli(world.settings, "contracts", "load")
    assert loaded.returncode == 1
    assert "1.0.0 refused: a major change: version 1.0.0 is not after 1.0.0" in loaded.stdout
