"""The parts of the layering import-linter cannot see (it knows external packages only by their
top-level name): file-format IO through pyarrow stays in storage and ingestion, and the rules in
docs/architecture.md are the ones `.importlinter` enforces."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE_IO_MODULES = {
    "pyarrow.parquet",
    "pyarrow.csv",
    "pyarrow.json",
    "pyarrow.fs",
    "pyarrow.dataset",
}
ALLOWED_PACKAGES = ("services/storage/", "services/ingestion/")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_file_format_io_only_in_storage_and_ingestion() -> None:
    offenders = []
    for package in ("services", "gateway"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(ALLOWED_PACKAGES):
                continue
            used = _imported_modules(path) & FILE_IO_MODULES
            if used:
                offenders.append(f"{relative}: {', '.join(sorted(used))}")
    assert offenders == [], "Parquet/CSV/JSON file IO outside storage and ingestion"


def test_the_checker_sees_a_file_io_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import pyarrow.parquet as pq\nfrom pyarrow import csv\n", encoding="utf-8")
    assert {"pyarrow.parquet", "pyarrow.csv"} <= _imported_modules(sample)


def test_the_documented_layers_are_the_enforced_ones() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter", encoding="utf-8")
    layers = config["importlinter:contract:layers"]["layers"].split()
    packages = [name for name in layers if name != "|"]
    document = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for name in packages:
        short = name.removeprefix("services.")
        assert short in document, f"{name} is a layer in .importlinter but not in the docs"
    for name in packages:
        module_path = ROOT / name.replace(".", "/")
        assert module_path.is_dir() or module_path.with_suffix(".py").is_file(), name
