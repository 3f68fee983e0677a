"""Who may reach an HTTP surface (core/access.py): the one check both apps make before they listen
(issue 33, finding 2: a host name is resolved before deciding), and keys told apart by number."""

from __future__ import annotations

import socket

import pytest
from pydantic import SecretStr

from core.access import ApiKeys, is_loopback, require_keys_beyond_loopback
from core.errors import ConfigError
from core.settings import Settings

RESOLVED = {
    "public.example": ["93.184.215.14"],
    "mixed.example": ["127.0.0.1", "10.1.2.3"],
    "loop.example": ["127.0.1.1", "::1"],
}


@pytest.fixture
def resolver(monkeypatch):
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host not in RESOLVED:
            return real(host, *args, **kwargs)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in RESOLVED[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("loop.example", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("public.example", False),
        ("mixed.example", False),  # one address beyond loopback is enough to be reached
        ("no-such-host.invalid", False),
    ],
)
def test_a_host_is_loopback_only_when_every_address_it_resolves_to_is(resolver, host, loopback):
    assert is_loopback(host) is loopback


def test_the_assistant_and_the_sink_refuse_the_same_hosts(resolver):
    from analytics.dashboard import create_app

    for host in ("public.example", "0.0.0.0"):
        with pytest.raises(ConfigError, match="assistant.api_keys: none configured"):
            require_keys_beyond_loopback(host, ApiKeys(()), "assistant.api_keys")
        settings = Settings(clickhouse={"dashboard_host": host})
        with pytest.raises(ConfigError, match="clickhouse.dashboard_keys: none configured"):
            create_app(None, settings)  # type: ignore[arg-type]  # refused before the warehouse is touched
    require_keys_beyond_loopback("public.example", ApiKeys((SecretStr("k"),)), "assistant.api_keys")


def test_keys_are_told_apart_by_number_never_by_text():
    keys = ApiKeys((SecretStr("sk-a"), SecretStr("sk-b")))
    assert [keys.which(c) for c in ("sk-a", "sk-b", "sk-c", None, "\ud800")] == [0, 1, None, None, None]
    assert keys.matches("sk-b") and not keys.matches("nope")
