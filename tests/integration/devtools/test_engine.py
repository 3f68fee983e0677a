"""vLLM's CPU build as the project runs it (devtools/engine.py, the `vllm_engine` fixture): SmolLM2
streamed for real, and a PEFT LoRA adapter loaded, served and unloaded at run time, through the
HTTP API a gateway would use."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from devtools.engine import LocalEngine

pytestmark = pytest.mark.integration

ADAPTER = "candidate-1"
QUESTION = [{"role": "user", "content": "How do I reset my password in Mail?"}]


def stream_chat(client: httpx.Client, model: str, max_tokens: int = 16) -> tuple[list[dict], dict | None]:
    """The chunks of one streamed chat completion, and the usage its last chunk carries."""
    body = {
        "model": model,
        "messages": QUESTION,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks, usage = [], None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            usage = chunk.get("usage") or usage
            if chunk["choices"]:
                chunks.append(chunk)
    return chunks, usage


def test_streams_an_answer_in_chunks_with_usage(vllm_engine: LocalEngine) -> None:
    with httpx.Client(base_url=vllm_engine.url, timeout=60) as client:
        chunks, usage = stream_chat(client, vllm_engine.served_name)
    text = [c["choices"][0]["delta"].get("content") or "" for c in chunks]
    assert sum(1 for t in text if t) >= 3, text
    assert all(c["model"] == vllm_engine.served_name for c in chunks)
    assert usage is not None and usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 16


@pytest.fixture(scope="module")
def lora_adapter(vllm_engine: LocalEngine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random PEFT LoRA adapter (r 8, q/v projections) for the served model, as trainers save one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(vllm_engine.model_dir))
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    directory = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, config).save_pretrained(str(directory))
    return directory


def test_loads_serves_and_unloads_a_lora_adapter(vllm_engine: LocalEngine, lora_adapter: Path) -> None:
    with httpx.Client(base_url=vllm_engine.url, timeout=60) as client:
        loaded = client.post("/v1/load_lora_adapter", json={"lora_name": ADAPTER, "lora_path": str(lora_adapter)})
        assert loaded.status_code == 200, loaded.text
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models[ADAPTER]["parent"] == vllm_engine.served_name

        answer = client.post("/v1/chat/completions", json={"model": ADAPTER, "messages": QUESTION, "max_tokens": 8})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == ADAPTER
        assert answer.json()["usage"]["completion_tokens"] > 0
        chunks, _ = stream_chat(client, ADAPTER, max_tokens=8)
        assert chunks and all(c["model"] == ADAPTER for c in chunks)

        unloaded = client.post("/v1/unload_lora_adapter", json={"lora_name": ADAPTER})
        assert unloaded.status_code == 200, unloaded.text
        assert ADAPTER not in {m["id"] for m in client.get("/v1/models").json()["data"]}
        gone = client.post("/v1/chat/completions", json={"model": ADAPTER, "messages": QUESTION, "max_tokens": 8})
        assert gone.status_code == 404, gone.text
