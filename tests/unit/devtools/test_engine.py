"""How the local vLLM server is launched (devtools/engine.py): the flags and environment that keep
it on loopback, with run-time LoRA, a fixed KV cache, and nothing read or sent outside the project."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.engine import LocalEngine

ENGINE = LocalEngine(Path("/models/smollm2"), Path("/data/engine"), served_name="smollm2", port=8471, kv_cache_bytes=256 << 20)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_serves_the_model_on_loopback_with_lora_and_a_fixed_kv_cache() -> None:
    command = ENGINE.command(Path("/venv/bin/python"))
    assert command[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(command, "--model") == "/models/smollm2"
    assert flag(command, "--host") == "127.0.0.1" and flag(command, "--port") == "8471"
    assert flag(command, "--served-model-name") == "smollm2"
    assert flag(command, "--kv-cache-memory-bytes") == str(256 << 20)
    assert "--enable-lora" in command and flag(command, "--max-lora-rank") == "16"
    assert ENGINE.url == "http://127.0.0.1:8471"


def test_environment_picks_the_cpu_platform_and_keeps_caches_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "40")  # a developer's own vLLM variables do not leak in
    monkeypatch.setenv("HF_TOKEN", "secret")
    env = ENGINE.environment()
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert "VLLM_CPU_KVCACHE_SPACE" not in env and "HF_TOKEN" not in env
    for name in ("VLLM_CACHE_ROOT", "VLLM_CONFIG_ROOT", "HF_HOME", "XDG_CACHE_HOME"):
        assert Path(env[name]).is_relative_to("/data/engine"), name
