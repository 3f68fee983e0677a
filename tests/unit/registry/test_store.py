import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.errors import ModelLoadError
from registry.store import Manifest, ModelRegistry, RegistryError, version_for


def build(version, status="candidate", fail=False):
    def write(directory):
        (directory / "weights.bin").write_bytes(b"w" * 100)
        if fail:
            raise RuntimeError("crash mid-write")
        return Manifest(
            version=version, kind="policies", policy="assistant", status=status, trigger_id="t" * 20, parent_version="base"
        )

    return write


@pytest.fixture
def registry(tmp_path):
    reg = ModelRegistry(tmp_path)
    reg.register_base("assistant", "base", lambda d: (d / "weights.bin").write_bytes(b"base"))
    return reg


def test_publish_is_idempotent_per_version(registry):
    v = version_for("assistant", "trigger-1234567890abcdef")
    assert registry.publish("policies", v, build(v)) is not None
    assert registry.publish("policies", v, build(v)) is None
    assert [m.version for m in registry.versions("policies")] == ["base", v]
    assert (registry.path("policies", v) / "weights.bin").read_bytes() == b"w" * 100
    assert not any((registry.root / ".staging").iterdir())


def test_crash_mid_publish_leaves_nothing_loadable(registry):
    with pytest.raises(RuntimeError):
        registry.publish("policies", "v-crash", build("v-crash", fail=True))
    assert not registry.exists("policies", "v-crash")
    assert not any((registry.root / ".staging").iterdir())


def test_concurrent_publishers_make_one_version(registry):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: registry.publish("policies", "v1", build("v1")), range(8)))
    assert sum(r is not None for r in results) == 1


def test_rejected_candidate_never_serves(registry):
    registry.publish("policies", "bad", build("bad", status="rejected"))
    with pytest.raises(RegistryError, match="rejected"):
        registry.offer_candidate("assistant", "bad")
    with pytest.raises(RegistryError, match="rejected"):
        registry.promote("assistant", "bad")
    assert registry.candidate("assistant") is None and registry.serving("assistant") == "base"


def test_promote_and_rollback(registry):
    registry.publish("policies", "v1", build("v1"))
    registry.offer_candidate("assistant", "v1")
    assert registry.candidate("assistant") == "v1"
    registry.promote("assistant")
    assert registry.serving("assistant") == "v1" and registry.candidate("assistant") is None
    assert registry.manifest("policies", "v1").status == "promoted"
    assert registry.rollback("assistant") == "v1"
    assert registry.serving("assistant") == "base"
    assert registry.manifest("policies", "v1").status == "rolled_back"
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("assistant")


def test_rollback_drops_candidate_first(registry):
    registry.publish("policies", "v1", build("v1"))
    registry.offer_candidate("assistant", "v1")
    assert registry.rollback("assistant") == "v1"
    assert registry.serving("assistant") == "base" and registry.candidate("assistant") is None


def test_missing_or_corrupt_manifest_names_path(registry):
    with pytest.raises(ModelLoadError, match="nope"):
        registry.manifest("policies", "nope")
    (registry.path("policies", "base") / "manifest.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupt manifest"):
        registry.manifest("policies", "base")


def test_manifest_carries_lineage(registry):
    registry.publish("policies", "v1", build("v1"))
    data = json.loads((registry.path("policies", "v1") / "manifest.json").read_text())
    assert data["trigger_id"] == "t" * 20 and data["parent_version"] == "base"


def test_an_experiment_is_decided_once_whoever_asks_again(tmp_path):
    from registry.store import ModelRegistry

    registry = ModelRegistry(tmp_path)
    registry.register_base("assistant", "base", lambda d: (d / "w").write_text("base"))
    for version in ("v1", "v2"):

        def manifest(directory, v=version):
            return Manifest(version=v, kind="policies", policy="assistant", status="candidate")

        registry.publish("policies", version, manifest)
    registry.offer_candidate("assistant", "v1")
    first = registry.decide_experiment("assistant", "exp:v1", "v1", "promote", "lift +20%")
    assert (
        first.first
        and first.serving == "v1"
        and registry.serving("assistant") == "v1"
        and registry.candidate("assistant") is None
    )
    # A second decider (or a re-run after a crash) gets the recorded decision back, whatever it would decide now.
    again = registry.decide_experiment("assistant", "exp:v1", "v1", "rollback", "someone else's view")
    assert not again.first and again.outcome == "promote" and registry.serving("assistant") == "v1"
    assert registry.pointers()["assistant"]["history"] == ["base", "v1"]
    # Keeping control never rolls back past the serving version, however often it is applied.
    registry.offer_candidate("assistant", "v2")
    for _ in range(2):
        kept = registry.decide_experiment("assistant", "exp:v2", "v2", "expired", "horizon reached")
    assert kept.outcome == "expired" and registry.serving("assistant") == "v1" and registry.candidate("assistant") is None
    assert registry.manifest("policies", "v2").status == "rolled_back"
    decision = registry.experiment_decision("assistant", "exp:v2")
    assert decision is not None and decision.serving == "v1"
