"""The policy step of a training job, with a stub optimiser (no model, no broker): a guardrail
rejection is an outcome recorded as a rejected version; a TrainingError fails the job."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import trainers.optimise
from consumers.trainer.job import RoundRewardModel, TrainingJob
from core.errors import GuardrailRejection, TrainingError
from core.learning_settings import RewardTrainingSettings
from core.settings import load_settings
from registry.store import Manifest
from schemas import FeedbackEvent, OffsetRange, TrainTrigger
from schemas.events import Turn
from trainers.history import History
from trainers.reward_config import RewardConfig
from trainers.trust import UserTrust

TRIGGER = TrainTrigger(
    policy="assistant", model_version="base", ranges=(OffsetRange(topic="f", partition=0, start=500, end=700),)
)
BETWEEN = OffsetRange(topic="f", partition=0, start=200, end=500)  # read between an earlier trigger and this one
EVENTS = [
    FeedbackEvent(
        interaction_id=f"i{n}", user_id="u", query=f"question {n}", response="r", model_version="base", feedback_type="thumbs_up"
    )
    for n in range(50)
]


class StubRewardModel:
    config = RewardConfig(training=RewardTrainingSettings(ensemble_members=2, gate_head=False))

    def head_scores(self, queries: list[str], responses: list[str]) -> torch.Tensor:
        return torch.zeros(len(queries), 2)  # two members agreeing on a sigmoid of 0.5

    def predict(self, queries: list[str], responses: list[str]) -> list[float]:
        return [0.0] * len(queries)


def run_policy_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimise, events=EVENTS) -> Manifest:
    monkeypatch.setattr(trainers.optimise, "optimise_policy", optimise)
    monkeypatch.delenv("RLHF_CONFIG", raising=False)
    job = TrainingJob(load_settings(None, home=tmp_path))
    history = History(events, frozenset(), [TRIGGER], [BETWEEN])
    everyone = UserTrust({}, {}, {}, math.nan)
    reward = RoundRewardModel("rm-1", StubRewardModel(), {"eval.pairwise_accuracy": 0.8}, history, everyone)  # type: ignore[arg-type]
    # No emitter: none of these optimisers reports a guardrail status.
    return job._policy(
        tmp_path / "staging",
        TRIGGER,
        "assistant-v1",
        "base",
        reward,
        lambda *a, **k: None,
        emitter=None,  # type: ignore[arg-type]
    )


def test_a_guardrail_rejection_is_recorded_as_a_rejected_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def rejecting(*args, **kwargs):
        raise GuardrailRejection("ppo: trained policy failed guardrails ['kl_bound']")

    manifest = run_policy_step(tmp_path, monkeypatch, rejecting)
    assert manifest.status == "rejected" and "kl_bound" in manifest.reason
    no_corrections = {"corrections_kept": 0.0, "corrections_dropped": 0.0}  # what the corrections' filter did
    assert manifest.metrics == {"rm_eval.pairwise_accuracy": 0.8, **no_corrections} and manifest.reward_model_version == "rm-1"


def test_a_training_error_fails_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def failing(*args, **kwargs):
        raise TrainingError("kto: no usable examples in the feedback")

    with pytest.raises(TrainingError, match="no usable examples"):
        run_policy_step(tmp_path, monkeypatch, failing)


def test_a_trained_policy_is_a_candidate_only_past_the_margin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen: dict[str, Any] = {}

    def improving(algorithm, base, reward_fn, train, held_out, config, out_dir, **kwargs):
        seen.update(reward=reward_fn(["q"], ["a"]), split=(len(train), len(held_out)))
        return {"mean_reward_before": 0.4, "mean_reward_after": 0.6, "guardrails_fired": []}

    manifest = run_policy_step(tmp_path, monkeypatch, improving)
    assert manifest.status == "candidate" and manifest.metrics["mean_reward_after"] == 0.6
    assert seen["reward"] == [0.5] and sum(seen["split"]) == len(EVENTS) and min(seen["split"]) > 0
    assert manifest.history_triggers == [TRIGGER.trigger_id] and manifest.data_ranges == [
        r.model_dump() for r in (*TRIGGER.ranges, BETWEEN)
    ]


def test_the_gate_judges_by_the_gate_reward_when_there_is_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def hacked(*args, **kwargs):  # PPO's own reward rose; the head it never saw did not
        return {
            "mean_reward_before": 0.4,
            "mean_reward_after": 0.9,
            "gate_reward_before": 0.5,
            "gate_reward_after": 0.45,
            "guardrails_fired": [],
        }

    manifest = run_policy_step(tmp_path, monkeypatch, hacked)
    assert manifest.status == "rejected" and "gate reward 0.500 -> 0.450" in manifest.reason


def test_the_policy_trains_on_the_conversations_of_version_2_feedback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    earlier = (Turn(role="user", content="How do I reset my password in Mail?"), Turn(role="assistant", content="Open Mail."))
    followed = [
        e.model_copy(update={"context": earlier, "conversation_id": f"c{n}", "turn_index": 1}) for n, e in enumerate(EVENTS)
    ]
    seen: dict[str, Any] = {}

    def recording(algorithm, base, reward_fn, train, held_out, config, out_dir, **kwargs):
        seen.update(prompts=[*train, *held_out], events=kwargs["feedback_events"])
        return {"mean_reward_before": 0.4, "mean_reward_after": 0.6, "guardrails_fired": []}

    run_policy_step(tmp_path, monkeypatch, recording, followed)
    assert {(c.history, c.query) for c in seen["prompts"]} == {
        ((("user", "How do I reset my password in Mail?"), ("assistant", "Open Mail.")), e.query) for e in EVENTS
    }
    assert seen["events"] == followed  # KTO / DPO and the corrections read the same conversations
