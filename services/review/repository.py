"""Queries of the review use cases that read the registries rather than the audit trail."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import literal, select, union_all
from sqlalchemy.orm import Session

from services.identity.accounts import ACTOR_PREFIX
from services.identity.models import Client, User


@dataclass(frozen=True)
class ActorName:
    """Who an audit actor id is, as the registry names them now (the event keeps the id)."""

    name: str
    organisation: str


def actor_names(session: Session, actors: Collection[str]) -> dict[str, ActorName]:
    """Names of API clients (by client id) and review accounts (`user:<name>`), one query."""
    accounts = {a[len(ACTOR_PREFIX) :] for a in actors if a.startswith(ACTOR_PREFIX)}
    clients = {a for a in actors if not a.startswith(ACTOR_PREFIX)}
    if not accounts and not clients:
        return {}
    statement = union_all(
        select(
            literal("client").label("kind"),
            Client.client_id.label("key"),
            Client.name.label("name"),
            Client.organisation.label("organisation"),
        ).where(Client.client_id.in_(sorted(clients))),
        select(
            literal("user").label("kind"),
            User.username.label("key"),
            User.username.label("name"),
            User.organisation.label("organisation"),
        ).where(User.username.in_(sorted(accounts))),
    )
    found: dict[str, ActorName] = {}
    for kind, key, name, organisation in session.execute(statement):
        actor = ACTOR_PREFIX + key if kind == "user" else key
        found[actor] = ActorName(name, organisation)
    return found
