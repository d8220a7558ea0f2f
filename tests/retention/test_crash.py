"""kill -9 in the middle of an erasure, as a real process killed with SIGKILL.

Before the switch nothing has changed; after it the person's rows are already unreadable and
the deletion waits, `deleting`, for the next erasure of the dataset to finish and certify it
(the three steps of services/retention/rewrite.py). On SQLite and PostgreSQL, and on the local
folder and S3."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.audit.service import RequestContext
from services.identity.schemas import Principal, RoleGrant
from services.kit.settings import Settings
from services.platform import Platform
from services.retention import certificates
from services.retention import service as governance
from services.retention.models import DataDeletion
from services.retention.selectors import PersonQuery
from services.storage import service as storage_service
from tests.live import settings_env
from tests.retention.test_governance import (
    OWNER,
    POLICE,
    _a_suspect,
    _current,
    _held,
    _keys,
    _loaded,
    _person_rows,
    _versions,
)

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
LEAD = Principal(
    client_id="crash-ig-lead",
    name="IG lead",
    organisation=OWNER,
    grants=(RoleGrant("ig_lead"),),
)
CONTEXT = RequestContext(actor=LEAD.client_id, actor_org=OWNER, actor_roles=["ig_lead"])

# The child: the platform built from its environment, as a server process builds it, with ONE
# method of its own instance replaced by one that kills the process (SIGKILL: no handler, no
# `finally`, no rollback runs), then the erasure. Argument 1 names the point, argument 2 the
# person's reference.
CHILD = """
import os
import signal
import sys

from services.audit.service import RequestContext
from services.identity.schemas import Principal, RoleGrant
from services.kit.settings import get_settings
from services.platform import build_platform
from services.retention import service as governance
from services.retention.selectors import PersonQuery

point, ref = sys.argv[1], sys.argv[2]
platform = build_platform(get_settings())
if point == "writing":
    # Step 1: the first rewritten file is in the store; no version names it yet.
    target, name = platform.storage, "put"
else:
    # Step 3: the new version is current; no old file is deleted yet.
    target, name = platform.storage.store, "delete"
original = getattr(target, name)


def dying(*args, **kwargs):
    if point == "writing":
        original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)


