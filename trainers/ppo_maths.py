"""PPO's maths as pure functions and small controllers (CleanRL style): whitening, KL-shaped
rewards, GAE, the clipped policy and value losses, the adaptive KL coefficient and the running
score scale. `trainers.ppo` runs the loop that uses them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from trainers.policy import masked_mean


def whiten(
    x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries; padding stays zero. `total` adds a sum up
    over the processes of a data-parallel run (`trainers.distributed.total`), whose shards together
    are the batch: the statistics are then the whole batch's."""
    count = total(mask.sum()).clamp(min=1)
    mean = total((x * mask).sum()) / count
    var = total((((x - mean) ** 2) * mask).sum()) / count
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_penalised_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards: -kl_coef * (log pi - log pi_ref) on every response token, plus the
    sequence score on its last token. The KL term keeps the policy near what it knew."""
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = mask.sum(dim=1).long().clamp(min=1) - 1  # responses are right-padded
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens. Masking values and rewards makes
    the state after the last token worth 0, i.e. the answer is a terminal episode."""
    values = values * mask
    rewards = rewards * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    returns = advantages + values
    return advantages * mask, returns * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate: -min(r * A, clip(r, 1-eps, 1+eps) * A). Returns (loss, clip fraction)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> torch.Tensor:
    """Clipped value loss: the value may not move further than cliprange_value from the rollout's
    estimate in one update, the same trust region the policy gets."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


class AdaptiveKLController:
    """Ziegler et al. (2019): nudge kl_coef so the observed KL tracks `target`; the error is
    clipped to +-20% so one noisy batch cannot swing it."""

    def __init__(self, kl_coef: float, target: float, horizon: int) -> None:
        self.value = kl_coef  # the initial coefficient (`policy.training.kl_coef`), adapted from there
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value


class RunningScoreScale:
    """Running standard deviation of the reward-model scores (Welford, over every rollout so far;
    TRL's old `use_score_scaling`). Dividing scores by it makes the KL penalty weigh the same
    against any reward's scale: a reward model whose sigmoid scores span 0.50-0.55 would otherwise
    be drowned by the penalty's noise after the first update."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, scores: torch.Tensor) -> None:
        for x in scores.tolist():
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def scale(self, scores: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        return scores / max(self.std, eps)
