"""The reward PPO sees from an ensemble: mean - k * std of the members' sigmoid rewards, on literal tensors."""

from __future__ import annotations

import math

import pytest
import torch

from core.learning_settings import RewardTrainingSettings
from trainers.ensemble import EnsembleReward, disagreement, penalised_reward
from trainers.reward_config import RewardConfig

# Logits whose sigmoids are exact: 0 -> 0.5, ln 3 -> 0.75, -ln 3 -> 0.25.
L3 = math.log(3)
SCORES = torch.tensor(
    [
        [0.0, 0.0, 0.0, 0.0],  # all agree on 0.5
        [L3, L3, -L3, -L3],  # split: mean 0.5, std 0.25
        [L3, L3, L3, 0.0],
    ]
)  # mostly 0.75: mean 0.6875


def test_disagreement_is_the_std_of_the_members_sigmoids():
    spread = math.sqrt(3 * (0.75 - 0.6875) ** 2 + (0.5 - 0.6875) ** 2) / 2
    assert disagreement(SCORES).tolist() == pytest.approx([0.0, 0.25, spread])
    assert disagreement(torch.tensor([[2.0], [-1.0]])).tolist() == [0.0, 0.0]  # one member: no spread


def test_the_penalty_lowers_answers_the_members_disagree_about():
    assert penalised_reward(SCORES, 0.0).tolist() == pytest.approx([0.5, 0.5, 0.6875])
    assert penalised_reward(SCORES, 1.0).tolist() == pytest.approx([0.5, 0.25, 0.6875 - disagreement(SCORES)[2].item()])
    assert penalised_reward(SCORES, 2.0)[1].item() == pytest.approx(0.0, abs=1e-6)  # float32 logits of ln 3


class Heads:
    """Two members and a gate head; the gate head must not reach PPO's reward."""

    config = RewardConfig(training=RewardTrainingSettings(ensemble_members=2, gate_head=True))

    def head_scores(self, queries, responses):
        return torch.tensor([[L3, -L3, 100.0]] * len(queries))


def test_the_ensemble_reward_uses_the_members_only_and_remembers_their_disagreement():
    reward = EnsembleReward(Heads(), penalty=1.0)
    assert reward(["q", "q"], ["a", "b"]) == pytest.approx([0.25, 0.25])
    assert reward.last_disagreement == pytest.approx(0.25)
