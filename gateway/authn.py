"""One authenticator for every credential: API keys by their prefix, anything else as an
OIDC bearer token when an identity provider is configured."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.auth import KEY_PREFIXES, MAX_TOKEN_LENGTH, ApiKeyAuthenticator, bearer_credential
from gateway.errors import UnauthenticatedError
from gateway.values import Principal

if TYPE_CHECKING:  # PyJWT is imported only where tokens are configured
    from gateway.jwt_auth import JwtAuthenticator


class CredentialAuthenticator:
    def __init__(self, api_keys: ApiKeyAuthenticator, tokens: JwtAuthenticator | None) -> None:
        self._api_keys = api_keys
        self._tokens = tokens

    def authenticate(self, authorization: str | None) -> Principal:
        credential = bearer_credential(authorization, max_length=MAX_TOKEN_LENGTH + 64)
        if credential.startswith(KEY_PREFIXES):
            return self._api_keys.authenticate(authorization)
        if self._tokens is None:
            raise UnauthenticatedError("The credential is not an infergw API key.")
        return self._tokens.authenticate(authorization)

    def forget(self, key_digest: str) -> None:
        self._api_keys.forget(key_digest)
