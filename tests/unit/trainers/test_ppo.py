"""PPO maths against hand-computed values (literal tensors), the guardrail checks and the config's
validation. No model, no I/O."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from core.learning_settings import PolicyTrainingSettings
from trainers.guardrails import check_guardrails
from trainers.policy import kl_estimate, masked_mean, repetition_share
from trainers.ppo_maths import (
    AdaptiveKLController,
    RunningScoreScale,
    compute_gae,
    kl_penalised_rewards,
    policy_loss,
    value_loss,
    whiten,
)

T = torch.tensor


def close(a: torch.Tensor, b: list | float) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=a.dtype), atol=1e-6)


def test_masked_mean_ignores_padding():
    assert close(masked_mean(T([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]]), T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])), 2.0)


def test_whiten_over_masked_entries_only():
    out = whiten(T([[1.0, 3.0, 50.0]]), T([[1.0, 1.0, 0.0]]))
    assert close(out, [[-1.0, 1.0, 0.0]])  # mean 2, std 1 over the two real tokens


def test_kl_penalty_per_token_and_score_on_last_response_token():
    logprobs = T([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = T([[-1.5, -2.0, -2.0], [-1.0, -2.0, 0.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # KL per token = [[0.5, 0, -1], [0, 1, 0]]; reward = -0.1 * KL, + score on the last real token.
    rewards = kl_penalised_rewards(T([1.0, 2.0]), logprobs, ref, mask, kl_coef=0.1)
    assert close(rewards, [[-0.05, 0.0, 1.1], [0.0, 1.9, 0.0]])


def test_kl_estimate_is_k3_and_never_negative():
    # log(ref/pi) = [0, ln 2, (pad)] -> k3 = [0, (2 - 1) - ln 2] -> mean 0.1534264
    logprobs, ref = T([[-1.0, -1.0 - math.log(2.0), 5.0]]), T([[-1.0, -1.0, 0.0]])
    assert close(kl_estimate(logprobs, ref, T([[1.0, 1.0, 0.0]])), (1.0 - math.log(2.0)) / 2)
    assert kl_estimate(ref, logprobs, T([[1.0, 1.0, 0.0]])) > 0  # the plain log-ratio would be negative here


def test_gae_hand_computed():
    # t=2: delta = 1 - 0.7 = 0.3 -> A = 0.3; t=1: delta = 0.7 - 0.6 = 0.1 -> A = 0.1 + 0.5 * 0.3 = 0.25;
    # t=0: delta = 0.6 - 0.5 = 0.1 -> A = 0.1 + 0.5 * 0.25 = 0.225.  Returns = A + V.
    adv, ret = compute_gae(T([[0.0, 0.0, 1.0]]), T([[0.5, 0.6, 0.7]]), T([[1.0, 1.0, 1.0]]), gamma=1.0, lam=0.5)
    assert close(adv, [[0.225, 0.25, 0.3]])
    assert close(ret, [[0.725, 0.85, 1.0]])


def test_gae_treats_the_end_of_the_response_as_terminal():
    # Padding (value 99, reward 99) must not leak: the state after the last token is worth 0.
    # t=1: delta = 1 + 0.9 * 0 - 0.6 = 0.4; t=0: delta = 0.9 * 0.6 - 0.5 = 0.04 -> A = 0.04 + 0.9 * 0.4 = 0.4
    adv, ret = compute_gae(T([[0.0, 1.0, 99.0]]), T([[0.5, 0.6, 99.0]]), T([[1.0, 1.0, 0.0]]), gamma=0.9, lam=1.0)
    assert close(adv, [[0.4, 0.4, 0.0]])
    assert close(ret, [[0.9, 1.0, 0.0]])  # lam=1: the discounted return, 0.9 * 1 and 1


def test_clipped_policy_loss_hand_computed():
    ratios = T([[1.5, 0.5, 1.1, 10.0]])
    advantages = T([[1.0, 1.0, -2.0, 5.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0]])
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: 2.2 either way.
    loss, clipfrac = policy_loss(torch.log(ratios), torch.zeros_like(ratios), advantages, mask, cliprange=0.2)
    assert close(loss, (-1.2 - 0.5 + 2.2) / 3)
    assert close(clipfrac, 1 / 3)


def test_policy_loss_gradient_vanishes_outside_the_trust_region():
    logprobs = torch.log(T([[1.5, 1.1]])).requires_grad_()
    loss, _ = policy_loss(logprobs, torch.zeros(1, 2), T([[1.0, 1.0]]), T([[1.0, 1.0]]), cliprange=0.2)
    loss.backward()
    assert logprobs.grad is not None
    assert logprobs.grad[0, 0] == 0.0 and logprobs.grad[0, 1] != 0.0


def test_clipped_value_loss_hand_computed():
    # token 0: max((1-2)^2, (0.7-2)^2) = 1.69; token 1: max(0, (0.3-0)^2) = 0.09; token 2: 0.05^2 = 0.0025.
    loss = value_loss(
        T([[1.0, 0.0, 0.55]]), T([[0.5, 0.5, 0.5]]), T([[2.0, 0.0, 0.6]]), T([[1.0, 1.0, 1.0]]), cliprange_value=0.2
    )
    assert close(loss, 0.5 * (1.69 + 0.09 + 0.0025) / 3)


def test_adaptive_kl_controller_hand_computed():
    ctl = AdaptiveKLController(kl_coef=0.2, target=0.1, horizon=100)
    assert ctl.update(0.15, n_steps=16) == pytest.approx(0.2 * 1.032)  # error +0.5 clipped to +0.2: x(1 + 0.2 * 16/100)
    assert ctl.update(0.09, n_steps=16) == pytest.approx(0.2 * 1.032 * 0.984)  # error -0.1: x(1 - 0.1 * 0.16)
    assert ctl.update(0.0, n_steps=50) == pytest.approx(0.2 * 1.032 * 0.984 * 0.9)  # error -1 clipped to -0.2
    assert ctl.update(0.1, n_steps=16) == pytest.approx(0.2 * 1.032 * 0.984 * 0.9)  # on target: unchanged


def test_running_score_scale_divides_by_the_std_of_every_score_so_far():
    scale = RunningScoreScale()
    assert scale.std == 1.0  # nothing seen: scores pass unchanged
    scale.update(torch.tensor([0.50, 0.52]))
    scale.update(torch.tensor([0.54, 0.56]))
    expected = torch.tensor([0.50, 0.52, 0.54, 0.56]).std().item()  # 0.025820 (n - 1)
    assert abs(scale.std - expected) < 1e-9
    assert torch.allclose(scale.scale(torch.tensor([0.5, -1.0])), torch.tensor([0.5, -1.0]) / expected)


def test_repetition_share():
    assert repetition_share([1, 2, 1, 2, 1, 2]) == pytest.approx(0.6)  # 5 bigrams, 2 distinct
    assert repetition_share([1, 2, 3]) == 0.0
    assert repetition_share([7]) == 0.0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, []),
        ({"kl": 0.6}, ["kl_bound"]),
        ({"mean_length": 4.0}, ["length_collapse"]),
        ({"mean_length": 25.0}, ["length_blowup"]),
        ({"repetition": 0.7}, ["repetition_collapse"]),
        ({"mean_score": math.nan}, ["non_finite_rollout"]),
        ({"kl": math.inf, "repetition": 0.9}, ["non_finite_rollout", "kl_bound", "repetition_collapse"]),
    ],
)
def test_guardrails(change, expected):
    stats = {"mean_score": 0.4, "kl": 0.1, "mean_length": 10.0, "repetition": 0.05, **change}
    assert check_guardrails(stats, start_length=10.0, config=PolicyTrainingSettings()) == expected


def test_the_settings_validate_batches_and_are_the_trainers_config():
    from core.settings import load_settings

    with pytest.raises(ValidationError, match="mini_batch_size"):
        PolicyTrainingSettings(batch_size=4, mini_batch_size=8)
    with pytest.raises(ValidationError, match="num_generations"):
        PolicyTrainingSettings(batch_size=6, mini_batch_size=2, num_generations=4)
    with pytest.raises(ValidationError, match="mini_batch_size"):
        PolicyTrainingSettings().updated(mini_batch_size=32)  # a change is validated too
    cfg = load_settings(None).policy.training.updated(learning_rate=5e-5)
    assert (cfg.epochs, cfg.batch_size, cfg.kl_coef, cfg.target_kl, cfg.learning_rate) == (20, 16, 0.2, 0.1, 5e-5)
    assert (cfg.demo_epochs, cfg.demo_learning_rate) == (30, 5e-4)  # the corrections' SFT keeps its own rate when PPO's changes
