"""Signing people in through their organisation's OpenID Connect provider (Authlib).

The provider proves who the person is; the platform's own registry says what they may do. An ID
token is accepted only when its organisation claim maps (by configuration) to an organisation,
and its username claim names an active account of that organisation made for OpenID Connect.
The authorisation-code flow keeps its state and nonce in the signed session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.kit.settings import Settings

PROVIDER = "organisation"


@dataclass(frozen=True)
class OidcIdentity:
    username: str | None
    organisation: str | None
    # Why the identity cannot sign in (None: it may, if the account exists).
    refusal: str | None = None


class OidcSignIn:
    def __init__(self, settings: Settings) -> None:
        # Imported here: only a deployment that configures a provider loads the HTTP client.
        from authlib.integrations.starlette_client import OAuth

        self.settings = settings
        self._oauth = OAuth()
        self._oauth.register(
            PROVIDER,
            server_metadata_url=settings.ig_oidc_metadata_url,
            client_id=settings.ig_oidc_client_id,
            client_secret=(
                settings.ig_oidc_client_secret.get_secret_value()
                if settings.ig_oidc_client_secret
                else None
            ),
            client_kwargs={"scope": "openid email profile"},
        )

    @property
    def _client(self) -> Any:
        return self._oauth.create_client(PROVIDER)

    async def redirect(self, request: Any, callback_url: str) -> Any:
        """A redirect to the provider's authorisation endpoint (state and nonce in the session)."""
        return await self._client.authorize_redirect(request, callback_url)

    async def identity(self, request: Any) -> OidcIdentity:
        """Exchange the code, validate the ID token, and map its claims."""
        from authlib.integrations.base_client import OAuthError

        try:
            token = await self._client.authorize_access_token(request)
        except OAuthError as exc:
            return OidcIdentity(None, None, f"oidc_{exc.error or 'error'}"[:60])
        claims: dict[str, Any] = dict(token.get("userinfo") or {})
        username = claims.get(self.settings.ig_oidc_username_claim)
        org_value = claims.get(self.settings.ig_oidc_org_claim)
        if not isinstance(username, str) or not username:
            return OidcIdentity(None, None, "oidc_no_username_claim")
        if not isinstance(org_value, str) or org_value not in self.settings.ig_oidc_org_map:
            return OidcIdentity(username, None, "oidc_organisation_not_mapped")
        return OidcIdentity(username, self.settings.ig_oidc_org_map[org_value])


def configured(settings: Settings) -> bool:
    return bool(
        settings.ig_oidc_metadata_url
        and settings.ig_oidc_client_id
        and settings.ig_oidc_client_secret
    )
