"""A success metric (accuracy >= 85%): the MiniLM reward model, trained on simulated feedback about the
training questions, ranks a helpful answer above a dodge, echo or wrong answer on questions it
never saw (held out by `split_questions`, new app/action combinations) at least 85% of the time.

About 25 s on 2 busy CPU cores (one epoch over 400 events), so it runs with the unit tests.
"""

from __future__ import annotations

import numpy as np

from core.learning_settings import RewardTrainingSettings
from trainers.reward import train_reward_model
from trainers.reward_config import RewardConfig
from trainers.synthetic import feedback_events, preference_pairs, split_questions


def test_minilm_reward_model_generalises_to_held_out_questions(tmp_path):
    train_questions, held_out = split_questions()
    events = feedback_events(train_questions, 400, seed=1)
    rm, metrics = train_reward_model(
        events,
        RewardConfig(base_model="minilm", training=RewardTrainingSettings(epochs=1), num_threads=2),
        tmp_path / "rm",
        lineage={},
    )

    pairs = preference_pairs(held_out, 300, seed=2)
    queries = [q for q, _, _ in pairs]
    chosen = np.array(rm.predict(queries, [c for _, c, _ in pairs]))
    rejected = np.array(rm.predict(queries, [r for _, _, r in pairs]))
    accuracy = float(np.mean(chosen > rejected))
    print(f"held-out pairwise accuracy {accuracy:.3f}; eval split {metrics['eval']}; train {metrics['train']}")
    assert accuracy >= 0.85
    assert metrics["eval"]["pairwise_accuracy"] >= 0.85  # the builder's own held-out queries agree
