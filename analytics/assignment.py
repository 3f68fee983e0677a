"""Deterministic A/B assignment: the same (salt, user) lands in the same variant in every process.

`hash(user_id) % 2` changes with PYTHONHASHSEED, so workers disagree; here a stable
BLAKE2b fraction of (salt, user id) is cut into buckets proportional to the variant weights.
Changing the salt reshuffles every user, which is how a new experiment gets a fresh split.

    from analytics.assignment import assign
    assign("rlhf-ab-1", "u-42", [("control", 1.0), ("variant_a", 1.0)])  # -> "control" or "variant_a"
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from analytics.errors import ExperimentConfigError
from core.hashing import stable_fraction
from core.learning_settings import ABTestingSettings

# Namespaces the hash so assignment never correlates with other stable_fraction uses (sampling).
_NAMESPACE = "ab-assign"


def check_variants(variants: Sequence[tuple[str, float]]) -> None:
    names = [name for name, _ in variants]
    if len(names) < 1:
        raise ExperimentConfigError("an experiment needs at least one variant")
    if len(set(names)) != len(names):
        raise ExperimentConfigError(f"variant names must be distinct, got {names}")
    bad = [(name, w) for name, w in variants if not w > 0]
    if bad:
        raise ExperimentConfigError(f"variant weights must be positive, got {bad}")


def assign(salt: str, user_id: str, variants: Sequence[tuple[str, float]]) -> str:
    """The variant name for this user: bucket = stable_fraction(salt, user) against cumulative weights."""
    check_variants(variants)
    total = sum(w for _, w in variants)
    point = stable_fraction(_NAMESPACE, salt, user_id) * total
    for (name, _), edge in zip(variants, accumulate(w for _, w in variants), strict=True):
        if point < edge:
            return name
    return variants[-1][0]  # float rounding can leave point == total; the last bucket owns it


def variants_of(ab: ABTestingSettings) -> list[tuple[str, float]]:
    """The configured experiment's (name, weight) pairs, in config order."""
    return [(v.name, v.weight) for v in ab.variants]


def assign_from_settings(ab: ABTestingSettings, user_id: str) -> str:
    return assign(ab.salt, user_id, variants_of(ab))


def expected_shares(variants: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Each variant's intended traffic share (weights normalised), used by the SRM check."""
    check_variants(variants)
    total = sum(w for _, w in variants)
    return {name: w / total for name, w in variants}
