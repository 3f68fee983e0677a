"""Training a reward model: a smoke train on a tiny local encoder (conftest.py) writes a complete
version with its metrics, a round continues from the previous model when it fits, and a file with
nothing usable is a clear error."""

from __future__ import annotations

import math

import pytest

import trainers.reward_model
from core.errors import TrainingError
from core.learning_settings import RewardTrainingSettings
from core.settings import Settings
from schemas.events import FeedbackEvent, Turn
from trainers.chat_format import Conversation
from trainers.reward import train_reward_model
from trainers.reward_config import RewardConfig
from trainers.synthetic import feedback_events, split_questions


def test_the_config_holds_the_settings_as_they_are():
    s = Settings(
        reward_model={"base_model": "some/hub-id", "training": {"epochs": 7, "eval_fraction": 0.3}}, feedback={"min_rating": 3}
    )
    cfg = RewardConfig.from_settings(s, seed=4)
    assert cfg.training is s.reward_model.training  # the settings object itself, not a copy of its fields
    assert (cfg.base_model, cfg.training.epochs, cfg.min_rating, cfg.seed) == ("some/hub-id", 7, 3, 4)
    assert cfg.dataset_options()["eval_fraction"] == 0.3
    assert RewardConfig().training == Settings().reward_model.training


def test_a_reward_config_saved_by_0_1_0_loads():
    flat = {"base_model": "minilm", "epochs": 3, "max_length": 64, "split_salt": "", "seed": 1, "device": "cpu"}
    cfg = RewardConfig.from_saved(flat)
    assert (cfg.training.epochs, cfg.training.max_length, cfg.seed, cfg.device) == (3, 64, 1, "cpu")
    assert (cfg.training.truncation, cfg.training.ensemble_members, cfg.training.gate_head) == ("right", 1, False)
    assert RewardConfig.from_saved(cfg.model_dump()) == cfg  # what is saved now reads back as it was


def test_smoke_train_writes_a_complete_version(trained_reward):
    metrics, out, calls = trained_reward.metrics, trained_reward.version_dir, trained_reward.progress_calls
    assert {p.name for p in out.iterdir()} >= {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "reward_config.json",
        "metrics.json",
        "lineage.json",
    }
    assert [p.name for p in out.parent.iterdir()] == ["rm-1"]  # no temporary directory left behind
    assert calls[-1][0] == calls[-1][1] == metrics["train"]["steps"] > 0
    assert [done for done, _ in calls] == list(range(1, len(calls) + 1))
    assert math.isfinite(metrics["train"]["mean_loss"])
    assert metrics["data"]["events"]["accepted"] == 80
    assert metrics["eval"]["pairs"] == metrics["data"]["splits"]["eval_pairs"]  # evaluated on the held-out split


def test_a_round_continues_from_the_previous_reward_model_when_it_fits(trained_reward, tmp_path):
    rm, previous = trained_reward.model, trained_reward.version_dir
    events = feedback_events(split_questions()[0], 40, seed=4)
    newest = frozenset(e.event_id for e in events[:20])
    config = rm.config.model_copy(update={"training": rm.config.training.updated(epochs=2, warm_epochs=1)})
    warm, metrics = train_reward_model(events, config, tmp_path / "rm-2", warm_start=previous, recent_ids=newest)
    assert warm.lineage["warm_start"] == str(previous) and metrics["data"]["recent"]["events"] == 20
    assert metrics["train"]["epochs"] == warm.config.training.epochs == 1  # a continued model takes warm_epochs passes
    fresh, fresh_metrics = train_reward_model(
        events,
        config.model_copy(update={"training": config.training.updated(ensemble_members=2)}),
        tmp_path / "rm-3",
        warm_start=previous,
    )
    assert (
        fresh.lineage["warm_start"] is None and fresh_metrics["train"]["epochs"] == 2
    )  # other heads: a fresh model, `epochs` passes


def test_no_usable_events_is_a_training_error(tiny_base, tmp_path):
    with pytest.raises(TrainingError, match="no training examples"):
        train_reward_model([{"bad": "event"}], RewardConfig(base_model=tiny_base), tmp_path / "rm")
    assert not (tmp_path / "rm").exists()


def test_every_answer_is_trained_and_evaluated_in_its_conversation(tiny_base, tmp_path, monkeypatch):
    seen: list = []
    real_parts = trainers.reward_model.reward_parts

    def spy(tokenizer, prompt, response):
        seen.append(prompt)
        return real_parts(tokenizer, prompt, response)

    monkeypatch.setattr(trainers.reward_model, "reward_parts", spy)
    events = [
        FeedbackEvent(
            event_id=f"e{n}-{kind}",
            interaction_id=f"i{n}-{kind}",
            user_id="u",
            conversation_id=f"c{n}",
            turn_index=1,
            context=(
                Turn(role="system", content="Be brief."),
                Turn(role="user", content=f"How do I do thing {n}?"),
                Turn(role="assistant", content="Like so."),
            ),
            query="And how do I undo that?",
            response=f"{kind} answer {n}",
            model_version="v1",
            feedback_type=kind,
        )
        for n in range(12)
        for kind in ("thumbs_up", "thumbs_down")
    ]
    config = RewardConfig(base_model=tiny_base, training=RewardTrainingSettings(epochs=1, eval_fraction=0.5), num_threads=1)
    _, metrics = train_reward_model(events, config, tmp_path / "rm")
    assert metrics["data"]["splits"]["train_pairs"] and metrics["eval"]["pairs"]  # both sides were scored
    history = [(("user", f"How do I do thing {n}?"), ("assistant", "Like so.")) for n in range(12)]
    assert set(seen) == {Conversation("And how do I undo that?", turns, "Be brief.") for turns in history}
