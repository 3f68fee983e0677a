"""Where models run and in which precision, for every trainer: a GPU when there is one (bf16
autocast where it supports it), else the CPU in fp32."""

from __future__ import annotations

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """`auto` takes a GPU when one is present; anything else (`cpu`, `cuda`, `mps`) is used as given."""
    if preference != "auto":
        return torch.device(preference)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(device: torch.device) -> bool:
    """bf16 autocast on a GPU that has it; fp32 on CPU, where bf16 is slow or unsupported."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()
