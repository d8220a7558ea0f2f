"""The README is the manual: it names every setting and every command."""

from __future__ import annotations

from pathlib import Path

import typer.main

from gateway.cli import app
from services.kit.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    for name in Settings.model_fields:
        assert f"TOGETHER_{name.upper()}" in README, name


def test_every_command_is_documented() -> None:
    group = typer.main.get_command(app)
    commands: list[str] = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        sub = getattr(command, "commands", None)
        if sub:
            commands.extend(f"together {name} {child}" for child in sub)
        else:
            commands.append(f"together {name}")
    assert len(commands) >= 10
    for command in commands:
        assert f"`{command}" in README, command


def test_the_security_table_is_the_tests() -> None:
    """The README's T1-T50 table is generated from the tests' names (scripts/security_table.py):
    regenerate it with `python scripts/security_table.py --write` when tests change."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "security_table.py"
    spec = importlib.util.spec_from_file_location("security_table", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = module.table(module.collect())
    assert f"{module.START}\n{generated}{module.END}" in README
    assert "**missing**" not in generated
