"""The closed catalogue of audit events. Recording an action not listed here is a bug."""

from __future__ import annotations

from enum import StrEnum


class AuditAction(StrEnum):
    # identity
    TOKEN_ISSUED = "token.issued"  # noqa: S105 (an event name, not a secret)
    TOKEN_REFUSED = "token.refused"  # noqa: S105  # bad client credentials at the token endpoint
    AUTHENTICATION_FAILED = "authentication.failed"  # a bearer token was missing or invalid
    # Refusals counted in closed windows rather than audited one by one; `details.action` names
    # the refused action (token.refused, authentication.failed...).
    AUTHENTICATION_REFUSALS_SUMMARISED = "authentication.refusals_summarised"
    CLIENT_CREATED = "client.created"
    CLIENT_DISABLED = "client.disabled"
    CLIENT_ROLES_CHANGED = "client.roles_changed"  # roles changed at once (no second person)
    # Roles that need a second person (services/admin/grants.py): the resource is the grantee,
    # `resource_org` its organisation, so that organisation's IG leads see each step.
    GRANT_REQUESTED = "grant.requested"
    GRANT_APPROVED = "grant.approved"
    GRANT_REFUSED = "grant.refused"
    GRANT_EXPIRING_LISTED = "grant.expiring_listed"  # time-bound role grants ending soon
    CLIENT_KEY_REGISTERED = "client.key_registered"  # a public key replaced the client's secret
    # The failure that locks a client out of the token endpoint (outcome denied): the resource is
    # the claimed client, `resource_org` its organisation when it exists.
    CLIENT_LOCKED_OUT = "client.locked_out"
    CLIENT_UNLOCKED = "client.unlocked"  # an administrator lifted a lockout before it lapsed
    CLIENTS_LISTED = "client.listed"
    # data encryption keys (`together keys rotate|retire`): resource is the key id
    DATA_KEY_ROTATED = "key.rotated"
    DATA_KEY_RETIRED = "key.retired"
    # access control
    ACCESS_DENIED = "access.denied"
    # ingestion
    DATASET_INGESTED = "dataset.ingested"
    DATASET_REJECTED = "dataset.rejected"
    UPLOAD_REPLAYED = "upload.replayed"
    UPLOAD_VIEWED = "upload.viewed"
    UPLOADS_LISTED = "upload.listed"  # a client's own uploads, one page
    DATASET_VIEWED = "dataset.viewed"  # a dataset's contract and current version
    # contract lifecycle (services/lifecycle): the resource is the dataset, `resource_org` its
    # owner; details name the contract version and its content hash.
    CONTRACT_LOADED = "contract.loaded"  # a new or changed file recorded (draft, or installed)
    CONTRACT_SIGNED_OFF = "contract.signed_off"  # one IG lead's sign-off of a draft
    CONTRACT_APPROVED = "contract.approved"  # the second sign-off: the draft is approved
    CONTRACT_ACTIVATED = "contract.activated"  # the owner's activation; the previous retires
    # data governance (services/retention): the resource is the dataset, `resource_org` its
    # owner. A deletion starts (its new version current, the files to delete listed) and is
    # certified when every file is gone; a withdrawal is requested, then confirmed or refused.
    DATASET_WITHDRAWAL_REQUESTED = "dataset.withdrawal_requested"
    DATASET_WITHDRAWAL_REFUSED = "dataset.withdrawal_refused"
    DELETION_STARTED = "deletion.started"
    DELETION_CERTIFIED = "deletion.certified"
    DELETIONS_LISTED = "deletion.listed"  # a dataset's certificates were read
    RETENTION_CHECKED = "retention.checked"  # a dry run: what a retention run would remove
    SUBJECT_ACCESS = "subject_access.answered"  # an IG lead's subject access export
    # products
    PRODUCT_READ = "product.read"
    PRODUCT_REFUSED = "product.refused"  # a permitted reader's malformed request: nothing computed
    # A product sent as a file (CSV, Parquet, GeoJSON) after its read: the file's SHA-256, size
    # and rows, committed before its first byte leaves (security-tests T48).
    PRODUCT_EXPORTED = "product.exported"
    ACCESS_EXPLAINED = "access.explained"
    QUOTA_EXCEEDED = "quota.exceeded"  # a Level 3 read refused: the daily quota is used up
    ASSESSMENT_RECORDED = "assessment.recorded"  # a RAG grading of a habitual knife carrier
    # information-governance review (API and web pages)
    AUDIT_QUERIED = "audit.queried"
    AUDIT_PERSON_HISTORY = "audit.person_history"
    AUDIT_ALERTS_VIEWED = "audit.alerts_viewed"
    AUDIT_ALERT_REVIEWED = "audit.alert_reviewed"
    IG_SIGNED_IN = "ig.signed_in"
    IG_SIGN_IN_FAILED = "ig.sign_in_failed"
    IG_SIGNED_OUT = "ig.signed_out"
    IG_REQUEST_REFUSED = "ig.request_refused"  # a form without a valid CSRF token
    USER_CREATED = "user.created"
    USER_DISABLED = "user.disabled"
    USERS_LISTED = "user.listed"
    # the audit trail itself
    AUDIT_EXPORTED = "audit.exported"
    AUDIT_CHECKPOINTS_LISTED = "audit.checkpoints_listed"
    AUDIT_CONSISTENCY_PROVED = "audit.consistency_proved"  # a proof between two tree sizes
    # Delta Sharing
    SHARING_PROFILE_ISSUED = "sharing.profile_issued"  # a profile (and its token) was issued
    SHARING_QUERIED = "sharing.queried"  # a recipient's query: the file URLs it was given
    SHARING_FILE_READ = "sharing.file_read"  # bytes of a published table's file were sent


class Outcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    REJECTED = "rejected"
    ERROR = "error"
