"""How Lockbox proves itself to the EHR: a static bearer token, or SMART Backend Services (a client-credentials
grant whose client authenticates with a JWT it signs, RFC 7523 / SMART App Launch "backend services").

httpx.Auth carries the flow; PyJWT signs the assertion. The token is cached until shortly before it expires
and fetched again once when the EHR answers 401 (a token revoked early).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, Generator
from pathlib import Path
from typing import Any

import httpx
import jwt

from lockbox.config import Settings
from lockbox.fhir.exceptions import FhirNotConfigured, FhirUnavailable

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Renew this long before the token's stated expiry, so a request never carries a token about to lapse.
EARLY_RENEW_S = 30
# SMART asks for assertions valid at most five minutes.
ASSERTION_LIFETIME_S = 300


class BearerAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services: POST a signed client assertion to the token endpoint, use the access token."""

    def __init__(self, *, token_url: str, client_id: str, private_key: str, alg: str, scope: str,
                 key_id: str | None = None) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.private_key = private_key
        self.alg = alg
        self.scope = scope
        self.key_id = key_id
        self._token: str | None = None
        self._expires_at = 0.0

    def client_assertion(self) -> str:
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.token_url, "iat": now,
                  "exp": now + ASSERTION_LIFETIME_S, "jti": uuid.uuid4().hex}
        headers: dict[str, Any] = {"typ": "JWT"}
        if self.key_id:
            headers["kid"] = self.key_id
        return jwt.encode(claims, self.private_key, algorithm=self.alg, headers=headers)

    def _token_request(self) -> httpx.Request:
        return httpx.Request("POST", self.token_url, data={
            "grant_type": "client_credentials", "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": self.client_assertion()},
            headers={"Accept": "application/json"})

    def _take(self, response: httpx.Response) -> None:
        if response.status_code != 200:
            # The token endpoint's body may explain, but it is the EHR's text: keep the status only.
            raise FhirUnavailable(f"The EHR's token endpoint refused Lockbox (HTTP {response.status_code}).")
        try:
            body = response.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise FhirUnavailable("The EHR's token endpoint answered without an access token.") from None
        if not isinstance(token, str) or not token:
            raise FhirUnavailable("The EHR's token endpoint answered without an access token.")
        self._token = token
        self._expires_at = time.monotonic() + max(0.0, lifetime - EARLY_RENEW_S)

    def _fresh(self) -> bool:
        return self._token is not None and time.monotonic() < self._expires_at

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise NotImplementedError("the FHIR client is asynchronous")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        # Overriding the async flow means reading the token endpoint's answer ourselves.
        if not self._fresh():
            answer = yield self._token_request()
            await answer.aread()
            self._take(answer)
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            self._token = None
            answer = yield self._token_request()
            await answer.aread()
            self._take(answer)
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request


def auth_for(settings: Settings) -> httpx.Auth | None:
    if settings.fhir_auth == "none":
        return None
    if settings.fhir_auth == "bearer":
        if not settings.fhir_bearer_token:
            raise FhirNotConfigured("LOCKBOX_FHIR_AUTH=bearer needs LOCKBOX_FHIR_BEARER_TOKEN.")
        return BearerAuth(settings.fhir_bearer_token)
    missing = [name for name, value in (("LOCKBOX_FHIR_TOKEN_URL", settings.fhir_token_url),
                                        ("LOCKBOX_FHIR_CLIENT_ID", settings.fhir_client_id),
                                        ("LOCKBOX_FHIR_PRIVATE_KEY_FILE", settings.fhir_private_key_file))
               if not value]
    if missing:
        raise FhirNotConfigured(f"LOCKBOX_FHIR_AUTH=smart needs {', '.join(missing)}.")
    key = Path(str(settings.fhir_private_key_file)).read_text()
    return SmartBackendAuth(token_url=str(settings.fhir_token_url), client_id=str(settings.fhir_client_id),
                            private_key=key, alg=settings.fhir_jwt_alg, scope=settings.fhir_scope,
                            key_id=settings.fhir_key_id)
