from __future__ import annotations

import secrets
import uuid


def new_id() -> str:
    return str(uuid.uuid4())


def new_client_id() -> str:
    return "tgc_" + secrets.token_hex(12)


def new_secret() -> str:
    return secrets.token_urlsafe(32)
