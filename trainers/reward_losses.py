"""The reward model's losses as pure functions on score tensors: Bradley-Terry on preference pairs,
BCE on unpaired (pointwise) feedback, and the per-example, per-head weights both take.
`trainers.reward.fit` trains with them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry: -log P(chosen beats rejected) = -log sigmoid(r_chosen - r_rejected), averaged
    with `weights` (same shape: examples x heads) when given."""
    return _weighted_mean(-F.logsigmoid(chosen - rejected), weights)


def pointwise_loss(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """BCE with the reward as the logit, so sigmoid(reward) reads as P(the user liked it)."""
    return _weighted_mean(F.binary_cross_entropy_with_logits(scores, labels, reduction="none"), weights)


def _weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum().clamp(min=1e-8)


def example_weights(recent: Sequence[bool], heads: int, recent_weight: float, seed: int) -> torch.Tensor:
    """(examples, heads) loss weights: each head's bootstrap resample (Poisson(1) counts, as in the
    online bootstrap; a single head sees every example once) times `recent_weight` for the newest
    data. Different resamples are what make the heads disagree where the data is thin."""
    base = torch.tensor([recent_weight if r else 1.0 for r in recent], dtype=torch.float32).unsqueeze(1)
    if heads == 1:
        return base
    counts = torch.poisson(torch.ones(len(recent), heads), generator=torch.Generator().manual_seed(seed))
    return base * counts
