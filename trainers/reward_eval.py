"""How good a reward model is on held-out feedback, each answer scored in its conversation:
pairwise accuracy (overall, per pairing rule, on the newest data and for the gate head), the
ensemble's disagreement, ROC-AUC of pointwise labels and the reward distribution per feedback kind.

    metrics = evaluate(RewardModel.load(version_dir), data.eval_pairs, data.eval_points)

`trainers.reward.train_reward_model` stores these as a version's `eval` metrics; `rlhf reward
eval --model DIR --data FILE` prints them for any feedback file.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from datasets import Dataset
from scipy.stats import rankdata

from trainers.chat_format import as_conversation
from trainers.dataset import prompts
from trainers.ensemble import disagreement
from trainers.reward_model import RewardModel


def evaluate(
    rm: RewardModel, pairs: Dataset, points: Dataset, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Pairwise accuracy (overall and per pairing rule), ROC-AUC of pointwise labels and the reward
    distribution per feedback kind; `progress(texts scored, total)` as scoring goes, if given."""
    pair_prompts, point_prompts = prompts(pairs), prompts(points)
    texts = sorted(  # each (conversation, answer) once, in an order that does not depend on the rows'
        {(p, r) for p, c, j in zip(pair_prompts, pairs["chosen"], pairs["rejected"], strict=True) for r in (c, j)}
        | set(zip(point_prompts, points["response"], strict=True)),
        key=lambda text: (as_conversation(text[0]).query, text[1], as_conversation(text[0]).to_json()),
    )
    heads = rm.head_scores([p for p, _ in texts], [r for _, r in texts], progress)
    members = heads[:, : rm.config.training.ensemble_members]
    reward = dict(zip(texts, members.mean(dim=1).tolist(), strict=True))
    gate = dict(zip(texts, heads[:, -1].tolist(), strict=True)) if rm.config.training.gate_head else reward

    by_kind: dict[str, list[float]] = defaultdict(list)
    right_by_source: dict[str, list[bool]] = defaultdict(list)  # thumbs pairs carry users' coin flips; corrections do not
    margins, gate_right, recent_right = [], [], []
    for prompt, row in zip(pair_prompts, pairs, strict=True):
        good, bad = reward[prompt, row["chosen"]], reward[prompt, row["rejected"]]
        margins.append(good - bad)
        gate_right.append(gate[prompt, row["chosen"]] > gate[prompt, row["rejected"]])
        if row["recent"]:
            recent_right.append(good > bad)
        right_by_source[row["source"]].append(good > bad)
        by_kind[row["chosen_kind"]].append(good)
        by_kind[row["rejected_kind"]].append(bad)
    point_scores = [reward[p, r] for p, r in zip(point_prompts, points["response"], strict=True)]
    for kind, score in zip(points["kind"], point_scores, strict=True):
        by_kind[kind].append(score)

    return {
        "pairs": len(margins),
        "pairwise_accuracy": float(np.mean(np.array(margins) > 0)) if margins else None,
        "mean_margin": float(np.mean(margins)) if margins else None,
        "accuracy_by_source": {source: float(np.mean(right)) for source, right in sorted(right_by_source.items())},
        # The newest policies' own answers: what the next policy update is judged on.
        "recent_pairs": len(recent_right),
        "accuracy_recent": float(np.mean(recent_right)) if recent_right else None,
        "gate_accuracy": float(np.mean(gate_right)) if gate_right else None,
        "disagreement": float(disagreement(members).mean()) if len(texts) else None,
        "points": len(point_scores),
        "roc_auc": roc_auc(points["label"], point_scores),
        "reward_by_kind": {kind: _describe(values) for kind, values in sorted(by_kind.items())},
    }


def roc_auc(labels: Sequence[float], scores: Sequence[float]) -> float | None:
    """P(a random positive scores above a random negative), ties counting half; None without both classes."""
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)  # Mann-Whitney U from average ranks
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _describe(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"count": len(a), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}
