from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.kit.clock import utcnow


@dataclass(frozen=True)
class RoleGrant:
    role: str
    area: str | None = None
    # The end of a time-bound grant (UTC); None = no end. Part of equality, so a changed expiry
    # is a changed grant (and, for a role needing a second person, one an IG lead approves).
    expires_at: datetime | None = None

    def live(self, at: datetime) -> bool:
        return self.expires_at is None or at < self.expires_at


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, resolved from the platform's own registry (never from a token).

    `grants` holds every assignment, expired ones too: a principal may be cached across an
    expiry, so what it may do is filtered by the clock at each use (`live_grants`, `roles`).
    """

    client_id: str
    name: str
    organisation: str
    grants: tuple[RoleGrant, ...] = field(default_factory=tuple)

    @property
    def live_grants(self) -> tuple[RoleGrant, ...]:
        if all(grant.expires_at is None for grant in self.grants):
            return self.grants
        now = utcnow()
        return tuple(grant for grant in self.grants if grant.live(now))

    @property
    def roles(self) -> list[str]:
        return sorted({grant.role for grant in self.live_grants})
