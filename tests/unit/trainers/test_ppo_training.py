"""PPO end to end on the micro policy (a few steps, seconds): rollouts, the update, rollbacks by
the guardrails, LoRA, evaluation, and `optimise_policy`'s atomic save, metrics and outcomes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import GuardrailRejection, TrainingError
from core.learning_settings import PolicyTrainingSettings, RewardTrainingSettings
from schemas import FeedbackEvent
from schemas.events import Turn
from tests.unit.trainers.fast import FAST
from trainers.chat_format import Conversation, Prompt
from trainers.demonstrations import fit_demonstrations
from trainers.ensemble import EnsembleReward
from trainers.optimise import gate_verdict, optimise_policy
from trainers.policy import evaluate_policy, load_policy
from trainers.ppo import train_ppo
from trainers.reward_config import RewardConfig
from trainers.synthetic import quality_reward, split_questions

TRAIN, HELD_OUT = ([q.text for q in qs[:8]] for qs in split_questions())


def _params(lm: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in lm.parameters()]).clone()


def test_ppo_updates_the_policy(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    before = _params(lm)
    seen = []
    trained, result = train_ppo(
        lm, tok, quality_reward, TRAIN, PolicyTrainingSettings(**FAST), on_status=lambda *a: seen.append(a)
    )
    assert not torch.equal(before, _params(trained))
    assert (result.iterations, result.rollbacks, result.guardrails_fired, result.stopped_early) == (2, 0, [], False)
    assert [s[0] for s in seen] == ["progress", "progress"]
    assert {"mean_score", "kl", "kl_coef", "mean_length", "pg_loss", "vf_loss", "clipfrac"} <= set(seen[-1][3])
    assert [(s[3]["step"], s[3]["steps"]) for s in seen] == [(1, 2), (2, 2)]  # what a progress bar reads
    assert result.start_length == seen[0][3]["mean_length"]  # what the length guardrails judge against


def test_an_update_past_the_kl_bound_is_rolled_back_and_training_stops(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    before = _params(lm)
    seen = []
    # A large step: the k3 KL estimate is second order, so a small first update could pass any bound.
    config = PolicyTrainingSettings(**{**FAST, "epochs": 10, "learning_rate": 0.5}, kl_bound=1e-6, max_consecutive_rollbacks=3)
    trained, result = train_ppo(lm, tok, quality_reward, TRAIN, config, on_status=lambda *a: seen.append(a))
    assert torch.equal(before, _params(trained))  # every update was undone
    # Each update is judged on the rollout after it: update, rollback, (restored policy passes) update, ...
    assert result.guardrails_fired == ["kl_bound"] * 3 and result.stopped_early and result.iterations == 6
    assert [s[0] for s in seen].count("guardrail") == 4 and "stopping" in seen[-1][2]
    assert [s[2].rsplit(" lr ", 1)[1] for s in seen if "rolled back" in s[2]] == [
        "0.25",
        "0.12",
        "0.062",
    ]  # each retry steps smaller


def test_the_last_update_is_checked_on_a_fresh_rollout_too(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    before = _params(lm)
    calls = []

    def reward_going_bad(queries: list[Prompt], responses: list[str]) -> list[float]:
        calls.append(len(queries))
        return quality_reward(queries, responses) if len(calls) == 1 else [math.nan] * len(queries)

    trained, result = train_ppo(lm, tok, reward_going_bad, TRAIN, PolicyTrainingSettings(**{**FAST, "epochs": 1}))
    assert len(calls) == 2  # one update, then one rollout that only checks it
    assert torch.equal(before, _params(trained))  # it failed the check: back to the starting weights
    assert (result.iterations, result.rollbacks, result.guardrails_fired) == (1, 1, ["non_finite_rollout"])


def test_a_non_finite_reward_never_reaches_the_weights(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    before = _params(lm)
    trained, result = train_ppo(lm, tok, lambda q, r: [math.nan] * len(q), TRAIN, PolicyTrainingSettings(**FAST))
    assert torch.equal(before, _params(trained))
    assert set(result.guardrails_fired) == {"non_finite_rollout"}


def test_ppo_with_lora_returns_a_plain_model(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    trained, result = train_ppo(lm, tok, quality_reward, TRAIN, PolicyTrainingSettings(**FAST, lora_r=4))
    assert type(trained).__name__ == "LlamaForCausalLM" and result.iterations == 2


def test_evaluation_is_reproducible_and_kl_to_itself_is_zero(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    a = evaluate_policy(lm, tok, quality_reward, HELD_OUT, reference=lm, max_new_tokens=8, seed=3)
    b = evaluate_policy(lm, tok, quality_reward, HELD_OUT, reference=lm, max_new_tokens=8, seed=3)
    assert a == b and a.n == 2 * len(HELD_OUT) and abs(a.kl) < 1e-6 and 1 <= a.mean_length <= 8


def test_optimise_policy_saves_atomically_and_reports(micro_policy: str, tmp_path: Path):
    out = tmp_path / "policy"
    out.mkdir()  # an existing (empty) target, as a registry staging directory is, gets replaced
    states = []
    metrics = optimise_policy(
        "ppo",
        micro_policy,
        quality_reward,
        TRAIN,
        HELD_OUT,
        PolicyTrainingSettings(**FAST),
        out,
        on_status=lambda *a: states.append(a[0]),
    )
    assert states[0] == "started" and states[-1] == "finished"
    for key in ("mean_reward_before", "mean_reward_after", "reward_gain", "kl", "mean_length", "train_seconds"):
        assert isinstance(metrics[key], float), key
    assert metrics["guardrails_fired"] == [] and metrics["algorithm"] == "ppo"
    AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]  # no temporary leftovers


def test_ppo_rolls_out_evaluates_and_learns_corrections_in_their_conversations(micro_policy: str, tmp_path: Path):
    earlier = (("user", "How do I reset my password in Mail?"), ("assistant", "Open Mail, go to Security, then press Reset."))
    train = [Conversation(q, earlier, "Be brief.") for q in TRAIN[:4]]
    held_out = [Conversation(q, earlier) for q in HELD_OUT[:2]]
    scored: list = []

    def reward(prompts: list, responses: list[str]) -> list[float]:
        scored.extend(prompts)
        return [0.5] * len(prompts)

    context = (Turn(role="system", content="Be brief."), *(Turn(role=r, content=t) for r, t in earlier))
    fix = FeedbackEvent(
        interaction_id="i1",
        user_id="u",
        conversation_id="c1",
        turn_index=1,
        context=context,
        query=TRAIN[0],
        response="Sorry.",
        model_version="v0",
        feedback_type="correction",
        correction="Open Mail, go to Security.",
    )
    metrics = optimise_policy(
        "ppo", micro_policy, reward, train, held_out, PolicyTrainingSettings(**FAST), tmp_path / "p", feedback_events=[fix]
    )
    assert metrics["demonstrations"] == 1.0 and metrics["iterations"] == FAST["epochs"]
    assert set(scored) == {*train, *held_out}  # the reward saw every rollout's conversation, as sampled


def test_optimise_policy_rejects_unknown_algorithms_and_reports_failure(micro_policy: str, tmp_path: Path):
    with pytest.raises(TrainingError, match="unknown algorithm"):
        optimise_policy("sft", micro_policy, quality_reward, TRAIN, HELD_OUT, PolicyTrainingSettings(**FAST), tmp_path / "p")
    states = []
    with pytest.raises(TrainingError, match="at least one training query"):
        optimise_policy(
            "ppo",
            micro_policy,
            quality_reward,
            [],
            HELD_OUT,
            PolicyTrainingSettings(**FAST),
            tmp_path / "p",
            on_status=lambda *a: states.append(a[0]),
        )
    assert states[-1] == "failed" and not (tmp_path / "p").exists()


def test_a_trained_policy_failing_a_guardrail_is_a_rejection_not_a_training_error(micro_policy: str, tmp_path: Path):
    states = []
    # Every answer is far shorter than 100x the starting length: each rollout and the final evaluation fail.
    config = PolicyTrainingSettings(**FAST, min_length_ratio=100.0)
    with pytest.raises(GuardrailRejection, match="length_collapse") as caught:
        optimise_policy(
            "ppo",
            micro_policy,
            quality_reward,
            TRAIN,
            HELD_OUT,
            config,
            tmp_path / "p",
            on_status=lambda *a: states.append(a[:2]),
        )
    assert not isinstance(caught.value, TrainingError)
    assert ("guardrail", "eval_after") in states and states[-1][0] == "failed"
    assert not any(tmp_path.iterdir())  # nothing saved


class SpreadingEnsemble:
    """An ensemble whose members agree on the first rollout and disagree ever more after it."""

    config = RewardConfig(training=RewardTrainingSettings(ensemble_members=2, gate_head=False))

    def __init__(self) -> None:
        self.calls = 0

    def head_scores(self, queries, responses):
        self.calls += 1
        spread = 0.0 if self.calls == 1 else float(self.calls)
        return torch.tensor([[spread, -spread]] * len(queries))


def test_ppo_stops_and_undoes_the_last_update_when_the_ensemble_disagreement_grows(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    before = _params(lm)
    seen = []
    trained, result = train_ppo(
        lm,
        tok,
        EnsembleReward(SpreadingEnsemble(), penalty=1.0),
        TRAIN,
        PolicyTrainingSettings(**{**FAST, "epochs": 5}),
        on_status=lambda *a: seen.append(a),
    )
    assert result.stopped_early and result.iterations == 2 and result.guardrails_fired == ["disagreement"]
    assert torch.equal(before, _params(trained))  # the one update was undone
    assert result.disagreement_first == 0.0 and "disagreement" in seen[-1][2]


class QuietEnsemble(SpreadingEnsemble):
    """Members that agree to within a tenth of a point, then within half a point: noise, not a signal."""

    def head_scores(self, queries, responses):
        self.calls += 1
        spread = 0.004 if self.calls == 1 else 0.02
        return torch.tensor([[spread, -spread]] * len(queries))


def test_a_growth_of_a_spread_below_a_point_does_not_stop_ppo(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    _, result = train_ppo(
        lm, tok, EnsembleReward(QuietEnsemble(), penalty=1.0), TRAIN, PolicyTrainingSettings(**{**FAST, "epochs": 3})
    )
    assert not result.stopped_early and result.iterations == 3 and result.disagreement_last > 4 * result.disagreement_first


def test_optimise_policy_measures_kl_to_parent_and_base_and_the_gate_reward(micro_policy: str, tmp_path: Path):
    parent = tmp_path / "parent"
    lm, tok = load_policy(micro_policy)
    fit_demonstrations(
        lm, tok, [(q, "Open Mail.") for q in TRAIN], epochs=3, batch_size=4, learning_rate=1e-2
    )  # a parent moved away from the base
    lm.save_pretrained(parent), tok.save_pretrained(parent)
    gate_calls = []

    def gate(queries, responses):
        gate_calls.append(len(queries))
        return [0.5] * len(queries)

    events = [
        FeedbackEvent(
            interaction_id=f"i{n}",
            user_id="u",
            query=TRAIN[n],
            response="Sorry.",
            model_version="parent",
            feedback_type="correction",
            correction=f"Open Mail, go to Settings, step {n}.",
        )
        for n in range(3)
    ]
    config = PolicyTrainingSettings(**FAST, demo_epochs=2, kl_base_bound=100.0)
    metrics = optimise_policy(
        "ppo",
        str(parent),
        quality_reward,
        TRAIN,
        HELD_OUT,
        config,
        tmp_path / "out",
        feedback_events=events,
        gate_fn=gate,
        original_path=micro_policy,
    )
    assert metrics["kl_base"] > metrics["kl_parent"] >= 0.0  # trained from the parent: nearer to it than to the base
    assert metrics["gate_reward_before"] == metrics["gate_reward_after"] == 0.5 and sum(gate_calls) == 2 * len(HELD_OUT)
    assert metrics["demonstrations"] == 3.0 and math.isfinite(metrics["demo_loss"])
    restarted = optimise_policy(
        "ppo",
        str(parent),
        quality_reward,
        TRAIN,
        HELD_OUT,
        PolicyTrainingSettings(**FAST, start_from="base"),
        tmp_path / "restart",
        original_path=micro_policy,
    )
    assert restarted["kl_base"] < restarted["kl_parent"]  # restarted from the base: nearer to it
    with pytest.raises(GuardrailRejection, match="kl_base_bound"):  # drift from the base is bounded over rounds
        optimise_policy(
            "ppo",
            str(parent),
            quality_reward,
            TRAIN,
            HELD_OUT,
            PolicyTrainingSettings(**FAST, kl_base_bound=0.01),
            tmp_path / "far",
            original_path=micro_policy,
        )


def test_under_lora_the_corrections_train_adapters_too(micro_policy: str, tmp_path: Path):
    """A full fine-tune of a real chat model on a few dozen corrections would overwrite what it
    knew: with `lora_r`, the corrections' SFT trains adapters (merged), as PPO does. The embeddings
    have no adapter, so they stay the parent's exactly; a full SFT would have moved them."""
    events = [
        FeedbackEvent(
            interaction_id=f"i{n}",
            user_id="u",
            query=TRAIN[n],
            response="Sorry.",
            model_version="base",
            feedback_type="correction",
            correction=f"Open Mail, go to Settings, step {n}.",
        )
        for n in range(4)
    ]
    config = PolicyTrainingSettings(**FAST, lora_r=4, demo_epochs=3, kl_base_bound=100.0)
    metrics = optimise_policy(
        "ppo", micro_policy, quality_reward, TRAIN, HELD_OUT, config, tmp_path / "out", feedback_events=events
    )
    parent, trained = AutoModelForCausalLM.from_pretrained(micro_policy), AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert metrics["demonstrations"] == 4.0 and math.isfinite(metrics["demo_loss"])
    parent_embeddings, trained_embeddings = parent.get_input_embeddings().weight, trained.get_input_embeddings().weight
    assert isinstance(parent_embeddings, torch.Tensor) and isinstance(trained_embeddings, torch.Tensor)
    assert torch.equal(parent_embeddings, trained_embeddings)
    assert not torch.equal(_params(parent), _params(trained))


def test_the_gate_verdict_uses_the_reward_ppo_did_not_see():
    assert (
        gate_verdict(
            {"mean_reward_before": 0.4, "mean_reward_after": 0.9, "gate_reward_before": 0.5, "gate_reward_after": 0.49}, 0.0
        )[0]
        is False
    )
    assert (
        gate_verdict(
            {"mean_reward_before": 0.4, "mean_reward_after": 0.3, "gate_reward_before": 0.5, "gate_reward_after": 0.6}, 0.0
        )[0]
        is True
    )
    passed, reason = gate_verdict({"mean_reward_before": 0.4, "mean_reward_after": 0.41}, 0.05)
    assert not passed and reason == "held-out mean reward 0.400 -> 0.410: not better than the parent by the 5% margin"
