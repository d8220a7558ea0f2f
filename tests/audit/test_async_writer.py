"""The event-loop audit writer (PostgreSQL): concurrent reads share a batch, each is committed
before its caller goes on, and a failed batch fails every read in it, then the next recovers."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, text

from services.audit.catalogue import AuditAction, Outcome
from services.audit.models import AuditEvent
from services.audit.service import AuditRecord, RequestContext
from services.platform import Platform


def _count(platform: Platform) -> int:
    with platform.sessions() as session:
        return int(session.execute(select(func.count()).select_from(AuditEvent)).scalar_one())


def _record(n: int) -> AuditRecord:
    return AuditRecord(
        action=AuditAction.PRODUCT_READ,
        outcome=Outcome.SUCCESS,
        resource_type="product",
        resource="sv-rates",
        level=1,
        parameters={"n": n},
        rows=14,
    )


def test_batches_commit_before_callers_go_on_and_failures_fail_them(platform: Platform) -> None:
    writer = platform.products.async_audit
    if writer is None:
        pytest.skip("the event-loop audit writer is for PostgreSQL (SQLite uses the committer)")
    ctx = RequestContext(actor="reader", actor_org="vru", actor_roles=["l1_reader"])
    before = _count(platform)

    async def many(count: int) -> list[BaseException | None]:
        results = await asyncio.gather(
            *(writer.record(ctx, _record(n)) for n in range(count)), return_exceptions=True
        )
        return [r if isinstance(r, BaseException) else None for r in results]

    async def scenario() -> None:
        assert await many(50) == [None] * 50
        assert _count(platform) == before + 50  # committed by the time the callers go on
        with platform.engine.begin() as connection:
            connection.execute(
                text(
                    "CREATE FUNCTION refuse_reads() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    "BEGIN RAISE EXCEPTION 'audit store unavailable'; END $$"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER refuse_reads BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_reads()"
                )
            )
        failed = await many(10)
        assert all(result is not None for result in failed)
        assert _count(platform) == before + 50  # nothing of the failed batch was kept
        with platform.engine.begin() as connection:
            connection.execute(text("DROP TRIGGER refuse_reads ON audit_events"))
        assert await many(5) == [None] * 5
        assert _count(platform) == before + 55
        await writer.close()

    asyncio.run(scenario())


def test_the_row_written_holds_exactly_what_its_canonical_form_says(platform: Platform) -> None:
    """The batch travels as JSON: every column, the timestamp to the microsecond and strings
    with quotes, escapes and non-ASCII, reads back as the event's canonical form states it."""
    import json
    from datetime import datetime

    writer = platform.products.async_audit
    if writer is None:
        pytest.skip("the event-loop audit writer is for PostgreSQL (SQLite uses the committer)")
    ctx = RequestContext(
        request_id='r"1\\',
        client_address="10.0.0.7",
        actor="reader",
        actor_org="vru",
        actor_roles=["l1_reader", "ig_lead"],
    )
    record = AuditRecord(
        action=AuditAction.PRODUCT_READ,
        outcome=Outcome.SUCCESS,
        resource_type="product",
        resource="sv-rates",
        level=1,
        purpose=None,
        case_reference="CASE/1",
        parameters={"area": 'Ch\u00e2teau "quoted"\n\t\u2028', "n": 2**40},
        rows=14,
        matched_rule="p, l1_reader, product, level1, read, allow",
        policy_version="v1",
        details={"sources": {"police.occurrences": 3}, "areas": None, "suppressed": False},
    )

    async def scenario() -> None:
        await asyncio.gather(*(writer.record(ctx, record) for _ in range(3)))
        await writer.close()

    asyncio.run(scenario())
    with platform.sessions() as session:
        events = (
            session.execute(select(AuditEvent).where(AuditEvent.request_id == ctx.request_id))
            .scalars()
            .all()
        )
        assert len(events) == 3
        for event in events:
            document = json.loads(event.canonical)
            for name, value in document.items():
                if name == "subjects":
                    assert value == []
                elif name == "occurred_at":
                    assert event.occurred_at == datetime.fromisoformat(value)
                else:
                    assert getattr(event, name) == value, name
