"""One PPO update on a rollout: KL-shaped per-token rewards (scores in units of their running std),
GAE, whitened advantages, then `ppo_epochs` passes of the clipped policy and value losses (plus the
corrections' supervised term) over mini-batches. `trainers.ppo` samples the rollouts and runs the loop.

Data-parallel under torchrun (`trainers.distributed`): each process holds a contiguous shard of
the rollout's rows. Everything computed over the whole batch (the score scale, the advantages'
whitening, the statistics the guardrails judge, each mini-batch's token count) is added up over the
processes, each process's loss is its rows' share of the mini-batch's token mean, and the gradients
are added up before every optimiser step: the update is the one-process update on the whole batch
(tests/unit/trainers/test_ppo_distributed.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedModel

from core.learning_settings import PolicyTrainingSettings
from trainers import distributed
from trainers.demonstrations import DemoBatch, demonstration_loss
from trainers.policy import Rollout, kl_estimate
from trainers.ppo_maths import RunningScoreScale, compute_gae, kl_penalised_rewards, policy_loss, value_loss, whiten


class PolicyWithValue(Protocol):
    """What an update trains (`trainers.ppo.PolicyWithValue`): the response tokens' log-probs and the
    values before them, and the language model itself for the corrections' supervised term."""

    @property
    def lm(self) -> PreTrainedModel: ...

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


@dataclass
class Batch:
    """A rollout and what the policy, its value head and the reference made of it at sampling time."""

    rollout: Rollout
    logprobs: torch.Tensor
    values: torch.Tensor
    ref_logprobs: torch.Tensor

    def stats(self, iteration: int, kl_coef: float) -> dict[str, float]:
        """The whole batch's statistics: under a data-parallel run every process holds a shard, and
        all must judge the same numbers (the guardrails, the KL controller) to take the same branch."""
        ro = self.rollout
        rows = float(len(ro.scores))
        if distributed.world() == 1:
            kl = kl_estimate(self.logprobs, self.ref_logprobs, ro.mask).item()
            score, length, repetition = ro.scores.mean().item(), ro.lengths().mean().item(), ro.repetition()
        else:
            log_r = self.ref_logprobs - self.logprobs
            kl_sum, tokens = ((torch.expm1(log_r) - log_r) * ro.mask).sum(), ro.mask.sum()
            sums = [rows, ro.scores.sum().item(), kl_sum.item(), tokens.item(), ro.lengths().sum().item(), ro.repetition() * rows]
            rows, score_sum, kl_sum_all, token_sum, length_sum, repetition_sum = distributed.total(torch.tensor(sums)).tolist()
            kl, score, length, repetition = (
                kl_sum_all / max(token_sum, 1.0),
                score_sum / rows,
                length_sum / rows,
                repetition_sum / rows,
            )
        return {
            "iteration": float(iteration),
            "mean_score": score,
            "kl": kl,
            "kl_coef": kl_coef,
            "mean_length": length,
            "repetition": repetition,
        }


def learn(
    policy: PolicyWithValue,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    score_scale: RunningScoreScale,
    kl_coef: float,
    config: PolicyTrainingSettings,
    autocast: torch.autocast,
    demos: Iterator[DemoBatch] | None = None,
) -> tuple[dict[str, float], bool]:
    """Rewards, advantages and the update (`_update`) on `batch`, this process's shard of the rollout."""
    ro = batch.rollout
    score_scale.update(torch.tensor(distributed.gathered(ro.scores.tolist())))  # every process's, in order
    rewards = kl_penalised_rewards(score_scale.scale(ro.scores), batch.logprobs, batch.ref_logprobs, ro.mask, kl_coef)
    advantages, returns = compute_gae(rewards, batch.values, ro.mask, config.gamma, config.lam)
    advantages = whiten(advantages, ro.mask, total=distributed.total)
    return _update(policy, optimizer, batch, advantages, returns, config, autocast, demos)


