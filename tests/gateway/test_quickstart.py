"""The README's quick start, run exactly as written against a real server with demo data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.demo.load import credentials_path
from services.platform import Platform
from services.storage import service as storage_service
from tests.live import LiveServer, live_token, settings_env, together_bin

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart_commands() -> str:
    text = README.read_text()
    block = re.search(
        r"<!-- quickstart:begin -->\s*```sh\n(.*?)```\s*<!-- quickstart:end -->", text, re.S
    )
    assert block, "the README must keep its quick-start block between the markers"
    commands = block.group(1)
    assert len([line for line in commands.splitlines() if line.strip()]) <= 4
    return commands


def consumer_commands() -> str:
    """The README's first product examples: the period's lines and the curl commands."""
    text = README.read_text()
    block = re.search(r"To read a product, .*?```sh\n(.*?)```", text, re.S)
    assert block, "the README must keep its product examples after the quick start"
    return block.group(1)


def test_readme_quickstart_works(platform: Platform, tmp_path: Path) -> None:
    env = settings_env(platform.settings)
    loaded = subprocess.run(
        [together_bin(), "demo", "load"], env=env, capture_output=True, text=True, timeout=300
    )
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded police.occurrences" in loaded.stdout
    with platform.sessions() as session:
        for dataset in platform.contracts:
            assert storage_service.current_version(session, platform.storage, dataset), dataset

    workdir = tmp_path / "checkout"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(Path(sys.prefix))
    (workdir / "var").symlink_to(platform.settings.data_dir)
    server = LiveServer(platform.settings, tmp_path / "server.log")
    try:
        script = quickstart_commands().replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        # The consumer examples, as the demo's analyst, answer on whatever day this runs.
        clients = json.loads(credentials_path(platform.settings.data_dir).read_text())
        analyst = next(c for c in clients if c["name"] == "demo-l1-analyst")
        token = live_token(server, analyst["client_id"], analyst["client_secret"])
        consumer = subprocess.run(
            [
                "bash",
                "-euo",
                "pipefail",
                "-c",
                consumer_commands().replace("127.0.0.1:8000", f"127.0.0.1:{server.port}"),
            ],
            cwd=workdir,
            env={**env, "TOKEN": token},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert consumer.returncode == 0, consumer.stderr
    by_csp, end = json.JSONDecoder().raw_decode(consumer.stdout)
    assert sum(row["count"] for row in by_csp["rows"]) > 0
    heat_map = consumer.stdout[end:].strip().splitlines()
    assert heat_map[0].replace('"', "").startswith("weekday,hour,count")
    assert len(heat_map) > 1
    decoder = json.JSONDecoder()
    upload, end = decoder.raw_decode(result.stdout)
    assert upload["status"] == "accepted"
    assert upload["rows"] > 1000
    contract, _ = decoder.raw_decode(result.stdout[end:].lstrip())
    assert contract["id"] == "police.occurrences"
    assert contract["owner"] == "hampshire-constabulary"
