"""`together demo load`: synthetic clients and data, pushed through the real ingestion path."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from gateway import principals
from gateway.platform import Platform, build_platform
from services.audit.service import RequestContext
from services.demo.generate import write_demo_set
from services.identity import service as identity_service
from services.identity.schemas import RoleGrant
from services.ingestion import service as ingestion_service
from services.ingestion.service import UploadRequest
from services.kit.settings import Settings
from services.storage.inputs import MEDIA_CSV

CREDENTIALS_FILE = "demo-clients.json"

# Demo principals: one partner system per owning organisation plus one of each reader role.
DEMO_READERS: list[tuple[str, str, list[RoleGrant]]] = [
    ("demo-admin", "vru", [RoleGrant("admin")]),
    ("demo-l1-reader", "portsmouth-cc", [RoleGrant("l1_reader")]),
    ("demo-l1-analyst", "vru", [RoleGrant("l1_analyst")]),
    ("demo-l2-reader", "southampton-cc", [RoleGrant("l2_reader", "Southampton")]),
    (
        "demo-l3-practitioner",
        "yjs-portsmouth",
        [RoleGrant("l3_practitioner", "Portsmouth"), RoleGrant("l3_practitioner", "Southampton")],
    ),
    ("demo-ig-lead", "hampshire-constabulary", [RoleGrant("ig_lead")]),
]


def _create(platform: Platform, name: str, org: str, grants: list[RoleGrant]) -> dict[str, str]:
    created = principals.create_client(
        platform,
        RequestContext(actor="cli:demo-load", actor_org="vru", actor_roles=["admin"]),
        name=name,
        organisation=org,
        grants=grants,
    )
    return {
        "name": name,
        "organisation": org,
        "client_id": created.client_id,
        "client_secret": created.client_secret,
    }


def load_demo(settings: Settings, *, force: bool, echo: Callable[[str], object]) -> None:
    credentials_path = settings.data_dir / CREDENTIALS_FILE
    if credentials_path.exists() and not force:
        echo(f"demo data already loaded (credentials in {credentials_path}); use --force to reload")
        return
    platform = build_platform(settings)
    try:
        clients: list[dict[str, str]] = []
        owners: dict[str, dict[str, str]] = {}
        for contract in sorted(platform.contracts.values(), key=lambda c: c.id):
            if contract.owner not in owners:
                owners[contract.owner] = _create(
                    platform,
                    f"demo-{contract.owner}-system",
                    contract.owner,
                    [RoleGrant("partner_system")],
                )
                clients.append(owners[contract.owner])
        for name, org, grants in DEMO_READERS:
            clients.append(_create(platform, name, org, grants))
        files = write_demo_set(settings.data_dir / "demo", seed=1)
        for dataset_id, path in sorted(files.items()):
            contract = platform.contracts[dataset_id]
            owner = owners[contract.owner]
            with platform.sessions() as session:
                principal = identity_service.active_principal(session, owner["client_id"])
            assert principal is not None
            ctx = RequestContext(
                actor=principal.client_id,
                actor_org=principal.organisation,
                actor_roles=principal.roles,
            )
            ingestion_service.authorize_upload(
                platform.ingestion, principal, ctx, dataset_id, "replace"
            )
            outcome = ingestion_service.ingest(
                platform.ingestion,
                principal,
                ctx,
                UploadRequest(
                    dataset_id=dataset_id,
                    mode="replace",
                    media_type=MEDIA_CSV,
                    body_path=path,
                    body_sha256=_sha256(path),
                    size_bytes=path.stat().st_size,
                    idempotency_key=None,
                ),
            )
            if outcome.status_code != 201:
                raise RuntimeError(
                    f"demo {dataset_id} was rejected: {json.dumps(outcome.body)[:2000]}"
                )
            echo(
                f"loaded {dataset_id}: {outcome.body['rows']} rows, "
                f"version {outcome.body['version']}"
            )
        fd = os.open(credentials_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(clients, handle, indent=2)
    finally:
        platform.close()
    echo(f"demo clients and their secrets: {credentials_path} (development only)")
    echo(
        "get a token:  curl -s -u CLIENT_ID:CLIENT_SECRET -d grant_type=client_credentials "
        "http://127.0.0.1:8000/oauth/token"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
