"""The reward model's losses and loss weights on literal tensors."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.reward_losses import example_weights, pairwise_loss, pointwise_loss


def test_pairwise_loss_is_bradley_terry():
    loss = pairwise_loss(torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0]))
    expected = (math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.exp(2))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_pointwise_loss_is_bce_on_the_reward_as_logit():
    loss = pointwise_loss(torch.tensor([0.0, 2.0, -3.0]), torch.tensor([1.0, 0.0, 0.0]))
    expected = (math.log(2) + math.log1p(math.exp(2)) + math.log1p(math.exp(-3))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_each_head_fits_its_own_bootstrap_resample_and_the_newest_data_weighs_more():
    assert example_weights([True, False, False], heads=1, recent_weight=2.0, seed=0).tolist() == [
        [2.0],
        [1.0],
        [1.0],
    ]  # one head: no resampling
    weights = example_weights([True] * 1000 + [False] * 3000, heads=5, recent_weight=2.0, seed=0)
    assert weights.shape == (4000, 5) and torch.equal(
        weights, example_weights([True] * 1000 + [False] * 3000, heads=5, recent_weight=2.0, seed=0)
    )
    assert weights[:1000].mean().item() == pytest.approx(2.0, abs=0.1) and weights[1000:].mean().item() == pytest.approx(
        1.0, abs=0.05
    )
    assert (weights[1000:] == 0).float().mean().item() == pytest.approx(
        math.exp(-1), abs=0.02
    )  # Poisson(1): each head leaves ~37% out
    assert not torch.equal(weights[:, 0], weights[:, 1])
