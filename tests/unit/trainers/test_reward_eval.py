"""Held-out metrics of a reward model: ROC-AUC on literal scores, and the metrics a trained
version stores (the version comes from conftest.py)."""

from __future__ import annotations

import pytest

from trainers.reward_eval import roc_auc


def test_roc_auc_counts_ordered_pairs_and_ties_half():
    assert roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 1], [0.1, 0.2]) is None


def test_a_trained_version_is_judged_per_pairing_rule_and_feedback_kind(trained_reward):
    ev = trained_reward.metrics["eval"]
    assert 0.0 <= ev["pairwise_accuracy"] <= 1.0 and ev["pairs"] > 0
    assert set(ev["accuracy_by_source"]) <= {"thumbs", "rating", "correction"} and ev["accuracy_by_source"]
    assert set(ev["reward_by_kind"]) <= {
        "thumbs_up",
        "thumbs_down",
        "correction",
        "corrected",
        *(f"rating_{r}" for r in range(1, 6)),
    }
    assert 0.0 <= ev["gate_accuracy"] <= 1.0 and ev["disagreement"] > 0
