"""Fixtures shared by the reward model's tests: a tiny local encoder and one version trained on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from core.learning_settings import RewardTrainingSettings
from trainers.base_models import resolve_base_model
from trainers.reward import train_reward_model
from trainers.reward_config import RewardConfig
from trainers.reward_model import RewardModel
from trainers.synthetic import feedback_events, split_questions


@dataclass(frozen=True)
class TrainedReward:
    """A reward model version trained by `trained_reward`, and what training reported."""

    model: RewardModel
    metrics: dict
    version_dir: Path
    progress_calls: list[tuple[int, int]]  # (steps done, total steps) per progress report


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-wide BERT with MiniLM's vocabulary, saved locally: a "local path" base model."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def trained_reward(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> TrainedReward:
    """Two epochs on 80 simulated events, saved as `rm-1` with a trigger's lineage (once a session)."""
    train_questions, _ = split_questions()
    events = feedback_events(train_questions, 80, seed=3)
    calls: list[tuple[int, int]] = []
    cfg = RewardConfig(
        base_model=tiny_base,
        training=RewardTrainingSettings(epochs=2, batch_size=8, learning_rate=1e-3, eval_fraction=0.3),
        num_threads=1,
    )
    out = tmp_path_factory.mktemp("versions") / "rm-1"
    rm, metrics = train_reward_model(
        events,
        cfg,
        out,
        lineage={"trigger_id": "t-1", "ranges": [{"partition": 0, "start": 0, "end": 80}]},
        progress=lambda done, total, m: calls.append((done, total)),
    )
    return TrainedReward(rm, metrics, out, calls)
