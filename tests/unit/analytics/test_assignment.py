import json
import subprocess
import sys
from collections import Counter

import pytest

from analytics.assignment import assign, assign_from_settings, expected_shares
from analytics.errors import ExperimentConfigError
from core.learning_settings import ABTestingSettings, VariantSettings

VARIANTS = [("control", 0.5), ("variant_a", 0.3), ("variant_b", 0.2)]
USERS = [f"user-{n}" for n in range(200)]


def test_same_user_same_variant_across_processes():
    code = (
        "import json, sys; from analytics.assignment import assign; "
        f"print(json.dumps([assign('salt-1', u, {VARIANTS!r}) for u in {USERS!r}]))"
    )
    outs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", code],
                env={"PYTHONHASHSEED": str(seed), "PATH": ""},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for seed in (0, 1, 12345)
    ]
    here = [assign("salt-1", u, VARIANTS) for u in USERS]
    assert outs == [here, here, here]
    assert set(here) == {"control", "variant_a", "variant_b"}


def test_split_matches_weights_within_one_percent_on_100k_users():
    counts = Counter(assign("salt-1", f"u{n}", VARIANTS) for n in range(100_000))
    for name, share in expected_shares(VARIANTS).items():
        assert abs(counts[name] / 100_000 - share) < 0.01, (name, counts[name])


def test_salt_reshuffles_and_weights_are_relative():
    a = [assign("salt-1", u, VARIANTS) for u in USERS]
    b = [assign("salt-2", u, VARIANTS) for u in USERS]
    assert a != b
    assert a == [assign("salt-1", u, [(n, w * 10) for n, w in VARIANTS]) for u in USERS]


def test_from_settings_uses_config_salt_and_weights():
    ab = ABTestingSettings(
        salt="s", variants=(VariantSettings(name="c", model="m1", weight=1), VariantSettings(name="t", model="m2", weight=3))
    )
    assert assign_from_settings(ab, "u-1") == assign("s", "u-1", [("c", 1.0), ("t", 3.0)])


@pytest.mark.parametrize("variants", [[], [("a", 1.0), ("a", 1.0)], [("a", 1.0), ("b", 0.0)]])
def test_bad_variants_raise(variants):
    with pytest.raises(ExperimentConfigError):
        assign("s", "u", variants)
