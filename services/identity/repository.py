from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from services.identity.models import Client, ClientRole


def clients_statement() -> Select[Client]:
    return select(Client).order_by(Client.created_at, Client.client_id)


def get_by_client_id(session: Session, client_id: str) -> Client | None:
    return session.execute(select(Client).where(Client.client_id == client_id)).scalar_one_or_none()


def principal_rows(session: Session, client_id: str) -> list[Any]:
    """A client and its roles in one query (this runs on every authenticated request)."""
    statement = (
        select(
            Client.name,
            Client.organisation,
            Client.disabled,
            ClientRole.role,
            ClientRole.area,
            ClientRole.expires_at,
        )
        .outerjoin(ClientRole, ClientRole.client_pk == Client.id)
        .where(Client.client_id == client_id)
    )
    return list(session.execute(statement).all())


def list_clients(session: Session, organisation: str | None = None) -> list[Client]:
    statement = clients_statement()
    if organisation is not None:
        statement = statement.where(Client.organisation == organisation)
    return list(session.execute(statement).scalars())


def expiring_rows(
    session: Session, before: datetime, organisation: str | None = None
) -> list[tuple[Client, ClientRole]]:
    """Role assignments still in force that end before `before`, soonest first."""
    statement = (
        select(Client, ClientRole)
        .join(ClientRole, ClientRole.client_pk == Client.id)
        .where(ClientRole.expires_at.is_not(None), ClientRole.expires_at < before)
        .order_by(ClientRole.expires_at, Client.client_id, ClientRole.role, ClientRole.area)
    )
    if organisation is not None:
        statement = statement.where(Client.organisation == organisation)
    return [(row[0], row[1]) for row in session.execute(statement).all()]
