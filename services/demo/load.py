"""`together demo load`: synthetic clients and data, pushed through the real ingestion path."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path

from services.admin import principals
from services.admin.deps import AdminDeps
from services.audit.service import RequestContext
from services.demo.generate import write_demo_set
from services.identity import service as identity_service
from services.identity.schemas import RoleGrant
from services.ingestion import service as ingestion_service
from services.ingestion.service import IngestionDeps, UploadRequest
from services.kit.ids import new_id
from services.storage.inputs import MEDIA_CSV
from services.storage.models import UploadMode

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


def credentials_path(data_dir: Path) -> Path:
    """Where the demo clients' secrets are written; its presence means the demo is loaded."""
    return data_dir / CREDENTIALS_FILE


def _create(admin: AdminDeps, name: str, org: str, grants: list[RoleGrant]) -> dict[str, str]:
    created = principals.create_client(
        admin,
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


def load_demo(
    ingestion: IngestionDeps,
    admin: AdminDeps,
    data_dir: Path,
    *,
    echo: Callable[[str], object],
    as_of: date | None = None,
    rows: Mapping[str, int] | None = None,
) -> Path:
    """Create the demo clients, upload the generated data set as its owners, and write the
    clients' credentials (mode 0600) to `credentials_path`, which is returned.

    The data end on `as_of`, by default today where the partnership works: the products'
    defaults and the published tables are relative to today, so a demo of fixed dates would
    answer with nothing a few months later. `rows` shrinks the data sets (tests)."""
    contracts = ingestion.contracts
    clients: list[dict[str, str]] = []
    owners: dict[str, dict[str, str]] = {}
    for contract in sorted(contracts.values(), key=lambda c: c.id):
        if contract.owner not in owners:
            owners[contract.owner] = _create(
                admin,
                f"demo-{contract.owner}-system",
                contract.owner,
                [RoleGrant("partner_system")],
            )
            clients.append(owners[contract.owner])
    for name, org, grants in DEMO_READERS:
        clients.append(_create(admin, name, org, grants))
    files = write_demo_set(data_dir / "demo", seed=1, as_of=as_of, rows=rows)
    for dataset_id, path in sorted(files.items()):
        contract = contracts[dataset_id]
        owner = owners[contract.owner]
        principal = identity_service.lookup_active_principal(ingestion.sessions, owner["client_id"])
        assert principal is not None
        ctx = RequestContext(
            actor=principal.client_id,
            actor_org=principal.organisation,
            actor_roles=principal.roles,
        )
        ingestion_service.authorize_upload(ingestion, principal, ctx, dataset_id, "replace")
        outcome = ingestion_service.ingest(
            ingestion,
            principal,
            ctx,
            UploadRequest(
                dataset_id=dataset_id,
                mode=UploadMode.REPLACE,
                media_type=MEDIA_CSV,
                body_path=path,
                body_sha256=_sha256(path),
                size_bytes=path.stat().st_size,
                # A fresh key per file, as a partner system sends one per new upload.
                idempotency_key=f"demo-{dataset_id}-{new_id()}",
            ),
        )
        if outcome.status_code != 201:
            raise RuntimeError(f"demo {dataset_id} was rejected: {json.dumps(outcome.body)[:2000]}")
        echo(f"loaded {dataset_id}: {outcome.body['rows']} rows, version {outcome.body['version']}")
    written = credentials_path(data_dir)
    fd = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(clients, handle, indent=2)
    return written


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
