"""Principals: creating, listing, disabling and authenticating clients."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from services.identity import assertions, repository
from services.identity.models import Client, ClientRole
from services.identity.schemas import Principal, RoleGrant
from services.identity.secrets import hash_secret, verify_secret
from services.kit.clock import utcnow
from services.kit.errors import BadRequest, NotFound
from services.kit.ids import new_client_id, new_id, new_secret
from services.kit.partnership import CSP_AREAS, require_organisation

# The secret hash of a client that authenticates with a key (private_key_jwt): not an Argon2
# hash, so no secret can ever match it.
NO_SECRET = "!private_key_jwt"  # noqa: S105 (a marker, not a secret)


@dataclass(frozen=True)
class CreatedClient:
    client_id: str
    # Empty for a client registered with a public key: it has no secret.
    client_secret: str
    principal: Principal


def to_principal(client: Client) -> Principal:
    grants = tuple(
        sorted(
            (RoleGrant(r.role, r.area, r.expires_at) for r in client.roles),
            key=lambda g: (g.role, g.area or ""),
        )
    )
    return Principal(
        client_id=client.client_id,
        name=client.name,
        organisation=client.organisation,
        grants=grants,
    )


def create_client(
    session: Session,
    *,
    name: str,
    organisation: str,
    grants: Iterable[RoleGrant],
    known_roles: Iterable[str],
    area_scoped_roles: Iterable[str] = (),
    public_jwk: str | None = None,
) -> CreatedClient:
    """A new client with a generated secret, or, given a public JWK (checked and stored
    canonical), one that authenticates with signed assertions and has no secret at all."""
    require_organisation(organisation)
    name = name.strip()
    if not name or len(name) > 200:
        raise BadRequest("name must be 1 to 200 characters")
    grant_list = check_grants(grants, known_roles, area_scoped_roles)
    secret: str | None = None
    if public_jwk is not None:
        try:
            public_jwk = assertions.public_jwk(public_jwk)
        except assertions.KeyRejected as exc:
            raise BadRequest(str(exc)) from exc
    else:
        secret = new_secret()
    client = Client(
        id=new_id(),
        client_id=new_client_id(),
        name=name,
        organisation=organisation,
        secret_hash=hash_secret(secret) if secret is not None else NO_SECRET,
        public_jwk=public_jwk,
        disabled=False,
        created_at=utcnow(),
    )
    client.roles = [
        ClientRole(role=g.role, area=g.area, expires_at=g.expires_at) for g in grant_list
    ]
    session.add(client)
    session.flush()
    return CreatedClient(client.client_id, secret or "", to_principal(client))


def expand_areas(areas: Iterable[str]) -> list[str | None]:
    """`all` stands for every CSP area; no areas at all means a grant without an area limit."""
    expanded: list[str | None] = []
    for area in areas:
        expanded.extend(CSP_AREAS if area == "all" else [area])
    return list(dict.fromkeys(expanded)) or [None]


def check_grants(
    grants: Iterable[RoleGrant], known_roles: Iterable[str], area_scoped_roles: Iterable[str]
) -> list[RoleGrant]:
    roles_allowed = set(known_roles)
    scoped = set(area_scoped_roles)
    grant_list = list(dict.fromkeys(grants))
    if not grant_list:
        raise BadRequest("at least one role is required")
    held = [(g.role, g.area) for g in grant_list]
    if len(set(held)) != len(held):
        raise BadRequest("a role is given twice for the same area (with different expiries)")
    for grant in grant_list:
        if grant.role not in roles_allowed:
            raise BadRequest(f"unknown role {grant.role!r}")
        if grant.area is not None and grant.area not in CSP_AREAS:
            raise BadRequest(f"unknown CSP area {grant.area!r}")
        if grant.role in scoped and grant.area is None:
            raise BadRequest(f"role {grant.role!r} must be limited to CSP areas (--area, or all)")
    return grant_list


def check_expiries(grants: Iterable[RoleGrant]) -> None:
    """Refuse a grant given now whose expiry is not in the future (held grants that have
    since expired are not re-checked: they simply grant nothing)."""
    now = utcnow()
    for grant in grants:
        if grant.expires_at is not None and grant.expires_at <= now:
            raise BadRequest(
                f"the expiry of role {grant.role!r} ({grant.expires_at.isoformat()}) "
                "is not in the future"
            )


def set_grants(
    session: Session,
    client_id: str,
    grants: Iterable[RoleGrant],
    known_roles: Iterable[str],
    area_scoped_roles: Iterable[str],
) -> tuple[Principal, Principal]:
    """Replace a client's role assignments; returns (before, after)."""
    client = repository.get_by_client_id(session, client_id)
    if client is None:
        raise NotFound(f"no client {client_id!r}")
    grant_list = check_grants(grants, known_roles, area_scoped_roles)
    before = to_principal(client)
    client.roles.clear()
    session.flush()
    client.roles.extend(
        ClientRole(role=g.role, area=g.area, expires_at=g.expires_at) for g in grant_list
    )
    session.flush()
    return before, to_principal(client)


def authenticate(session: Session, client_id: str, secret: str) -> Principal | None:
    client = repository.get_by_client_id(session, client_id)
    if not verify_secret(client.secret_hash if client else None, secret):
        return None
    if client is None or client.disabled:
        return None
    return to_principal(client)


@dataclass(frozen=True)
class ClientCredentialsOnFile:
    """What the token endpoint checks a client's credentials against."""

    secret_hash: str
    public_jwk: str | None
    # None when the client is disabled.
    principal: Principal | None


def client_for_authentication(session: Session, client_id: str) -> ClientCredentialsOnFile | None:
    client = repository.get_by_client_id(session, client_id)
    if client is None:
        return None
    return ClientCredentialsOnFile(
        client.secret_hash, client.public_jwk, None if client.disabled else to_principal(client)
    )


def active_principal(session: Session, client_id: str) -> Principal | None:
    """Looked up on every request so that disabling a client takes effect at once."""
    rows = repository.principal_rows(session, client_id)
    if not rows or rows[0].disabled:
        return None
    grants = sorted(
        {RoleGrant(row.role, row.area, row.expires_at) for row in rows if row.role is not None},
        key=lambda g: (g.role, g.area or ""),
    )
    return Principal(
        client_id=client_id,
        name=rows[0].name,
        organisation=rows[0].organisation,
        grants=tuple(grants),
    )


def disable_client(session: Session, client_id: str) -> Principal:
    client = repository.get_by_client_id(session, client_id)
    if client is None:
        raise NotFound(f"no client {client_id!r}")
    if not client.disabled:
        client.disabled = True
        client.disabled_at = utcnow()
        session.flush()
    return to_principal(client)


def register_public_key(session: Session, client_id: str, jwk_text: str) -> tuple[Principal, str]:
    """The client authenticates with assertions signed by this key from now on; its secret
    hash is replaced by NO_SECRET, so the old secret stops working at once."""
    client = repository.get_by_client_id(session, client_id)
    if client is None:
        raise NotFound(f"no client {client_id!r}")
    try:
        stored = assertions.public_jwk(jwk_text)
    except assertions.KeyRejected as exc:
        raise BadRequest(str(exc)) from exc
    client.public_jwk = stored
    client.secret_hash = NO_SECRET
    session.flush()
    return to_principal(client), stored


def list_clients(session: Session, organisation: str | None = None) -> list[Client]:
    return repository.list_clients(session, organisation)


def lookup_active_principal(sessions: sessionmaker[Session], client_id: str) -> Principal | None:
    """`active_principal` in a read of its own: what each request's authentication needs."""
    with sessions() as session:
        return active_principal(session, client_id)
