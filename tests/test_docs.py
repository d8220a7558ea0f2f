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


def test_the_benchmark_table_is_the_last_published_run() -> None:
    """The README's benchmark table is docs/benchmarks.json rendered (`make bench` publishes
    both), and every figure there has the fields the table shows."""
    import json
    import sys

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        import bench_report
        import benchkit
    finally:
        sys.path.remove(str(scripts))
    document = json.loads(benchkit.PUBLISHED_FILE.read_text())
    assert document["figures"], "the published run has no figures"
    for key, figure in document["figures"].items():
        assert set(benchkit.FIELDS) <= set(figure), key
        assert figure["result"] in {"PASS", "FAIL", "info"}, key
    assert bench_report.readme_table(README) == bench_report.render(document)
    header = bench_report.readme_table(README).splitlines()[2]
    assert header == "| " + " | ".join(bench_report.HEADINGS[f] for f in benchkit.FIELDS) + " |"
