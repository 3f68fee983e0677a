"""A trained version as a LoRA adapter on its base model, the form an inference engine loads at run
time (vLLM's `POST /v1/load_lora_adapter`), while the registry keeps the whole weights for training.

Training under LoRA (`policy.training.lora_r`) merges its adapters into the weights after each
stage (the corrections' SFT, then PPO), and each round starts from the last promoted version's
merged weights, so a version differs from its base model only in the adapted linear layers, by a
sum of low-rank updates. `export_adapter` recovers that sum exactly: for each linear layer whose
weight changed, the singular value decomposition of (version - base), kept to its numerical rank,
as PEFT's `lora_B @ lora_A` with scale 1 (lora_alpha = r). Every layer is padded to the largest
rank (zero rows change nothing), so the adapter has one `r`; it grows by up to 2 x lora_r a round.

    info = export_adapter(base_dir, version_dir, version_dir / "adapter")
    info.rank, info.modules, info.residual     # the largest relative error of a layer, ~1e-7 in fp32

A version whose weights changed outside linear layers (a full fine-tune) has no such form:
`AdapterError` says which weight. A residual above `MAX_RESIDUAL` would serve something other than
what was trained and evaluated, and is refused too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from core.errors import TrainingError

MAX_RESIDUAL = 1e-3  # relative Frobenius error of a layer's update beyond which the adapter is not the version
_RELATIVE_TOLERANCE = 1e-9  # a floor under the rounding estimate, for a weight rounded to nothing


class AdapterError(TrainingError):
    """A version cannot be written as a LoRA adapter on its base; the message says which weight and why."""


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    modules: tuple[str, ...]  # the adapted layers' short names (q_proj, v_proj...)
    layers: int  # linear layers with an update
    residual: float


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise AdapterError(f"{directory}: no safetensors weights to compare")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(str(file)))
    return weights


def _low_rank(after: torch.Tensor, before: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B, A, relative residual) with B @ A == after - before to its numerical rank: the singular
    values above the rounding of the stored weights (`after` was rounded to its dtype when the
    adapters were merged into it: noise of ~eps x its entries, whose largest singular value is about
    eps x rms(entry) x (sqrt(rows) + sqrt(columns)); a margin of 8 over that)."""
    delta = after.double() - before.double()
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    rows, columns = delta.shape
    rms = float(after.double().norm()) / math.sqrt(rows * columns)
    noise = 8 * torch.finfo(after.dtype).eps * rms * (math.sqrt(rows) + math.sqrt(columns))
    rank = max(1, int((s > max(noise, float(s[0]) * _RELATIVE_TOLERANCE)).sum()))
    b, a = u[:, :rank] * s[:rank], vh[:rank]
    residual = float(torch.linalg.norm(delta - b @ a) / torch.linalg.norm(delta))
    return b, a, residual


def export_adapter(base_dir: Path, version_dir: Path, out: Path) -> AdapterInfo:
    """Write `version_dir`'s update over `base_dir` as a PEFT LoRA adapter directory at `out`."""
    base, version = _weights(base_dir), _weights(version_dir)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    worst = 0.0
    for name, weight in version.items():
        before = base.get(name)
        if before is None or before.shape != weight.shape:
            raise AdapterError(f"{version_dir.name}: weight {name} is not in the base model {base_dir} as it is here")
        if torch.equal(before, weight):
            continue
        if weight.ndim != 2 or not name.endswith(".weight"):
            raise AdapterError(f"{version_dir.name}: {name} changed, and only linear layers' weights can be adapted")
        b, a, residual = _low_rank(weight, before)
        worst = max(worst, residual)
        factors[name.removesuffix(".weight")] = (b, a)
    if not factors:
        raise AdapterError(f"{version_dir.name}: no weight differs from the base model {base_dir}")
    if worst > MAX_RESIDUAL:
        raise AdapterError(f"{version_dir.name}: a layer's update is {worst:.2g} away from its low-rank form")
    rank = max(a.shape[0] for _, a in factors.values())
    tensors: dict[str, torch.Tensor] = {}
    for module, (b, a) in factors.items():
        pad = rank - a.shape[0]
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.cat([a, a.new_zeros(pad, a.shape[1])]).float().contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.cat([b, b.new_zeros(b.shape[0], pad)], 1).float().contiguous()
    modules = tuple(sorted({module.rsplit(".", 1)[-1] for module in factors}))
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": rank,  # scale 1: the factors carry the update as it is
        "lora_dropout": 0.0,
        "target_modules": list(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "base_model_name_or_path": str(base_dir),
        "modules_to_save": None,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return AdapterInfo(rank, modules, len(factors), worst)