setattr(target, name, dying)
lead = Principal("crash-ig-lead", "IG lead", "hampshire-constabulary", (RoleGrant("ig_lead"),))
governance.erase(
    platform.governance,
    lead,
    RequestContext(actor=lead.client_id, actor_org=lead.organisation, actor_roles=["ig_lead"]),
    "police.occurrences",
    governance.ErasureRequest(
        person=PersonQuery(identifiers={"suspect_nominal_ref": ref}),
        reason="UK GDPR Art 17 request upheld",
        case_reference="SAR-CRASH-1",
    ),
)
sys.exit("the erasure finished: the process was never killed")
"""


def _erasure(ref: str) -> governance.ErasureRequest:
    return governance.ErasureRequest(
        person=PersonQuery(identifiers={"suspect_nominal_ref": ref}),
        reason="UK GDPR Art 17 request upheld",
        case_reference="SAR-CRASH-1",
    )


def _killed_while(settings: Settings, point: str, ref: str) -> None:
    """The erasure of `ref` in a child process that kills itself at `point`."""
    child = subprocess.run(
        [sys.executable, "-c", CHILD, point, ref],
        env=settings_env(settings),
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stderr)


def _deletions(platform: Platform) -> list[DataDeletion]:
    with platform.sessions() as session:
        return list(
            session.execute(select(DataDeletion).where(DataDeletion.dataset_id == POLICE))
            .scalars()
            .all()
        )


def _current_number(platform: Platform) -> int:
    with platform.sessions() as session:
        info = storage_service.current_version(session, platform.storage, POLICE)
    assert info is not None
    return info.version


def _stored_keys(platform: Platform) -> set[str]:
    return {item.key for item in platform.storage.store.list(POLICE)}


def _checked(platform: Platform) -> None:
    """`together storage check`: every file of every version still held is in the store."""
    with platform.sessions() as session:
        assert platform.storage.check(session) == []


def _certified(platform: Platform, document: dict[str, Any]) -> dict[str, Any]:
    assert document["state"] == "certified"
    assert certificates.verify(document, _keys(platform)) == []
    body: dict[str, Any] = document["certificate"]
    return body


def test_killed_while_writing_the_previous_version_stays_and_a_rerun_erases(
    api: TestClient, platform: Platform, settings: Settings, police_token: str
) -> None:
    rows = _loaded(api, police_token)
    ref = _a_suspect(rows)["suspect_nominal_ref"]
    held = sum(1 for row in rows if row["suspect_nominal_ref"] == ref)
    assert _person_rows(platform, ref) == held > 0
    versions = [v.version for v in _versions(platform)]
    stored = _stored_keys(platform)

    _killed_while(settings, "writing", ref)

    # Nothing changed for a reader, and nothing was recorded.
    assert [v.version for v in _versions(platform)] == versions
    assert _current_number(platform) == versions[-1]
    assert _person_rows(platform, ref) == held
    assert _current(platform).num_rows == len(rows)
    assert _deletions(platform) == []
    # The one file it stored belongs to no version; `together storage sweep` removes it.
    (orphan,) = _stored_keys(platform) - stored
    with platform.sessions() as session:
        assert platform.storage.sweep_orphans(session, older_than_seconds=0) == [orphan]
    _checked(platform)

    # Rerunning completes it.
    body = _certified(
        platform, governance.erase(platform.governance, LEAD, CONTEXT, POLICE, _erasure(ref))
    )
    assert body["kind"] == "erasure" and body["rows_removed"] == held
    assert body["from_version"] == versions[-1]
    assert _person_rows(platform, ref) == 0
    assert _current(platform).num_rows == len(rows) - held
    assert body["files_deleted"]
    assert not any(_held(platform, item["key"]) for item in body["files_deleted"])
    (deletion,) = _deletions(platform)
    assert deletion.id == body["certificate_id"]
    _checked(platform)


def test_killed_while_deleting_the_rows_are_gone_and_a_rerun_finishes_and_certifies(
    api: TestClient, platform: Platform, settings: Settings, police_token: str
) -> None:
    rows = _loaded(api, police_token)
    ref = _a_suspect(rows)["suspect_nominal_ref"]
    held = sum(1 for row in rows if row["suspect_nominal_ref"] == ref)
    assert _person_rows(platform, ref) == held > 0
    before = [v.version for v in _versions(platform)]

    _killed_while(settings, "deleting", ref)

    # The switch committed: the new version without the person is current.
    versions = _versions(platform)
    assert [v.version for v in versions] == [*before, before[-1] + 1]
    assert versions[-1].mode == "erasure"
    assert _current_number(platform) == versions[-1].version
    assert _person_rows(platform, ref) == 0
    assert _current(platform).num_rows == len(rows) - held
    # The deletion waits, unsigned, with every file it lists still in the store.
    (pending,) = _deletions(platform)
    assert pending.state == "deleting"
    assert pending.signature is None and pending.body is None and pending.certified_at is None
    assert pending.rows_removed == held
    listed = [str(item["key"]) for item in pending.files]
    assert listed and all(_held(platform, key) for key in listed)
    assert all(v.purged_at is None for v in versions)
    _checked(platform)

    # Rerunning completes it: the pending deletion is finished first, then the search itself
    # finds nobody left.
    again = _certified(
        platform, governance.erase(platform.governance, LEAD, CONTEXT, POLICE, _erasure(ref))
    )
    assert again["certificate_id"] != pending.id
    assert again["rows_removed"] == 0 and again["files_deleted"] == []
    finished = next(
        item
        for item in governance.certificates_of(platform.governance, POLICE)
        if item["id"] == pending.id
    )
    body = _certified(platform, finished)
    assert body["rows_removed"] == held and body["case_reference"] == "SAR-CRASH-1"
    assert sorted(item["key"] for item in body["files_deleted"]) == sorted(listed)
    assert not any(_held(platform, key) for key in listed)
    purged = {v.version for v in _versions(platform) if v.purged_at is not None}
    assert purged == set(pending.versions) == set(body["versions_deleted"])
    assert versions[-1].version not in purged
    assert body["audit_seq_start"] < body["audit_seq_end"] < again["audit_seq_start"]
    _checked(platform)