def _micro_batches(mask: torch.Tensor, steps: int, total: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rows of a mini-batch in up to `steps` micro-batches, each with its share of the
    mini-batch's masked tokens (`total`: of the whole mini-batch, when `mask` holds this process's
    rows of it). The losses are token means over the whole mini-batch, so a micro-batch's mean times
    its share, summed over the micro-batches (and the processes), is exactly the mini-batch's mean (a
    plain mean of the micro-batches' means would weigh the tokens of short answers up)."""
    total = (mask.sum() if total is None else total).clamp(min=1)
    rows = torch.arange(len(mask), device=mask.device).tensor_split(steps)
    return [(r, mask[r].sum() / total) for r in rows if len(r)]


def _backward(loss: torch.Tensor) -> bool:
    """Add `loss`'s gradients, unless it is non-finite (then none are added and False)."""
    if not torch.isfinite(loss).item():
        return False
    loss.backward()
    return True


def _update(
    policy: PolicyWithValue,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    config: PolicyTrainingSettings,
    autocast: torch.autocast,
    demos: Iterator[DemoBatch] | None = None,
) -> tuple[dict[str, float], bool]:
    """`ppo_epochs` passes of clipped policy + value loss over shuffled mini-batches, plus
    `demo_coef` x the corrections' supervised loss when `demos` yields batches. One optimiser step
    per mini-batch, its gradients summed over `grad_accumulation_steps` micro-batches: the same
    step, with one micro-batch's activations in memory at a time. Returns the last mini-batch's
    losses and False if one was non-finite (the update then stopped there, before its step).

    In a data-parallel run each process holds a shard of the rollout: a mini-batch is every
    process's next slice of its own shuffled rows, its token count the sum over the processes, and
    the processes' gradients are added up before the step (`distributed.sum_gradients`)."""
    ro = batch.rollout
    steps, world = config.grad_accumulation_steps, distributed.world()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    losses: dict[str, float] = {}
    for _ in range(config.ppo_epochs):
        order = torch.randperm(len(ro.queries), device=ro.mask.device)
        # The same number of optimiser steps in every process, whatever its share of the rows.
        chunks = (
            order.split(config.mini_batch_size)
            if world == 1
            else order.tensor_split(-(-config.batch_size // config.mini_batch_size))
        )
        for idx in chunks:
            optimizer.zero_grad(set_to_none=True)
            losses, finite = {"pg_loss": 0.0, "vf_loss": 0.0, "clipfrac": 0.0}, True
            tokens = distributed.total(ro.mask[idx].sum())
            for rows, share in _micro_batches(ro.mask[idx], steps, tokens):
                micro = idx[rows]
                with autocast:
                    logprobs, values = policy(ro.input_ids[micro], ro.attention_mask[micro], ro.response_len, config.temperature)
                pg_loss, clipfrac = policy_loss(
                    logprobs.float(), batch.logprobs[micro], advantages[micro], ro.mask[micro], config.cliprange
                )
                vf_loss = value_loss(values.float(), batch.values[micro], returns[micro], ro.mask[micro], config.cliprange_value)
                for name, part in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("clipfrac", clipfrac)):
                    losses[name] += (share * part).item()
                finite = _backward(share * (pg_loss + config.vf_coef * vf_loss))
                if not finite:
                    break
            if demos is not None:  # every process draws the same demonstrations and takes its rows of them
                demo, losses["demo_loss"] = next(demos), 0.0
                mine = torch.tensor(distributed.shard(range(len(demo.input_ids)), distributed.rank(), world), dtype=torch.long)
                for rows, share in _micro_batches(demo.target_mask[mine], steps, demo.target_mask.sum()) if finite else []:
                    rows = mine[rows]
                    micro_demo = DemoBatch(demo.input_ids[rows], demo.attention_mask[rows], demo.target_mask[rows])
                    with autocast:
                        demo_loss = share * demonstration_loss(policy.lm, micro_demo)
                    losses["demo_loss"] += demo_loss.item()
                    finite = _backward(config.demo_coef * demo_loss)
                    if not finite:
                        break
            if not distributed.all_agree(finite):
                return _summed(losses), False
            distributed.sum_gradients(trainable)
            nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
    return _summed(losses), True


def _summed(losses: dict[str, float]) -> dict[str, float]:
    """The mini-batch's losses: each process holds its rows' share of them."""
    if distributed.world() == 1:
        return losses
    return dict(zip(losses, distributed.total(torch.tensor(list(losses.values()), dtype=torch.float64)).tolist(), strict=True))
