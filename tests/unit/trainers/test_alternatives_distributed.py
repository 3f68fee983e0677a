"""TRL's DPO data-parallel (trainers.alternatives under trainers.distributed): two CPU processes on
gloo, each taking half of every batch (accelerate shards TRL's data loader, DDP averages the
gradients), train the same weights as one process taking all of it, to float tolerance; a batch
that does not split over the processes is refused, naming both settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from core.errors import TrainingError
from core.learning_settings import PolicyTrainingSettings
from tests.unit.trainers.fast import FAST
from tests.unit.trainers.test_distributed import _free_port, join_as
from trainers import distributed
from trainers.alternatives import _per_process_batch, dpo_pairs, train_alternative
from trainers.policy import load_policy
from trainers.synthetic import feedback_events, quality_reward, split_questions

# Optimiser steps of 4 pairs (two each per process); the micro policy trains in full (no LoRA).
CONFIG = PolicyTrainingSettings(**{**FAST, "offline_epochs": 1, "batch_size": 4, "lora_r": 0})
QUESTIONS = split_questions()[0][:8]


def _events():
    return feedback_events(QUESTIONS, 24, seed=4)  # 16 pairs: 4 whole batches


def _train(micro_policy: str, out: Path) -> None:
    lm, tokenizer = load_policy(micro_policy)
    trained, figures = train_alternative(
        "dpo", lm, tokenizer, quality_reward, [q.text for q in QUESTIONS], CONFIG, feedback_events=_events()
    )
    torch.save(trained.state_dict(), out / f"weights-{distributed.rank()}.pt")
    (out / f"figures-{distributed.rank()}.json").write_text(json.dumps(figures))


def _worker(rank: int, world: int, port: int, micro_policy: str, out: str) -> None:  # one spawned process of the group
    join_as(rank, world, port)
    distributed.init()
    _train(micro_policy, Path(out))
    distributed.teardown()


def test_two_gloo_processes_train_the_same_dpo_weights_as_one(micro_policy: str, tmp_path: Path):
    pairs = len(dpo_pairs(_events(), 4))
    # Whole batches: accelerate evens out a last, partial one by repeating examples in a process.
    assert pairs >= 2 * CONFIG.batch_size and pairs % CONFIG.batch_size == 0, pairs
    (tmp_path / "one").mkdir()
    _train(micro_policy, tmp_path / "one")
    (tmp_path / "two").mkdir()
    mp.spawn(_worker, args=(2, _free_port(), micro_policy, str(tmp_path / "two")), nprocs=2)

    single = torch.load(tmp_path / "one" / "weights-0.pt")
    one = json.loads((tmp_path / "one" / "figures-0.json").read_text())
    for rank in range(2):
        parallel = torch.load(tmp_path / "two" / f"weights-{rank}.pt")
        gaps = {name: (single[name] - parallel[name]).abs().max().item() for name in single}
        assert max(gaps.values()) < 1e-5, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]
        figures = json.loads((tmp_path / "two" / f"figures-{rank}.json").read_text())
        assert figures["steps"] == one["steps"] == pairs // CONFIG.batch_size  # the same optimiser steps
        assert abs(figures["train_loss"] - one["train_loss"]) < 1e-5
    base, _ = load_policy(micro_policy)
    assert max((single[n] - w).abs().max().item() for n, w in base.state_dict().items()) > 1e-4  # it did learn


def test_a_batch_that_does_not_split_over_the_processes_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(distributed, "world", lambda: 3)
    assert _per_process_batch(6) == 2
    with pytest.raises(TrainingError, match=r"policy.training.batch_size 4 does not split over policy.processes 3"):
        _per_process_batch(4)
