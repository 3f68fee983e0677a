"""Deploying a policy's versions to an OpenAI-compatible inference engine (vLLM), and retiring them.

The engine serves the base model under a name of its own; every trained version is a LoRA adapter
on that base (`<registry>/policies/<version>/adapter`, trainers/adapters.py), loaded at run time
under the version's id as its model name (`POST /v1/load_lora_adapter`). The registry records where
each version is served (`ModelRegistry.record_deployment`); the assistant reads that record to
relay a version's requests to its engine, so promotion and rollback change routing only. Once a
decision leaves an adapter neither serving, nor the candidate, nor what a rollback would serve
again, `retire` unloads it.

    deployer = Deployer(registry, settings.gateway)      # settings.gateway.engine_url set
    deployer.deploy("default", "v-abc")                  # the base too, if not yet recorded
    deployer.retire("default")                           # after a decision

Every step is idempotent (an adapter already loaded, or already gone, is fine), so a redelivered
trigger or decision repeats it harmlessly. Design: docs/decisions/0007-engine-gateway.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from core.errors import EngineError
from core.serving_settings import GatewaySettings
from registry.store import Deployment, ModelRegistry

ADAPTER_DIR = "adapter"  # a version's LoRA adapter on its base model, under its registry directory
ADAPTER_ERROR = "adapter.error"  # beside it instead: why the version has none
NO_ADAPTER = (
    "it was published without one (trained with policy.training.lora_r 0, or before adapters were written); "
    "an engine can serve its full weights as a model of its own: `rlhf engine deploy VERSION --url URL --model NAME`"
)


def engine_message(response: httpx.Response) -> str:
    """The engine's own words for a refusal (OpenAI's `{"error": {"message"}}` or vLLM's `{"message"}`)."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    error = body.get("error", body) if isinstance(body, dict) else body
    return str(error.get("message", error) if isinstance(error, dict) else error)[:500]


def root_base(registry: ModelRegistry, version: str) -> str:
    """The base version an adapter of `version` applies to: the first of its lineage."""
    manifest = registry.manifest("policies", version)
    while manifest.parent_version is not None and manifest.status != "base":
        manifest = registry.manifest("policies", manifest.parent_version)
    return manifest.version


class EngineAdmin:
    """The engine's model-management calls: what it serves, loading and unloading adapters."""

    def __init__(self, url: str, api_key: str | None = None, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @classmethod
    def of(cls, gateway: GatewaySettings) -> EngineAdmin:
        if gateway.engine_url is None:
            raise EngineError("gateway.engine_url is not set: there is no engine to deploy to")
        key = gateway.engine_api_key.get_secret_value() if gateway.engine_api_key else None
        return cls(gateway.engine_url, key, gateway.connect_timeout_s, gateway.read_timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise EngineError(f"engine at {self.url}: {path} failed: {exc!r}") from None

    def served(self) -> dict[str, str | None]:
        """The model names it answers under, each with the base model it adapts (None: a base model)."""
        response = self._call("GET", "/v1/models")
        if response.status_code != 200:
            raise EngineError(f"engine at {self.url}: /v1/models answered {response.status_code}: {engine_message(response)}")
        return {m["id"]: m.get("parent") for m in response.json().get("data", [])}

    def base_model(self) -> str:
        bases = [name for name, parent in self.served().items() if parent is None]
        if not bases:
            raise EngineError(f"engine at {self.url} serves no base model")
        return bases[0]

    def load_adapter(self, name: str, path: str) -> None:
        response = self._call("POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if response.status_code != 200 and "already been loaded" not in engine_message(response):
            status, reason = response.status_code, engine_message(response)
            raise EngineError(f"engine at {self.url} did not load adapter {name} from {path} ({status}): {reason}")

    def unload_adapter(self, name: str) -> None:
        response = self._call("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code not in (200, 404):  # 404: not loaded (a restart forgets adapters), as wanted
            raise EngineError(f"engine at {self.url} did not unload {name} ({response.status_code}): {engine_message(response)}")

    def close(self) -> None:
        self._client.close()


class Deployer:
    """Puts a policy's versions on the engine at `gateway.engine_url` and takes retired ones off."""

    def __init__(self, registry: ModelRegistry, gateway: GatewaySettings):
        self.registry = registry
        self.admin = EngineAdmin.of(gateway)
        self.registry_path = gateway.engine_registry_path  # the registry root as the engine sees it

    def deploy(self, policy: str, version: str) -> Deployment:
        """Serve `version` from the engine (its base first) and record it; EngineError saying why not."""
        manifest = self.registry.manifest("policies", version)
        if manifest.status == "base":
            deployment = Deployment(self.admin.url, self.admin.base_model(), adapter=False)
        else:
            directory = self.registry.path("policies", version)
            if not (directory / ADAPTER_DIR / "adapter_config.json").is_file():
                why = (directory / ADAPTER_ERROR).read_text().strip() if (directory / ADAPTER_ERROR).is_file() else NO_ADAPTER
                raise EngineError(f"{version} has no LoRA adapter to load into the engine at {self.admin.url}: {why}")
            base = root_base(self.registry, version)
            recorded = self.registry.deployments(policy).get(base)
            if recorded is None or recorded.url != self.admin.url:  # the adapter applies to this engine's base
                self.deploy(policy, base)
            self.admin.load_adapter(version, self.engine_path(directory / ADAPTER_DIR))
            deployment = Deployment(self.admin.url, version, adapter=True)
        self.registry.record_deployment(policy, version, deployment)
        return deployment

    def engine_path(self, path: Path) -> str:
        if self.registry_path is None:
            return str(path.resolve())
        return f"{self.registry_path.rstrip('/')}/{path.resolve().relative_to(self.registry.root.resolve()).as_posix()}"

    def retire(self, policy: str) -> list[str]:
        """Unload this engine's adapters of `policy` that nothing may serve any more; returns their versions."""
        keep = {self.registry.serving(policy), self.registry.candidate(policy), self.registry.rollback_target(policy)}
        retired = []
        for version, deployment in self.registry.deployments(policy).items():
            if deployment.adapter and deployment.url == self.admin.url and version not in keep:
                self.admin.unload_adapter(version)
                self.registry.record_deployment(policy, version, None)
                retired.append(version)
        return retired

    def close(self) -> None:
        self.admin.close()
