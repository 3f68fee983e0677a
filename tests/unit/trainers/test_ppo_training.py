"""PPO end to end on the micro policy (a few steps, seconds): rollouts, the update, rollbacks by
the guardrails, LoRA, evaluation, and `optimise_policy`'s atomic save, metrics and outcomes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import GuardrailRejection, TrainingError
from trainers.optimise import optimise_policy
from trainers.policy import evaluate_policy, load_policy
from trainers.policy_config import PolicyTrainingConfig
from trainers.ppo import train_ppo
from trainers.synthetic import quality_reward, split_questions

FAST = {"epochs": 2, "batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1, "max_new_tokens": 6, "num_generations": 2,
        "learning_rate": 1e-3, "eval_samples_per_query": 1}  # fmt: skip

TRAIN, HELD_OUT = ([q.text for q in qs[:8]] for qs in split_questions())


def _params(lm: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in lm.parameters()]).clone()


def test_ppo_updates_the_policy(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    before = _params(lm)
    seen = []
    trained, result = train_ppo(lm, tok, quality_reward, TRAIN, PolicyTrainingConfig(**FAST), on_status=lambda *a: seen.append(a))
    assert not torch.equal(before, _params(trained))
    assert (result.iterations, result.rollbacks, result.guardrails_fired, result.stopped_early) == (2, 0, [], False)
    assert [s[0] for s in seen] == ["progress", "progress"]
    assert {"mean_score", "kl", "kl_coef", "mean_length", "pg_loss", "vf_loss", "clipfrac"} <= set(seen[-1][3])


def test_an_update_past_the_kl_bound_is_rolled_back_and_training_stops(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    before = _params(lm)
    seen = []
    # A large step: the k3 KL estimate is second order, so a small first update could pass any bound.
    config = PolicyTrainingConfig(**{**FAST, "epochs": 10, "learning_rate": 0.5}, kl_bound=1e-6, max_consecutive_rollbacks=3)
    trained, result = train_ppo(lm, tok, quality_reward, TRAIN, config, on_status=lambda *a: seen.append(a))
    assert torch.equal(before, _params(trained))  # every update was undone
    # Each update is judged on the rollout after it: update, rollback, (restored policy passes) update, ...
    assert result.guardrails_fired == ["kl_bound"] * 3 and result.stopped_early and result.iterations == 6
    assert [s[0] for s in seen].count("guardrail") == 4 and "stopping" in seen[-1][2]
    assert [s[2].rsplit(" lr ", 1)[1] for s in seen if "rolled back" in s[2]] == ["0.25", "0.12", "0.062"]  # each retry steps smaller


def test_the_last_update_is_checked_on_a_fresh_rollout_too(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    before = _params(lm)
    calls = []

    def reward_going_bad(queries: list[str], responses: list[str]) -> list[float]:
        calls.append(len(queries))
        return quality_reward(queries, responses) if len(calls) == 1 else [math.nan] * len(queries)

    trained, result = train_ppo(lm, tok, reward_going_bad, TRAIN, PolicyTrainingConfig(**{**FAST, "epochs": 1}))
    assert len(calls) == 2  # one update, then one rollout that only checks it
    assert torch.equal(before, _params(trained))  # it failed the check: back to the starting weights
    assert (result.iterations, result.rollbacks, result.guardrails_fired) == (1, 1, ["non_finite_rollout"])


def test_a_non_finite_reward_never_reaches_the_weights(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    before = _params(lm)
    trained, result = train_ppo(lm, tok, lambda q, r: [math.nan] * len(q), TRAIN, PolicyTrainingConfig(**FAST))
    assert torch.equal(before, _params(trained))
    assert set(result.guardrails_fired) == {"non_finite_rollout"}


def test_ppo_with_lora_returns_a_plain_model(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    trained, result = train_ppo(lm, tok, quality_reward, TRAIN, PolicyTrainingConfig(**FAST, lora_r=4))
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
    metrics = optimise_policy("ppo", micro_policy, quality_reward, TRAIN, HELD_OUT, PolicyTrainingConfig(**FAST), out,
                              on_status=lambda *a: states.append(a[0]))  # fmt: skip
    assert states[0] == "started" and states[-1] == "finished"
    for key in ("mean_reward_before", "mean_reward_after", "reward_gain", "kl", "mean_length", "train_seconds"):
        assert isinstance(metrics[key], float), key
    assert metrics["guardrails_fired"] == [] and metrics["algorithm"] == "ppo"
    AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]  # no temporary leftovers


def test_optimise_policy_rejects_unknown_algorithms_and_reports_failure(micro_policy: str, tmp_path: Path):
    with pytest.raises(TrainingError, match="unknown algorithm"):
        optimise_policy("sft", micro_policy, quality_reward, TRAIN, HELD_OUT, PolicyTrainingConfig(**FAST), tmp_path / "p")
    states = []
    with pytest.raises(TrainingError, match="at least one training query"):
        optimise_policy("ppo", micro_policy, quality_reward, [], HELD_OUT, PolicyTrainingConfig(**FAST), tmp_path / "p",
                        on_status=lambda *a: states.append(a[0]))  # fmt: skip
    assert states[-1] == "failed" and not (tmp_path / "p").exists()


def test_a_trained_policy_failing_a_guardrail_is_a_rejection_not_a_training_error(micro_policy: str, tmp_path: Path):
    states = []
    # Every answer is far shorter than 100x the starting length: each rollout and the final evaluation fail.
    config = PolicyTrainingConfig(**FAST, min_length_ratio=100.0)
    with pytest.raises(GuardrailRejection, match="length_collapse") as caught:
        optimise_policy("ppo", micro_policy, quality_reward, TRAIN, HELD_OUT, config, tmp_path / "p", on_status=lambda *a: states.append(a[:2]))
    assert not isinstance(caught.value, TrainingError)
    assert ("guardrail", "eval_after") in states and states[-1][0] == "failed"
    assert not any(tmp_path.iterdir())  # nothing saved
