"""Signed cookie sessions for the pages under /ig/, and the headers those pages carry.

The cookie holds a small JSON document (who signed in and when, the CSRF token, OpenID Connect
state while a sign-in is under way) and an HMAC-SHA256 over it under a key derived from the
platform's HMAC key. Nothing else in the application reads cookies: the API stays bearer-only.
Each response re-signs the document with the time of the request, so a session lapses after
`ig_session_idle_seconds` without a request, and after `ig_session_max_seconds` in any case.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from http.cookies import SimpleCookie
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.kit.keys import load_keys
from services.kit.settings import Environment, Settings

COOKIE = "together_ig"
PREFIX = "/ig"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_KEYS: dict[int, bytes] = {}


def session_key(settings: Settings) -> bytes:
    cached = _KEYS.get(id(settings))
    if cached is None:
        cached = hmac.new(
            load_keys(settings).hmac_key, b"together/ig-session/v1", hashlib.sha256
        ).digest()
        _KEYS[id(settings)] = cached
    return cached


def cookie_secure(settings: Settings) -> bool:
    if settings.ig_cookie_secure is not None:
        return settings.ig_cookie_secure
    return settings.env not in (Environment.development, Environment.test)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(key: bytes, data: dict[str, Any]) -> str:
    body = _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
    signature = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    return f"{body}.{signature}"


def decode(key: bytes, value: str, settings: Settings, now: float) -> dict[str, Any]:
    """The session document, or an empty one when unsigned, tampered with or expired."""
    body, _, signature = value.partition(".")
    expected = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not signature or not hmac.compare_digest(signature, expected):
        return {}
    try:
        data = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    seen, started = data.get("seen"), data.get("started")
    if not isinstance(seen, int | float) or not isinstance(started, int | float):
        return {}
    if now - seen > settings.ig_session_idle_seconds:
        return {}
    if now - started > settings.ig_session_max_seconds:
        return {}
    return data


def set_cookie_header(settings: Settings, value: str | None) -> str:
    attributes = [f"Path={PREFIX}/", "HttpOnly", "SameSite=Lax"]
    if cookie_secure(settings):
        attributes.append("Secure")
    if value is None:
        return "; ".join([f"{COOKIE}=", "Max-Age=0", *attributes])
    return "; ".join(
        [f"{COOKIE}={value}", f"Max-Age={settings.ig_session_idle_seconds}", *attributes]
    )


class WebSessionMiddleware:
    """Gives requests under /ig/ a `request.session`; adds the pages' security headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        settings: Settings = scope["app"].state.platform.settings
        key = session_key(settings)
        now = time.time()
        raw = None
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except Exception:  # noqa: S112 (a malformed cookie header is no session)
                    continue
                if COOKIE in jar:
                    raw = jar[COOKIE].value
        data = decode(key, raw, settings, now) if raw else {}
        had_session = raw is not None
        scope["session"] = data

        async def send_with_session(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                session: dict[str, Any] = scope["session"]
                if session:
                    session.setdefault("started", int(now))
                    session["seen"] = int(now)
                    headers.append("set-cookie", set_cookie_header(settings, encode(key, session)))
                elif had_session:
                    headers.append("set-cookie", set_cookie_header(settings, None))
                headers["content-security-policy"] = CONTENT_SECURITY_POLICY
                headers["cross-origin-opener-policy"] = "same-origin"
            await send(message)

        await self.app(scope, receive, send_with_session)
