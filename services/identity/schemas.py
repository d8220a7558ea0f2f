from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RoleGrant:
    role: str
    area: str | None = None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, resolved from the platform's own registry (never from a token)."""

    client_id: str
    name: str
    organisation: str
    grants: tuple[RoleGrant, ...] = field(default_factory=tuple)

    @property
    def roles(self) -> list[str]:
        return sorted({grant.role for grant in self.grants})
