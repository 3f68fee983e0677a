"""Who may call an HTTP surface: Bearer keys, compared in constant time. The assistant's API
(`assistant.api_keys`) and the sink's dashboard and `/sql` (`clickhouse.dashboard_keys`) use it.

With no key configured a surface is open (a local or demo deployment); with keys, a request
without one, or with a wrong one, is a 401. The assistant's feedback also accepts an interaction's
feedback token in place of a key (assistant/feedback.py), so a browser needs no credentials. A
surface bound beyond loopback must have keys (`require_keys_beyond_loopback`, which the assistant's
`rlhf serve` and the sink's dashboard both call before they listen): a host name counts as loopback
only when every address it resolves to is one.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Iterable

from fastapi import HTTPException, Request
from pydantic import SecretStr

from core.errors import ConfigError

WWW_AUTHENTICATE = {"WWW-Authenticate": "Bearer"}


def bearer(request: Request) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header, if there is one."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None


def bearer_of_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """`bearer` for an ASGI middleware, from the scope's raw headers."""
    value = next((v for k, v in headers if k.lower() == b"authorization"), b"").decode("latin-1")
    scheme, _, credential = value.partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None


class ApiKeys:
    def __init__(self, keys: Iterable[SecretStr]):
        self._keys = [k.get_secret_value().encode() for k in keys]

    @property
    def open(self) -> bool:
        return not self._keys

    def matches(self, credential: str | None) -> bool:
        return self.which(credential) is not None

    def which(self, credential: str | None) -> int | None:
        """The number of the configured key `credential` is (None: none of them), so limits can count per key
        without holding its text."""
        if credential is None:
            return None
        given = credential.encode(errors="surrogatepass")
        # Every key is compared, so the time taken says nothing about which one nearly matched.
        hits = [n for n, key in enumerate(self._keys) if hmac.compare_digest(given, key)]
        return hits[0] if hits else None

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
    """Whether a server bound to `host` can be reached from this machine only: an address, or a name
    every address of which (as the resolver answers now) is a loopback one. A name that does not
    resolve, and the empty host (every interface), are not."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)} if host else set()
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(a).partition("%")[0]).is_loopback for a in addresses)


def require_keys_beyond_loopback(host: str, keys: ApiKeys, setting: str) -> None:
    """Refuse to serve an open surface where others can reach it: ConfigError naming the setting."""
    if keys.open and not is_loopback(host):
        raise ConfigError(
            f"{setting}: none configured, but the server would listen on {host}, beyond loopback; "
            "configure a key (as a secret, e.g. in the environment) or listen on 127.0.0.1"
        )
