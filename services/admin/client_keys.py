"""Administration of how clients authenticate: registering a client's public key (it then signs
assertions, `private_key_jwt`, and has no secret any more) and lifting a lockout of the token
endpoint before it lapses. Both audited."""

from __future__ import annotations

import hashlib

from services.admin.deps import AdminDeps
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.identity import counters
from services.identity import service as identity_service
from services.kit.uow import audited


def register_key(deps: AdminDeps, ctx: RequestContext, client_id: str, jwk_text: str) -> str:
    """Give a client a public JWK in place of its secret; returns the key's SHA-256 (of its
    canonical JSON), which the event records. The secret stops working in the same commit."""
    with audited(deps.sessions, "registering a client key") as uow:
        principal, stored = identity_service.register_public_key(uow.session, client_id, jwk_text)
        fingerprint = hashlib.sha256(stored.encode()).hexdigest()
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.CLIENT_KEY_REGISTERED,
                    outcome=Outcome.SUCCESS,
                    resource_type="client",
                    resource=client_id,
                    resource_org=principal.organisation,
                    details={
                        "authentication": "private_key_jwt",
                        "key_sha256": fingerprint,
                        "secret": "revoked",
                    },
                ),
            )
        )
    return fingerprint


def lift_lockout(deps: AdminDeps, ctx: RequestContext, client_id: str) -> int:
    """Forget a client's failed authentications (it is no longer locked out); returns how
    many counter windows were cleared."""
    with audited(deps.sessions, "lifting a lockout") as uow:
        principal = identity_service.active_principal(uow.session, client_id)
        cleared = counters.clear(uow.session, counters.CLIENT_FAILURE, client_id)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.CLIENT_UNLOCKED,
                    outcome=Outcome.SUCCESS,
                    resource_type="client",
                    resource=client_id,
                    resource_org=principal.organisation if principal else None,
                    details={"windows": cleared},
                ),
            )
        )
    return cleared
