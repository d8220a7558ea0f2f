"""The platform installed as a service: a wheel (not an editable checkout) in a fresh virtual
environment, run from a folder that knows nothing of the repository."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from services.kit.resources import Resource
from tests.live import free_port

ROOT = Path(__file__).resolve().parents[1]
CODE = ("services", "gateway")
# What the wheel is built from: the code and the folders it ships as package data.
SOURCES = ("pyproject.toml", "README.md", *CODE, *get_args(Resource))


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _source_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def test_every_package_of_the_source_tree_is_listed_for_the_wheel() -> None:
    # The list in pyproject.toml is explicit (the resource folders are mapped into it), so a
    # new folder of code would otherwise be left out of the wheel without a word.
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for top in CODE
        for path in _source_files(ROOT / top)
    }
    assert folders - listed == set()
    mapped = {name: folder for name, folder in setuptools["package-dir"].items() if name in listed}
    assert mapped == {f"together_resources.{name}": name for name in get_args(Resource)}
    assert {name for name in listed if not name.startswith("together_resources.")} <= folders


def _run(
    command: list[str], cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result


def _token(base: str, client_id: str, client_secret: str) -> str:
    response = httpx.post(
        base + "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, client_secret),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.mark.slow
def test_the_installed_wheel_runs_from_any_folder(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(origin, source / name)
    # A copy, so that the build leaves no build/ or egg-info behind in the checkout. pip builds
    # in an isolated environment with the setuptools and wheel that pyproject.toml asks for
    # (the test environment's own setuptools is older and has no wheel package beside it).
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        tmp_path,
        dict(os.environ),
        timeout=300,
    )
    (wheel,) = wheels.glob("together-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, dict(os.environ))
    python = venv / "bin" / "python"
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            tmp_path,
            dict(os.environ),
        ).stdout.strip()
    )
    # The dependencies come from the test's own environment rather than the network; a path
    # in a .pth file adds that folder only: its .pth files (the checkout's editable install)
    # are not run, so `services` and `gateway` can only come from the wheel.
    dependencies = dict.fromkeys(
        [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    )
    (site / "dependencies.pth").write_text("\n".join(dependencies) + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        tmp_path,
        dict(os.environ),
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOGETHER_", "PYTHON"))}
    env.update({"TOGETHER_ENV": "development", "TOGETHER_DATA_DIR": str(data)})

    installed = json.loads(
        _run(
            [
                str(python),
                "-c",
                "import json, gateway, services\n"
                "from services.kit.migrate import migrations_dir\n"
                "from services.kit.settings import Settings\n"
                "s = Settings()\n"
                "print(json.dumps({'gateway': gateway.__file__, 'services': services.__file__,"
                " 'migrations': str(migrations_dir()), 'contracts': str(s.contracts_dir),"
                " 'policies': str(s.policies_dir), 'partnership': str(s.partnership_file),"
                " 'products': str(s.products_dir), 'sharing': str(s.sharing_file)}))",
            ],
            elsewhere,
            env,
        ).stdout
    )
    for name, location in installed.items():
        assert Path(location).is_relative_to(site), (name, location)
        assert Path(location).exists(), (name, location)
    assert Path(installed["migrations"]) == site / "together_resources" / "migrations"

    # Everything the checkout ships is in the wheel: code, templates, definitions, resources.
    for top in SOURCES[2:]:
        for path in _source_files(ROOT / top):
            relative = path.relative_to(ROOT)
            inside = relative if top in CODE else Path("together_resources", relative)
            assert (site / inside).is_file(), f"{relative} is not in the wheel"

    together = str(venv / "bin" / "together")
    upgraded = _run([together, "db", "upgrade"], elsewhere, env)
    assert "database at revision head" in upgraded.stdout
    linted = _run([together, "contracts", "lint"], elsewhere, env)
    assert "contracts OK" in linted.stdout
    assert str(site) in linted.stdout
    _run([together, "demo", "load"], elsewhere, env, timeout=300)
    created = json.loads(
        _run(
            [
                together,
                "clients",
                "create",
                "my-rms",
                "--org",
                "hampshire-constabulary",
                "--role",
                "partner_system",
            ],
            elsewhere,
            env,
        ).stdout
    )
    assert list(elsewhere.iterdir()) == [], "a command wrote into the folder it was run from"

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [together, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=elsewhere,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ready = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ready = httpx.get(base + "/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, (tmp_path / "server.log").read_text()
        assert httpx.get(base + "/healthz", timeout=10).status_code == 200

        token = _token(base, created["client_id"], created["client_secret"])
        contract = httpx.get(
            base + "/v1/contracts/police.occurrences",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert contract.status_code == 200, contract.text
        assert contract.json()["owner"] == "hampshire-constabulary"

        # A Level 1 product over the demo data: definitions, policies and the query engine.
        clients = json.loads((data / "demo-clients.json").read_text())
        analyst = next(c for c in clients if c["name"] == "demo-l1-analyst")
        token = _token(base, analyst["client_id"], analyst["client_secret"])
        today = date.today()
        period = {
            "from": today.replace(year=today.year - 1, day=1).isoformat(),
            "to": today.replace(day=1).isoformat(),
            "by": "csp",
        }
        counts = httpx.get(
            base + "/v1/products/sv-counts",
            params=period,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert counts.status_code == 200, counts.text
        assert sum(row["count"] for row in counts.json()["rows"]) > 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
        log.close()
