"""The reward PPO sees from an ensemble of reward heads (`trainers.reward_model`, `ensemble_members`):
their mean less `penalty` times their spread, so an answer the heads disagree about earns less
than one they agree is as good (Coste et al. 2024, "uncertainty-weighted optimisation"). The
spread is also the signal PPO stops on when it grows (`trainers.ppo`): the policy has moved to
answers the reward model was not trained on.

    reward = EnsembleReward(RewardModel.load(path), penalty=1.0)
    reward(prompts, responses)      # -> list[float] in (0, 1): mean - penalty * std of the members' sigmoids
    reward.last_disagreement        # mean std over the last batch scored
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from trainers.chat_format import Prompt
from trainers.reward_config import RewardConfig


class HeadScorer(Protocol):
    """What the ensemble needs of a reward model (`trainers.reward_model.RewardModel` is one)."""

    config: RewardConfig

    def head_scores(self, queries: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor: ...


def disagreement(member_scores: torch.Tensor) -> torch.Tensor:
    """Per answer, the standard deviation of the members' sigmoid rewards; member_scores is
    (answers, members) of logits. One member has no spread: 0."""
    probabilities = torch.sigmoid(member_scores.double())
    return probabilities.std(dim=1, unbiased=False)


def penalised_reward(member_scores: torch.Tensor, penalty: float) -> torch.Tensor:
    """Per answer, mean - penalty * std of the members' sigmoid rewards."""
    return torch.sigmoid(member_scores.double()).mean(dim=1) - penalty * disagreement(member_scores)


class EnsembleReward:
    """A RewardFn over a reward model's ensemble members; remembers how much they disagreed on the
    last batch it scored (`last_disagreement`)."""

    def __init__(self, rm: HeadScorer, penalty: float) -> None:
        self.rm, self.penalty = rm, penalty
        self.last_disagreement = 0.0

    def __call__(self, queries: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        members = self.rm.head_scores(queries, responses)[:, : self.rm.config.training.ensemble_members]
        self.last_disagreement = float(disagreement(members).mean()) if len(members) else 0.0
        return penalised_reward(members, self.penalty).tolist()
