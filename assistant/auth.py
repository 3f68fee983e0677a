"""Who may call the API: Bearer API keys (`assistant.api_keys`), compared in constant time.

With no key configured the API is open (a local or demo deployment); with keys, a request
without one, or with a wrong one, is a 401. Feedback also accepts an interaction's feedback
token in place of a key (assistant/feedback.py), so a browser needs no credentials.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from fastapi import HTTPException, Request
from pydantic import SecretStr

WWW_AUTHENTICATE = {"WWW-Authenticate": "Bearer"}


def bearer(request: Request) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header, if there is one."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None


class ApiKeys:
    def __init__(self, keys: Iterable[SecretStr]):
        self._keys = [k.get_secret_value().encode() for k in keys]

    @property
    def open(self) -> bool:
        return not self._keys

    def matches(self, credential: str | None) -> bool:
        if credential is None:
            return False
        given = credential.encode()
        # Every key is compared, so the time taken says nothing about which one nearly matched.
        return sum(hmac.compare_digest(given, key) for key in self._keys) > 0

    def require(self, request: Request) -> None:
        """FastAPI dependency: a 401 unless the API is open or the request's Bearer key is one of ours."""
        if self.open:
            return
        credential = bearer(request)
        if credential is None:
            raise HTTPException(401, "missing API key: send `Authorization: Bearer <key>`", headers=WWW_AUTHENTICATE)
        if not self.matches(credential):
            raise HTTPException(401, "invalid API key", headers=WWW_AUTHENTICATE)
