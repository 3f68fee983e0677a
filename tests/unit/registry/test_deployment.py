"""Deployment records in the registry, and the deployer's choices that need no engine: which base an
adapter applies to, where the engine finds it, what a decision retires, how an engine's refusal reads."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import pytest

from core.errors import EngineError
from core.serving_settings import GatewaySettings
from registry.deployment import Deployer, EngineAdmin, engine_message, root_base
from registry.store import Deployment, Manifest, ModelRegistry

URL = "http://engine:8000"


def lineage(registry: ModelRegistry, *versions: str) -> None:
    """`versions[0]` the base, each next one trained from the one before."""
    registry.register_base("p", versions[0], lambda d: (d / "w").write_text("x"))
    for parent, version in zip(versions, versions[1:], strict=False):
        manifest = Manifest(version=version, kind="policies", policy="p", status="candidate", parent_version=parent)
        registry.publish("policies", version, partial(lambda m, _: m, manifest))


class Unloads(EngineAdmin):
    """The admin calls a retirement makes, recorded instead of sent."""

    def __init__(self) -> None:
        super().__init__(URL)
        self.unloaded: list[str] = []

    def unload_adapter(self, name: str) -> None:
        self.unloaded.append(name)


def test_a_deployment_is_recorded_per_policy_and_forgotten(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    registry.record_deployment("p", "v1", Deployment(URL, "v1", adapter=True))
    assert registry.deployments("p") == {"v1": Deployment(URL, "v1", adapter=True)} and registry.deployments("q") == {}
    registry.record_deployment("p", "v1", None)
    assert registry.deployments("p") == {}


def test_an_adapter_applies_to_the_first_version_of_its_lineage(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    lineage(registry, "base", "v1", "v2")
    assert root_base(registry, "v2") == root_base(registry, "v1") == root_base(registry, "base") == "base"


def test_the_engine_reads_adapters_under_its_own_view_of_the_registry(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    here = Deployer(registry, GatewaySettings(engine_url=URL))
    there = Deployer(registry, GatewaySettings(engine_url=URL, engine_registry_path="/mnt/registry/"))
    adapter = registry.path("policies", "v1") / "adapter"
    assert here.engine_path(adapter) == str(adapter.resolve())
    assert there.engine_path(adapter) == "/mnt/registry/policies/v1/adapter"


def test_a_decision_retires_adapters_nothing_may_serve_and_keeps_the_rest(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    lineage(registry, "base", "v1", "v2", "v3")
    registry.promote("p", "v1")
    registry.promote("p", "v2")  # serving v2; a rollback would serve v1 again
    registry.offer_candidate("p", "v3")
    registry.record_deployment("p", "base", Deployment(URL, "smollm2", adapter=False))
    for version in ("v1", "v2", "v3"):
        registry.record_deployment("p", version, Deployment(URL, version, adapter=True))
    deployer = Deployer(registry, GatewaySettings(engine_url=URL))
    deployer.admin = admin = Unloads()
    assert deployer.retire("p") == [] and admin.unloaded == []
    registry.rollback("p")  # the candidate v3 rolled back
    registry.promote("p", "v1")  # and, later, v1 serving again: v2 is the rollback target
    assert deployer.retire("p") == ["v3"] and admin.unloaded == ["v3"]
    assert set(registry.deployments("p")) == {"base", "v1", "v2"}


def test_an_engines_refusal_is_read_in_either_shape_and_a_second_load_is_no_error() -> None:
    openai_shape = httpx.Response(400, json={"error": {"message": "rank 32 > 16"}})
    vllm_shape = httpx.Response(400, json={"object": "error", "message": "already been loaded"})
    assert engine_message(openai_shape) == "rank 32 > 16" and engine_message(vllm_shape) == "already been loaded"
    admin = EngineAdmin(URL)
    admin._client = httpx.Client(base_url=URL, transport=httpx.MockTransport(lambda request: vllm_shape))
    admin.load_adapter("v1", "/a")  # loaded before: fine
    admin._client = httpx.Client(base_url=URL, transport=httpx.MockTransport(lambda request: openai_shape))
    with pytest.raises(EngineError, match=r"did not load adapter v1 from /a \(400\): rank 32 > 16"):
        admin.load_adapter("v1", "/a")


def test_a_version_without_an_adapter_is_not_deployed_and_the_error_says_why(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    lineage(registry, "base", "v1", "v2")
    (registry.path("policies", "v2") / "adapter.error").write_text("v2: model.norm.weight changed\n")
    deployer = Deployer(registry, GatewaySettings(engine_url=URL))
    with pytest.raises(EngineError, match="v1 has no LoRA adapter .*policy.training.lora_r 0"):
        deployer.deploy("p", "v1")
    with pytest.raises(EngineError, match="v2 has no LoRA adapter .*: v2: model.norm.weight changed"):
        deployer.deploy("p", "v2")
    assert registry.deployments("p") == {}
