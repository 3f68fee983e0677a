"""PPO's guardrails: the failure modes a batch of answers can show (KL past its bound, length
collapse or blow-up, repetition, non-finite values) and the rollback of an update that shows one
to the last parameters known to behave. `trainers.optimise` also judges a finished policy with
`check_guardrails`."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from core.learning_settings import PolicyTrainingSettings
from trainers.policy import StatusFn


def check_guardrails(stats: dict[str, float], start_length: float, config: PolicyTrainingSettings) -> list[str]:
    """Names of the failure modes `stats` (kl, mean_length, repetition, ...) of a batch of answers
    show; lengths are judged against the starting policy's `start_length`."""
    problems = []
    if not all(math.isfinite(v) for v in stats.values()):
        problems.append("non_finite_rollout")
    if stats["kl"] > config.kl_bound:
        problems.append("kl_bound")
    if stats["mean_length"] < config.min_length_ratio * start_length:
        problems.append("length_collapse")
    if stats["mean_length"] > config.max_length_ratio * start_length:
        problems.append("length_blowup")
    if stats["repetition"] > config.max_repetition:
        problems.append("repetition_collapse")
    return problems


def snapshot(policy: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    trainable = {k: v.detach().clone() for k, v in policy.named_parameters() if v.requires_grad}
    return trainable, copy.deepcopy(optimizer.state_dict())


def restore(
    policy: nn.Module, optimizer: torch.optim.Optimizer, snapshot: tuple[dict[str, torch.Tensor], dict[str, Any]]
) -> None:
    params, opt_state = snapshot
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name in params:
                p.copy_(params[name])
    optimizer.load_state_dict(opt_state)


class Rollbacks:
    """The last parameters known to behave, and the count of updates thrown away. Training stops
    (`stopped`) after `limit` rollbacks with no update kept in between: the run is not converging.
    An update is kept once the rollout after it passes the guardrails.

    A step that overshoots `kl_bound` is retried smaller: each kl_bound rollback multiplies the
    learning rate by `kl_backoff`, for the rest of the run (a policy that an earlier round already
    moved is steeper, and the same step size would overshoot again and again)."""

    def __init__(
        self, policy: nn.Module, optimizer: torch.optim.Optimizer, config: PolicyTrainingSettings, on_status: StatusFn
    ) -> None:
        self.policy, self.optimizer, self.on_status = policy, optimizer, on_status
        self.limit, self.kl_backoff, self.learning_rate = (
            config.max_consecutive_rollbacks,
            config.kl_backoff,
            config.learning_rate,
        )
        self.fired: list[str] = []
        self.total = self.in_a_row = 0
        self.unchecked_update = self.stopped = False
        self.last_good = snapshot(policy, optimizer)

    def updated(self) -> None:
        """The parameters changed; the next rollout judges them."""
        self.unchecked_update = True

    def judge(self, problems: list[str], where: str, stats: dict[str, float]) -> bool:
        """True when a rollout showed none of `problems`: its parameters become the last good ones.
        Otherwise the update that made them is rolled back."""
        if problems:
            self.roll_back(problems, where, stats)
            return False
        self.last_good = snapshot(self.policy, self.optimizer)
        if self.unchecked_update:
            self.in_a_row, self.unchecked_update = 0, False
        return True

    def roll_back(self, problems: list[str], where: str, stats: dict[str, float]) -> None:
        """Restore the last good parameters; `stopped` once that happened `limit` times in a row."""
        restore(self.policy, self.optimizer, self.last_good)
        self.unchecked_update = False
        if "kl_bound" in problems:
            self.learning_rate *= self.kl_backoff
        self.fired += problems
        self.total += 1
        self.in_a_row += 1
        self.on_status(
            "guardrail",
            "ppo",
            f"{where}: {', '.join(problems)}; rolled back to the last good policy, lr {self.learning_rate:.2g}",
            stats,
        )
        self.stopped = self.in_a_row >= self.limit
        if self.stopped:
            self.on_status("guardrail", "ppo", f"{self.in_a_row} rollbacks in a row: stopping with the last good policy", stats)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (`stopped` is never saved: a stopped run has ended)."""
        return {
            "learning_rate": self.learning_rate,
            "fired": self.fired,
            "total": self.total,
            "in_a_row": self.in_a_row,
            "unchecked_update": self.unchecked_update,
            "last_good": self.last_good,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learning_rate, self.fired, self.total, self.in_a_row = (
            state["learning_rate"],
            state["fired"],
            state["total"],
            state["in_a_row"],
        )
        self.unchecked_update, self.last_good = state["unchecked_update"], state["last_good"]
