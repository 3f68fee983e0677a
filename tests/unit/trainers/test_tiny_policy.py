"""The tiny offline policy builder, on the micro recipe (a few seconds): the saved directory loads
with `from_pretrained`, the prompt/completion split tokenises consistently, the cache builds
once, and `tiny` resolves to it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers import tiny_policy
from trainers.base_models import TINY, resolve_base_model
from trainers.tiny_policy import ensure_tiny_policy, format_completion, format_prompt


@pytest.fixture
def micro(micro_policy: str) -> Path:
    return Path(micro_policy)


def test_build_saves_a_loadable_causal_lm(micro: Path):
    tok = AutoTokenizer.from_pretrained(micro)
    lm = AutoModelForCausalLM.from_pretrained(micro)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    assert lm.config.hidden_size == 32 and lm.config.num_hidden_layers == 1
    enc = tok([format_prompt("How do I reset my password in Mail?")], return_tensors="pt", add_special_tokens=False)
    # transformers' own stubs: its auto model class does not match the self type `generate` declares.
    out = lm.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)  # type: ignore[misc]
    assert isinstance(out, torch.Tensor) and out.shape[1] > enc["input_ids"].shape[1]
    assert (micro / "tiny_policy.json").is_file()


def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion(micro: Path):
    # TRL's KTO/DPO tokenise prompt+completion jointly; generation sees the prompt alone.
    tok = AutoTokenizer.from_pretrained(micro)
    prompt = format_prompt("Where can I export the history in Mail?")
    joined = prompt + format_completion("Open Mail, go to Storage, select history, then press Export.")
    p, j = tok(prompt, add_special_tokens=False)["input_ids"], tok(joined, add_special_tokens=False)["input_ids"]
    assert j[: len(p)] == p
    completion = tok.decode(j[len(p) :])
    assert isinstance(completion, str) and completion.strip().startswith("Open Mail")


def test_warm_up_lowers_the_loss_below_chance(micro: Path):
    tok = AutoTokenizer.from_pretrained(micro)
    final_loss = json.loads((micro / "tiny_policy.json").read_text())["final_loss"]
    assert final_loss < math.log(len(tok)) - 0.5  # chance is log |V|; the real recipe ends near 0.3


def test_ensure_builds_once_and_resolve_maps_tiny(micro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    builds = []

    def fake_build(out_dir: Path) -> Path:  # the micro policy stands in for the 30-second build
        builds.append(out_dir)
        return Path(shutil.copytree(micro, out_dir, dirs_exist_ok=True))

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tiny_policy, "build_tiny_policy", fake_build)
    first = ensure_tiny_policy()
    second = ensure_tiny_policy()
    assert first == second and len(builds) == 1 and first.is_relative_to(tmp_path)
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no half-built leftovers
    assert resolve_base_model(TINY) == str(first)
