"""People who sign in to the review pages: local accounts and OpenID Connect accounts.

Partner systems are `clients` (client credentials); people are `users`. A local account holds
an Argon2id password hash; an account from an organisation's OpenID Connect provider holds the
provider's subject instead. Either way the organisation and role come from this table, never
from what the browser or the provider says at sign-in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.identity import web_sessions
from services.identity.models import User
from services.identity.schemas import Principal, RoleGrant
from services.identity.secrets import hash_secret, verify_secret
from services.kit.clock import utcnow
from services.kit.errors import BadRequest, NotFound
from services.kit.ids import new_id
from services.kit.partnership import require_organisation

# Roles a person may hold on the review pages.
PERSON_ROLES = ("ig_lead", "admin")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{1,99}$")
MIN_PASSWORD_LENGTH = 12
ACTOR_PREFIX = "user:"


@dataclass(frozen=True)
class Person:
    username: str
    organisation: str
    role: str

    @property
    def actor(self) -> str:
        return ACTOR_PREFIX + self.username

    def principal(self) -> Principal:
        return Principal(
            client_id=self.actor,
            name=self.username,
            organisation=self.organisation,
            grants=(RoleGrant(self.role),),
        )


def _person(user: User) -> Person:
    return Person(user.username, user.organisation, user.role)


def create_user(
    session: Session,
    *,
    username: str,
    organisation: str,
    role: str,
    password: str | None = None,
) -> Person:
    """A local account (with a password) or, without one, an account that signs in only through
    the organisation's OpenID Connect provider."""
    if not USERNAME.match(username):
        raise BadRequest("a username is 2 to 100 letters, digits, '.', '_', '@' or '-'")
    require_organisation(organisation)
    if role not in PERSON_ROLES:
        raise BadRequest(f"role must be one of {', '.join(PERSON_ROLES)}")
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequest(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    if session.execute(select(User.id).where(User.username == username)).first() is not None:
        raise BadRequest(f"user {username!r} exists")
    user = User(
        id=new_id(),
        username=username,
        organisation=organisation,
        role=role,
        password_hash=hash_secret(password) if password is not None else None,
        disabled=False,
        created_at=utcnow(),
    )
    session.add(user)
    session.flush()
    return _person(user)


def list_users(session: Session, organisation: str | None = None) -> list[dict[str, Any]]:
    statement = select(User).order_by(User.organisation, User.username)
    if organisation is not None:
        statement = statement.where(User.organisation == organisation)
    return [
        {
            "username": u.username,
            "organisation": u.organisation,
            "role": u.role,
            "sign_in": "local" if u.password_hash else "oidc",
            "disabled": u.disabled,
            "created_at": u.created_at.isoformat(),
        }
        for u in session.scalars(statement)
    ]


def disable_user(session: Session, username: str) -> Person:
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    if user is None:
        raise NotFound(f"no user {username!r}")
    user.disabled = True
    user.disabled_at = utcnow()
    # Its page sessions end in the same transaction: a copied cookie is worthless at once.
    web_sessions.end_sessions_of(session, username)
    session.flush()
    return _person(user)


def verify_password(session: Session, username: str, password: str) -> Person | None:
    """The person, when the password is right and the account active; the same cost otherwise."""
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    ok = verify_secret(user.password_hash if user is not None else None, password)
    if not ok or user is None or user.disabled:
        return None
    return _person(user)


def active_person(session: Session, username: str) -> Person | None:
    """Looked up on every page so that disabling an account takes effect at once."""
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    if user is None or user.disabled:
        return None
    return _person(user)


def person_for_oidc(session: Session, username: str, organisation: str) -> Person | None:
    """An active account without a password, of the organisation the provider vouches for."""
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    if user is None or user.disabled or user.password_hash is not None:
        return None
    if user.organisation != organisation:
        return None
    return _person(user)
