"""A/B routing follows the variants' configured models (`ab_testing.variants[].model`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import HTTPException

from analytics.assignment import assign_from_settings
from assistant.service import Assistant
from core.settings import ABTestingSettings, Settings, VariantSettings

USERS = [f"u{i}" for i in range(200)]


def assistant(by_spec: dict, variants: tuple[VariantSettings, ...] | None = None) -> Assistant:
    ab = ABTestingSettings() if variants is None else ABTestingSettings(variants=variants)
    settings = Settings(ab_testing=ab)
    return Assistant(settings, SimpleNamespace(by_spec=by_spec), client=None)  # route() needs only the pool


def version(v: str) -> SimpleNamespace:
    return SimpleNamespace(version=v)


def test_default_variants_send_treatment_users_to_the_candidate():
    a = assistant({"serving": version("v1"), "candidate": version("v2")})
    routed = {u: a.route(u) for u in USERS}
    for user, (policy, experiment, variant) in routed.items():
        assert variant == assign_from_settings(a.settings.ab_testing, user)
        assert policy.version == ("v1" if variant == "control" else "v2")
        assert experiment == "policy-ab:v2"
    assert {p.version for p, _, _ in routed.values()} == {"v1", "v2"}


def test_without_a_candidate_everyone_gets_serving_outside_any_experiment():
    a = assistant({"serving": version("v1"), "candidate": None})
    assert {(p.version, e, v) for p, e, v in (a.route(u) for u in USERS)} == {("v1", None, None)}


def test_a_variant_naming_a_version_serves_that_version():
    variants = (VariantSettings(name="control", model="serving"), VariantSettings(name="old", model="v0"), VariantSettings(name="new", model="candidate"))
    a = assistant({"serving": version("v1"), "v0": version("v0"), "candidate": version("v2")}, variants)
    served = {v: p.version for p, _, v in (a.route(u) for u in USERS)}
    assert served == {"control": "v1", "old": "v0", "new": "v2"}
    assert a.route("u1")[1] == "policy-ab:v0+v2"


def test_no_serving_version_is_a_503():
    with pytest.raises(HTTPException) as err:
        assistant({"serving": None, "candidate": None}).route("u1")
    assert err.value.status_code == 503
