"""The audit chain: events insert without a lock; the sealer chains them; tampering shows."""

from __future__ import annotations

import threading
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import text

from gateway.platform import Platform
from services.audit import service as audit_service
from tests.conftest import ClientCredentials


def test_sealed_chain_verifies_and_detects_a_changed_event(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
) -> None:
    token = token_for(make_client())

    def read() -> None:
        for _ in range(10):
            api.get("/v1/contracts", headers={"Authorization": "Bearer nonsense"})

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert token
    sealed = audit_service.seal_all(platform.sessions)
    assert sealed >= 41
    with platform.sessions() as session:
        check = audit_service.verify_chain(session)
    assert check.ok and check.unsealed == 0 and check.checked == sealed
    assert audit_service.seal_all(platform.sessions) == 0

    # An operator with owner rights edits an event behind the triggers: the chain shows it.
    with platform.engine.begin() as connection:
        if platform.engine.dialect.name == "sqlite":
            connection.execute(text("DROP TRIGGER audit_events_no_update"))
        else:
            connection.execute(
                text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change")
            )
        connection.execute(
            text(
                "UPDATE audit_events SET canonical = replace(canonical, 'denied', 'success') "
                "WHERE seq = (SELECT event_seq FROM audit_chain WHERE leaf_index = 7)"
            )
        )
    with platform.sessions() as session:
        check = audit_service.verify_chain(session)
    assert not check.ok
    assert check.first_bad_leaf == 7
    assert check.reason == "event content changed"


def test_chain_links_are_append_only(api: TestClient, platform: Platform) -> None:
    api.get("/v1/contracts")
    audit_service.seal_all(platform.sessions)
    for statement in ("UPDATE audit_chain SET hash = 'x'", "DELETE FROM audit_chain"):
        try:
            with platform.engine.begin() as connection:
                connection.execute(text(statement))
        except Exception as exc:
            assert "append-only" in str(exc)
        else:
            raise AssertionError(f"{statement} was allowed")
