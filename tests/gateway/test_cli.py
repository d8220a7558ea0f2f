"""The `together` command line, run as a user would, against the test's database."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner, Result

from gateway.cli import app
from services.audit.models import AuditEvent
from services.kit.settings import get_settings
from services.platform import Platform
from tests.fixtures.cli import run_cli
from tests.live import together_bin


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


def test_an_unknown_organisation_is_answered_with_the_known_ones(platform: Platform) -> None:
    for command in (
        ("clients", "create", "rms", "--org", "nope", "--role", "partner_system"),
        ("users", "create", "alice", "--org", "nope", "--role", "ig_lead", "--oidc"),
    ):
        refused = run(platform, *command)
        assert refused.returncode != 0
        assert "unknown organisation 'nope'" in refused.stderr
        assert "hampshire-constabulary" in refused.stderr and "vru" in refused.stderr
    near = run(
        platform,
        "clients",
        "create",
        "rms",
        "--org",
        "hampshire-constabulary-x",
        "--role",
        "partner_system",
    )
    assert "did you mean 'hampshire-constabulary'" in near.stderr


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


# Commands that read or change an installation, with the least arguments each accepts.
NEEDS_INSTALLATION = [
    ("serve",),
    ("demo", "load"),
    ("db", "grant-app-role", "together_app"),
    ("clients", "create", "rms", "--org", "hiwfrs", "--role", "partner_system"),
    ("clients", "list"),
    ("clients", "disable", "c1"),
    ("clients", "roles", "c1", "--role", "partner_system"),
    ("users", "create", "ana", "--org", "vru", "--role", "ig_lead", "--oidc"),
    ("users", "list"),
    ("users", "disable", "ana"),
    ("storage", "sweep"),
    ("audit", "seal"),
    ("audit", "export"),
    ("sharing", "refresh"),
]


def _outside_installation(
    monkeypatch: pytest.MonkeyPatch, folder: Path, **env: str
) -> Callable[..., Result]:
    """The command as a newcomer runs it: from a folder of their own, no TOGETHER_* set."""
    monkeypatch.chdir(folder)
    for name in [n for n in os.environ if n.startswith("TOGETHER_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def invoke(*args: str) -> Result:
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(app, list(args))
        finally:
            get_settings.cache_clear()

    return invoke


@pytest.mark.parametrize("args", NEEDS_INSTALLATION, ids=" ".join)
def test_commands_refuse_a_folder_without_installation(
    args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    invoke = _outside_installation(monkeypatch, tmp_path, TOGETHER_ENV="development")
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    data_dir = tmp_path / "var"
    assert result.stderr == (
        f"error: no Together installation at data folder {data_dir} (the folder does not "
        f"exist; database sqlite:///{data_dir}/together.db is not migrated): run 'together db "
        "upgrade' first or set TOGETHER_DATA_DIR\n"
    )
    assert list(tmp_path.iterdir()) == []  # no ./var, no keys, no database file


def test_a_folder_with_an_unmigrated_database_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "together.db").touch()
    invoke = _outside_installation(
        monkeypatch, tmp_path, TOGETHER_ENV="development", TOGETHER_DATA_DIR=str(data_dir)
    )
    result = invoke("users", "list")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: no Together installation at data folder {data_dir} (database "
        f"sqlite:///{data_dir}/together.db is not migrated)"
    )
    assert sorted(p.name for p in data_dir.iterdir()) == ["together.db"]


def test_the_database_password_is_never_printed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    invoke = _outside_installation(
        monkeypatch,
        tmp_path,
        TOGETHER_ENV="development",
        TOGETHER_DATA_DIR=str(tmp_path),
        # Nothing listens on port 1: the database cannot be reached.
        TOGETHER_DATABASE_URL="postgresql://together:s3cret-pw@127.0.0.1:1/together",
    )
    result = invoke("clients", "list")
    assert result.exit_code == 2
    assert "s3cret-pw" not in result.output
    assert result.stderr.startswith(
        f"error: no Together installation at data folder {tmp_path} (database "
        "postgresql://together:***@127.0.0.1:1/together cannot be reached)"
    )


def test_commands_that_need_no_installation_still_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    invoke = _outside_installation(monkeypatch, tmp_path, TOGETHER_ENV="development")
    assert invoke("--help").exit_code == 0
    assert invoke("contracts", "lint").exit_code == 0
    assert invoke("keys", "generate", "keys.json").exit_code == 0
    assert invoke("audit", "keygen", "audit.pem").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.pem", "keys.json"]


@pytest.mark.slow
def test_the_refusal_is_one_line_from_a_real_process(tmp_path: Path) -> None:
    environment = {n: v for n, v in os.environ.items() if not n.startswith("TOGETHER_")}
    environment["TOGETHER_ENV"] = "development"
    result = subprocess.run(
        [together_bin(), "users", "list"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: no Together installation at data folder ")
    assert list(tmp_path.iterdir()) == []


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command of the Typer app, as the words a user types after `together`."""
    paths = []
    for name, command in group.commands.items():
        # Groups are told apart by their sub-commands: some Typer releases carry their own Click.
        if hasattr(command, "commands"):
            paths += _command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda path: " ".join(path) or "together")
def test_help_reads_as_plain_usage(path: tuple[str, ...]) -> None:
    """No Python type names (`<bool>`, `<list[str]>`) beside options, no `{name}` in usage."""
    result = CliRunner().invoke(
        app, [*path, "--help"], prog_name="together", env={"COLUMNS": "120"}
    )
    assert result.exit_code == 0, result.output
    assert "Usage: together" in result.output
    assert not re.search(r"<(bool|str|int|float|path|list\[\w+\])>", result.output), result.output
    assert not re.search(r"\{\w+\}", result.output), result.output


def test_every_command_is_in_the_readme_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for line in section.splitlines():
        cell = re.match(r"\| `together ([^`]*)`", line)
        if cell:
            words = cell.group(1).split()
            documented.add(tuple(w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)))
    assert set(COMMANDS) <= documented
    assert documented <= set(COMMANDS)  # nor a command that no longer exists


def _demo_already_loaded(platform: Platform) -> None:
    from services.demo.load import credentials_path

    credentials_path(platform.settings.data_dir).write_text("[]")


def test_demo_load_names_the_url_the_server_is_reached_at(platform: Platform) -> None:
    _demo_already_loaded(platform)
    result = run(platform, "demo", "load", "--url", "http://127.0.0.1:8123")
    assert result.returncode == 0, result.stderr
    assert "demo data already loaded" in result.stdout
    assert "http://127.0.0.1:8123/oauth/token" in result.stdout
    assert ":8000" not in result.stdout


def test_demo_load_takes_the_public_url_from_the_settings(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    _demo_already_loaded(platform)
    monkeypatch.setenv("TOGETHER_SHARING_ENDPOINT", "https://together.example.org/delta-sharing")
    result = run(platform, "demo", "load")
    assert "https://together.example.org/oauth/token" in result.stdout


def test_demo_load_defaults_to_where_serve_listens(platform: Platform) -> None:
    _demo_already_loaded(platform)
    result = run(platform, "demo", "load")
    assert "http://127.0.0.1:8000/oauth/token" in result.stdout
    assert "--url" in result.stdout  # and says how to name another address
