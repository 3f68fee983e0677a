"""Who may call an HTTP surface: Bearer keys, compared in constant time. The assistant's API
(`assistant.api_keys`) and the sink's dashboard and `/sql` (`clickhouse.dashboard_keys`) use it.

With no key configured a surface is open (a local or demo deployment); with keys, a request
without one, or with a wrong one, is a 401. The assistant's feedback also accepts an interaction's
feedback token in place of a key (assistant/feedback.py), so a browser needs no credentials. A
surface bound beyond loopback must have keys (`require_keys_beyond_loopback`).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

from fastapi import HTTPException, Request
from pydantic import SecretStr

from core.errors import ConfigError

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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def require_keys_beyond_loopback(host: str, keys: ApiKeys, setting: str) -> None:
    """Refuse to serve an open surface where others can reach it: ConfigError naming the setting."""
    if keys.open and not is_loopback(host):
        raise ConfigError(
            f"{setting}: none configured, but the server would listen on {host}, beyond loopback; "
            "configure a key (as a secret, e.g. in the environment) or listen on 127.0.0.1"
        )
