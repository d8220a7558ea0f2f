"""What the administration use cases work with, wired once per process by `services.platform`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from services.audit.checkpoints import CheckpointSigner
from services.authz.enforcer import PolicyEngine
from services.identity.tokens import TokenService
from services.storage.service import Storage


@dataclass(frozen=True)
class AdminDeps:
    sessions: sessionmaker[Session]
    policy: PolicyEngine
    tokens: TokenService
    storage: Storage
    audit_signer: CheckpointSigner
    # Failed sign-ins to the review pages that lock an account, and over how long.
    lockout_attempts: int
    lockout_seconds: int
