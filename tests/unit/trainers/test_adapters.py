"""A version trained under LoRA (adapters merged after each stage, rounds chained) comes back as one
PEFT adapter on its base that PEFT loads and that answers as the version does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from trainers.adapters import AdapterError, export_adapter


def merged_round(model_dir: Path, out: Path, seed: int, r: int = 4) -> None:
    """One stage of LoRA training, as the trainers leave it: adapters perturbed, merged, saved."""
    torch.manual_seed(seed)
    lm = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=r, target_modules=["q_proj", "v_proj"]))
    for name, p in lm.named_parameters():
        if "lora_" in name:
            p.data.normal_(0, 0.05)
    lm.merge_and_unload().save_pretrained(out)  # type: ignore[operator]  # a PeftModel's, behind nn.Module's typing
    for f in model_dir.glob("*.json"):
        if not (out / f.name).exists():
            shutil.copy(f, out / f.name)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 5, 9, 13, 2]])).logits


def test_two_chained_rounds_come_back_as_one_adapter_that_answers_as_the_version(micro_policy: str, tmp_path: Path) -> None:
    base = Path(micro_policy)
    merged_round(base, tmp_path / "r1", seed=1)
    merged_round(tmp_path / "r1", tmp_path / "r2", seed=2)
    info = export_adapter(base, tmp_path / "r2", tmp_path / "adapter")
    assert info.modules == ("q_proj", "v_proj") and info.rank <= 8 and info.residual < 1e-4
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == info.rank == config["lora_alpha"]
    served = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter").eval()
    version = AutoModelForCausalLM.from_pretrained(tmp_path / "r2").eval()
    assert torch.allclose(logits(served), logits(version), atol=1e-4)
    assert not torch.allclose(logits(AutoModelForCausalLM.from_pretrained(base)), logits(version), atol=1e-2)


def test_a_change_outside_linear_layers_is_refused_naming_the_weight(micro_policy: str, tmp_path: Path) -> None:
    lm = AutoModelForCausalLM.from_pretrained(micro_policy)
    lm.model.norm.weight.data += 0.1
    lm.save_pretrained(tmp_path / "full")
    with pytest.raises(AdapterError, match="model.norm.weight changed"):
        export_adapter(Path(micro_policy), tmp_path / "full", tmp_path / "adapter")


def test_a_version_equal_to_its_base_has_no_adapter(micro_policy: str, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="no weight differs"):
        export_adapter(Path(micro_policy), Path(micro_policy), tmp_path / "adapter")
