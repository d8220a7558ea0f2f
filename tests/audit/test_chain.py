"""The audit chain: events insert without a lock; the sealer chains them; tampering shows."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from services.audit import chain as audit_chain
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.platform import Platform
from tests.fixtures.app import ClientCredentials


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
    sealed = audit_chain.seal_all(platform.sessions)
    assert sealed >= 41
    with platform.sessions() as session:
        check = audit_chain.verify_chain(session)
    assert check.ok and check.unsealed == 0 and check.checked == sealed
    assert audit_chain.seal_all(platform.sessions) == 0

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
        check = audit_chain.verify_chain(session)
    assert not check.ok
    assert check.first_bad_leaf == 7
    assert check.reason == "event content changed"


def test_chain_links_are_append_only(api: TestClient, platform: Platform) -> None:
    api.get("/v1/contracts")
    audit_chain.seal_all(platform.sessions)
    for statement in ("UPDATE audit_chain SET hash = 'x'", "DELETE FROM audit_chain"):
        try:
            with platform.engine.begin() as connection:
                connection.execute(text(statement))
        except Exception as exc:
            assert "append-only" in str(exc)
        else:
            raise AssertionError(f"{statement} was allowed")


def _late_event(platform: Platform, others: int, window: int) -> int:
    """Insert one event and hold its transaction open while `others` events commit and a
    bounded sealer pass seals them; then commit it late. Returns its seq."""
    if platform.engine.dialect.name != "postgresql":
        pytest.skip("two concurrent writers need PostgreSQL (SQLite serialises transactions)")
    late = platform.sessions()
    try:
        (held,) = audit_service.record_many(late, [_EVENT])  # seq taken, not committed
        _commit(platform, others)
        assert audit_chain.seal_all(platform.sessions, window=window) == others
        late.commit()
    finally:
        late.close()
    return held.seq


def _commit(platform: Platform, events: int) -> None:
    with platform.sessions() as session:
        audit_service.record_many(session, [_EVENT] * events)
        session.commit()


def _chain_and_leaf(platform: Platform, seq: int) -> tuple[audit_chain.ChainCheck, int]:
    with platform.sessions() as session:
        check = audit_chain.verify_chain(session)
        leaf = session.execute(
            text("SELECT leaf_index FROM audit_chain WHERE event_seq = :s"), {"s": seq}
        ).scalar_one()
    return check, leaf


_EVENT = (
    audit_service.RequestContext(actor="late", actor_org="vru"),
    audit_service.AuditRecord(action=AuditAction.PRODUCT_READ, outcome=Outcome.SUCCESS),
)


def test_a_late_commit_below_the_sealers_window_is_sealed_by_the_full_pass(
    platform: Platform,
) -> None:
    held = _late_event(platform, others=50, window=10)
    # Below the window: the bounded pass does not see it, the full pass seals it, late.
    assert audit_chain.seal_all(platform.sessions, window=10) == 0
    assert audit_chain.seal_all(platform.sessions) == 1
    check, leaf = _chain_and_leaf(platform, held)
    assert check.ok and check.unsealed == 0
    assert leaf == 50  # after the 50 that committed first


def test_a_late_commit_within_the_window_is_sealed_by_the_bounded_pass(
    platform: Platform,
) -> None:
    """Events above the chain's top are read as one range; one that commits late below the top
    (its seq was taken before others committed) is found by the window's count check."""
    held = _late_event(platform, others=5, window=1000)
    _commit(platform, 3)
    # One bounded pass seals the late one (first: it is the lowest seq) and the three new ones.
    assert audit_chain.seal_all(platform.sessions, window=1000, limit=2) == 4
    assert audit_chain.seal_all(platform.sessions, window=1000) == 0
    check, leaf = _chain_and_leaf(platform, held)
    assert check.ok and check.unsealed == 0
    assert leaf == 5
