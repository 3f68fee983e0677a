"""Where answers are generated: the local vLLM server the project can run (`engine:`, `rlhf engine`)
and how the assistant reaches engines and deploys versions to them (`gateway:`; a version's backend
is its deployment record in the registry, registry/deployment.py). `core.settings` composes them."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, SecretStr

from core.sections import Section

LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]  # the adapter ranks vLLM can be sized for (`--max-lora-rank`)
LORA_RANKS: tuple[int, ...] = get_args(LoraRank)


class EngineSettings(Section):
    """The local vLLM server (`rlhf engine up`, devtools/engine.py), CPU build, on 127.0.0.1 only."""

    model: str = Field(
        "smollm2",
        description="Base model the local vLLM server serves, named as `policy.base_model` names one, under the name's "
        "last path component (name or path).",
    )
    port: int = Field(
        8400, ge=1, le=65535, description="Port of the local vLLM server's OpenAI-compatible API, on 127.0.0.1 only (TCP port)."
    )
    max_model_len: int = Field(2048, ge=16, description="Longest prompt plus answer one request to the engine may hold (tokens).")
    kv_cache_gib: float = Field(
        1.0, gt=0, description="Memory the engine sets aside for its KV cache, instead of vLLM's default share of all RAM (GiB)."
    )
    max_loras: int = Field(2, ge=1, description="LoRA adapters the engine may apply within one batch (adapters).")
    max_lora_rank: LoraRank = Field(
        16, description="Highest rank of a LoRA adapter the engine can load, one of the sizes vLLM accepts (rank)."
    )


class GatewaySettings(Section):
    """The assistant as a gateway in front of an OpenAI-compatible inference engine (vLLM): where
    candidates are deployed as LoRA adapters, and how the engine is called."""

    engine_url: str | None = Field(
        None,
        pattern=r"^https?://[^/\s]+(/[^\s]*)?$",
        description="Base URL of the engine candidates are deployed to, such as http://gpu-1:8000 (`/v1/...` under it), "
        "none: every version is generated in process and nothing is deployed (URL).",
    )
    engine_api_key: SecretStr | None = Field(
        None, description="Bearer key the engine was started with (vLLM `--api-key`), none: the engine asks for none (secret)."
    )
    engine_registry_path: str | None = Field(
        None,
        description="The registry's directory as the engine's host sees it, where it reads adapters from, none: the same "
        "path as here (one host or a shared filesystem) (path).",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Longest wait to connect to an engine (seconds).")
    read_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait for an engine's next piece of an answer, or its reply to a deployment (seconds)."
    )
    retry_after_s: int = Field(
        5, ge=1, description="Retry-After of the 503 answered while an engine is down or overloaded (seconds)."
    )
    max_relayed: int = Field(
        256, ge=1, description="Requests relayed to engines at once, beyond which new ones are refused with 503 (requests)."
    )
