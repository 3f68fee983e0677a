"""Stable hashing for decisions that must agree across processes and restarts.

Python's `hash()` is salted per process (PYTHONHASHSEED), so `hash(user_id) % 2` would assign
a user differently in every worker. Everything here uses BLAKE2b of the UTF-8 parts.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def stable_hash64(*parts: str) -> int:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def stable_fraction(*parts: str) -> float:
    """A number in [0, 1) that depends only on `parts`."""
    return stable_hash64(*parts) / _SCALE


def user_fingerprint(user_id: str) -> str:
    """What a model version records about whose data it learned from: a one-way digest, so a
    manifest names no user, yet `rlhf privacy forget USER` finds the versions that had theirs."""
    return hashlib.blake2b(f"user\x1f{user_id}".encode(), digest_size=16).hexdigest()
