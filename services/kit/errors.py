"""Domain errors: a stable code and an HTTP status each. The gateway maps them to one JSON shape."""

from __future__ import annotations

from typing import Any


class TogetherError(Exception):
    code = "INTERNAL_ERROR"
    status = 500
    title = "Internal error"

    def __init__(self, detail: str | None = None, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra or {}


class NotAuthenticated(TogetherError):
    code = "NOT_AUTHENTICATED"
    status = 401
    title = "Authentication required"


class Forbidden(TogetherError):
    code = "FORBIDDEN"
    status = 403
    title = "Not permitted"


class AreaNotPermitted(Forbidden):
    """A read naming a CSP area outside the reader's areas.

    Clients see it as they always have, a 403 with the code ``FORBIDDEN``; the class lets the
    services tell it from other refusals, to audit it as one.
    """


class NotFound(TogetherError):
    code = "NOT_FOUND"
    status = 404
    title = "Not found"


class BadRequest(TogetherError):
    code = "BAD_REQUEST"
    status = 400
    title = "Bad request"


class QuotaExceeded(TogetherError):
    code = "QUOTA_EXCEEDED"
    status = 429
    title = "Daily quota of Level 3 reads reached"


class IdempotencyConflict(TogetherError):
    code = "IDEMPOTENCY_IN_FLIGHT"
    status = 409
    title = "A request with this Idempotency-Key is still being processed"


class IdempotencyMismatch(TogetherError):
    code = "IDEMPOTENCY_KEY_REUSED"
    status = 422
    title = "This Idempotency-Key was first used with a different request"


class PayloadTooLarge(TogetherError):
    code = "PAYLOAD_TOO_LARGE"
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(TogetherError):
    code = "UNSUPPORTED_MEDIA_TYPE"
    status = 415
    title = "Unsupported media type"


class ContractViolation(TogetherError):
    code = "CONTRACT_VIOLATION"
    status = 422
    title = "The upload does not meet the dataset's data contract"


class AuditUnavailable(TogetherError):
    code = "AUDIT_UNAVAILABLE"
    status = 503
    title = "The audit trail cannot be written; nothing was returned"


class ConfigurationError(TogetherError):
    code = "CONFIGURATION_ERROR"
    status = 500
    title = "Configuration error"


class StorageUnavailable(TogetherError):
    """The object store cannot be reached: the request may succeed unchanged later."""

    code = "STORAGE_UNAVAILABLE"
    status = 503
    title = "Storage unavailable"


class StoredVersionMissing(TogetherError):
    """A dataset version's object is not in the store although its metadata row names it."""

    code = "STORED_VERSION_MISSING"
    status = 503
    title = "Stored version missing"

    def __init__(self, dataset_id: str, version: int) -> None:
        super().__init__(
            f"the stored data of dataset {dataset_id!r} version {version} is missing; "
            "an operator must restore it (see `together storage check`)"
        )
        self.dataset_id = dataset_id
        self.version = version


class SourceWithdrawn(TogetherError):
    """A product needs a dataset its owner has withdrawn (every version deleted)."""

    code = "SOURCE_WITHDRAWN"
    status = 409
    title = "A source dataset was withdrawn"

    def __init__(self, dataset_ids: list[str]) -> None:
        names = ", ".join(sorted(dataset_ids))
        super().__init__(
            f"this needs {names}, which its owner has withdrawn; it answers again once the "
            "owner shares the dataset again"
        )
        self.dataset_ids = sorted(dataset_ids)
