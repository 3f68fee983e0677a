"""What makes a PPO run resumable (`trainers.ppo`, `checkpoint_dir` + `checkpoint_every`): endless
streams of query and demonstration batches, counted so that a resumed run draws the batches the
uninterrupted run would have drawn, and the checkpoint file it resumes from, swapped in whole
(`core.files.write_atomically`) so that an interruption while writing leaves the previous one."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from core.errors import TrainingError
from core.files import write_atomically
from trainers.chat_format import Prompt
from trainers.demonstrations import DemoBatch, demonstration_passes, demonstration_rows, pad_demonstrations

T = TypeVar("T")

CHECKPOINT_FILE = "ppo_state.pt"
# What may change between a run and its resumption: how far it goes, how often it saves, and how
# a step is split over memory (the same step either way). Anything else is another run.
MAY_CHANGE_ON_RESUME = {"epochs", "checkpoint_every", "grad_accumulation_steps"}


def query_batches(queries: Sequence[Prompt], batch_size: int, rng: random.Random) -> Iterator[list[Prompt]]:
    """Endless batches of prompts (questions in their conversations), reshuffled every pass, so every
    training prompt is used equally often."""
    pool: list[Prompt] = []
    while True:
        if len(pool) < batch_size:
            fresh = list(queries)
            rng.shuffle(fresh)
            pool += fresh
        yield pool[:batch_size]
        pool = pool[batch_size:]


def demo_batches(
    tokenizer: PreTrainedTokenizerBase, demos: Sequence[tuple[Prompt, str]], batch_size: int, seed: int, device: torch.device
) -> Iterator[DemoBatch]:
    """Endless mini-batches of demonstrations, reshuffled every pass (`demonstration_passes`)."""
    rows = demonstration_rows(tokenizer, demos)
    for _, indices in demonstration_passes(rows, batch_size, random.Random(seed)):
        yield pad_demonstrations([rows[i] for i in indices], tokenizer.pad_token_id, device)


class Counted(Iterator[T]):
    """An endless iterator that counts what it handed out: a resumed run replays that many draws,
    and so goes on with the batches the uninterrupted run would have drawn."""

    def __init__(self, items: Iterator[T], skip: int = 0) -> None:
        self.items, self.drawn = items, 0
        for _ in range(skip):
            next(self)

    def __next__(self) -> T:
        self.drawn += 1
        return next(self.items)


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Everything the loop needs to go on as if never stopped, swapped in whole (an interruption
    while writing leaves the previous checkpoint)."""
    state["rng"] = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    write_atomically(directory, lambda tmp: torch.save(state, tmp / CHECKPOINT_FILE), replace=True)


def load_checkpoint(directory: Path, run: dict[str, Any], policy: nn.Module) -> dict[str, Any] | None:
    """The checkpoint in `directory`, or None when there is none; TrainingError when it belongs to
    another run (`run`: the settings and seed that must match). Sets the RNG states; the caller restores the rest."""
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return None
    # On the CPU: the RNG state must be a CPU tensor; weights and optimizer state are copied onto the policy's device.
    state = torch.load(path, map_location="cpu", weights_only=True)
    differing = sorted(k for k, v in run.items() if state["config"].get(k) != v)
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    if differing or set(state["trainable"]) != trainable:
        raise TrainingError(
            f"{path}: a checkpoint of another training run (differs in {', '.join(differing) or 'trainable parameters'}); "
            "remove it or give another checkpoint_dir"
        )
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state
