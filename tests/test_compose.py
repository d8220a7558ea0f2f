"""docker/compose.yaml, read as Compose would read it: Docker cannot run here, so these checks are
static, except the secret files, which docker/make-secrets.sh really writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from services.audit.checkpoints import load_signer
from services.kit.keys import load_keys
from services.kit.settings import Environment, Settings
from tests.live import together_bin

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SECRETS = "/run/secrets/"

# What a replica cannot run without in production, as groups of Settings fields of which one
# alternative must be set in full. Without a database URL each replica would keep its own SQLite
# file; without object storage its own folder; the keys and the audit key are refused when
# missing (services/kit/keys.py, services/audit/checkpoints.py).
REQUIRED: list[list[tuple[str, ...]]] = [
    [("database_url",)],
    [("key_file",), ("hmac_key", "encryption_key", "jwt_private_key")],
    [("audit_key_file",), ("audit_signing_key",)],
    [("storage_url",)],
    [("s3_endpoint_url",)],
    [("s3_access_key_id", "s3_secret_access_key")],
]
# Names of variables whose value would be a secret if written inline.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY($|_)|DATABASE_URL|_DSN")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return loaded


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def _replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in _services(compose).items()
        if service.get("command", [])[:2] == ["together", "serve"]
    }


def _file_settings() -> set[str]:
    """The TOGETHER_<NAME>_FILE variables docker/entrypoint.sh reads into TOGETHER_<NAME>."""
    script = (DOCKER / "entrypoint.sh").read_text()
    names = re.search(r"^for name in (.*); do$", script, re.M)
    assert names, "entrypoint.sh must keep its list of settings read from files"
    return {f"TOGETHER_{name}_FILE" for name in names.group(1).split()}


def _mounted(service: dict[str, Any], path: str) -> bool:
    return path.startswith(SECRETS) and path.removeprefix(SECRETS) in service.get("secrets", [])


def test_every_setting_a_replica_needs_in_production_is_set(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for group in REQUIRED:
        for alternative in group:
            assert set(alternative) <= set(Settings.model_fields), alternative
    replicas = _replicas(compose)
    assert len(replicas) >= 2
    from_files = _file_settings()
    for name, replica in replicas.items():
        environment = {key: str(value) for key, value in replica["environment"].items()}
        for variable in [v for v in environment if v.endswith("_FILE")]:
            value = environment[variable]
            assert _mounted(replica, value), f"{name}: {variable}={value} is not a mounted secret"
            if variable in from_files:
                # What entrypoint.sh does, with a stand-in for the file's contents.
                del environment[variable]
                stand_in = "postgresql://together_app:x@db:5432/together"
                environment[variable.removesuffix("_FILE")] = (
                    stand_in if "DATABASE_URL" in variable else "from-a-secret-file"
                )
        for variable in list(os.environ):
            if variable.startswith("TOGETHER_"):
                monkeypatch.delenv(variable)
        for variable, value in environment.items():
            monkeypatch.setenv(variable, value)
        settings = Settings()
        assert settings.env == Environment.production, name
        for group in REQUIRED:
            assert any(
                all(getattr(settings, field) is not None for field in alternative)
                for alternative in group
            ), f"{name}: none of {group} is set"
        assert str(settings.storage_url).startswith("s3://"), name
        assert settings.resolved_database_url.startswith("postgresql"), name
        for path in (settings.key_file, settings.audit_key_file):
            assert path is not None and _mounted(replica, str(path)), (name, path)


def test_no_secret_is_written_inline(compose: dict[str, Any]) -> None:
    declared = compose["secrets"]
    for name, service in _services(compose).items():
        for secret in service.get("secrets", []):
            assert secret in declared, f"{name} uses undeclared secret {secret}"
        for variable, value in (service.get("environment") or {}).items():
            text = str(value)
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", text), (
                f"{name}: {variable} has a password"
            )
            if SECRET_NAME.search(variable):
                assert text.startswith(SECRETS), f"{name}: {variable} is not read from a file"
            # A long run of key-like characters that is not a path or an address.
            key_like = re.fullmatch(r"[A-Za-z0-9+=_-][A-Za-z0-9+/=_-]{19,}", text)
            assert not key_like, f"{name}: {variable} looks like a key"
        assert "env_file" not in service, f"{name}: secrets come from files in secrets/ only"
    for secret in declared.values():
        assert secret["file"].startswith("./secrets/"), secret


def test_replicas_wait_for_the_migration_and_sit_behind_the_proxy(
    compose: dict[str, Any],
) -> None:
    services = _services(compose)
    replicas = _replicas(compose)
    migrate = services["migrate"]
    assert migrate.get("restart") == "no"
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    script = (DOCKER / "migrate.sh").read_text()
    assert migrate["command"] == ["together-migrate"]
    assert "together-migrate" in (DOCKER / "Dockerfile").read_text()
    upgrade = script.index("together db upgrade")
    assert script.index("prepare.py role") < upgrade < script.index("together db grant-app-role")
    for name, replica in replicas.items():
        condition = replica["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
        assert "healthcheck" in replica, name

    (proxy,) = [s for s in services.values() if str(s.get("image", "")).startswith("caddy")]
    assert {name: "service_healthy" for name in replicas} == {
        name: dependency["condition"] for name, dependency in proxy["depends_on"].items()
    }
    caddyfile = (DOCKER / "caddy" / "Caddyfile").read_text()
    upstreams = re.search(r"reverse_proxy ([^{]*)\{", caddyfile)
    assert upstreams and set(upstreams.group(1).split()) == {f"{r}:8000" for r in replicas}
    assert "health_uri /readyz" in caddyfile


def test_the_image_installs_the_wheel_and_runs_as_a_user() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert not re.search(r"pip install[^\n]*\s-e\s", dockerfile)
    assert "pip install --no-compile --no-index --find-links /wheels together" in dockerfile
    # The run stage copies no source: only the wheels (mounted) and the docker/ scripts.
    run_stage = dockerfile.split("\nFROM ")[-1]
    for line in re.findall(r"^COPY .*$", run_stage, re.M):
        assert " docker/" in line, line
    # The build context holds only what is allowed back in: never docker/secrets/.
    ignore = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "**"
    assert not [pattern for pattern in ignore if "secrets" in pattern]


def test_the_secret_files_are_git_ignored(compose: dict[str, Any]) -> None:
    for secret in compose["secrets"].values():
        path = (DOCKER / secret["file"]).resolve().relative_to(ROOT)
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{path} is not git-ignored"


def test_make_secrets_writes_every_secret_consistently(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "secrets"
    env = {"PATH": "/usr/bin:/bin", "TOGETHER": together_bin()}
    written = []
    for _ in range(2):
        made = subprocess.run(
            ["sh", str(DOCKER / "make-secrets.sh"), str(folder)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        written.append({path.name: path.read_bytes() for path in folder.iterdir()})
    assert written[0] == written[1], "a second run must keep the secrets the first wrote"
    files = {
        name: (folder / Path(secret["file"]).name).read_text().strip()
        for name, secret in compose["secrets"].items()
    }
    assert all(files.values())
    assert folder.stat().st_mode & 0o077 == 0

    services = _services(compose)
    db = services["db"]["environment"]
    owner = urlparse(files["db_owner_url"])
    assert (owner.username, owner.password) == (db["POSTGRES_USER"], files["db_owner_password"])
    assert (owner.hostname, owner.path) == ("db", "/" + db["POSTGRES_DB"])
    app = urlparse(files["db_app_url"])
    role = services["migrate"]["environment"]["APP_ROLE"]
    assert (app.username, app.password) == (role, files["db_app_password"])
    assert role != db["POSTGRES_USER"]

    identities = json.loads(files["s3_config"])["identities"]
    (identity,) = identities
    assert identity["credentials"] == [
        {"accessKey": files["s3_access_key_id"], "secretKey": files["s3_secret_access_key"]}
    ]
    assert {"Read", "Write", "List"} <= set(identity["actions"])

    # The platform reads both key files as the replicas will.
    settings = Settings(
        env=Environment.production,
        key_file=folder / "together_keys.json",
        audit_key_file=folder / "together_audit_key.pem",
    )
    assert load_keys(settings)
    assert load_signer(settings).key_id
