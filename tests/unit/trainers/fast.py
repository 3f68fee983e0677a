"""The smallest policy-training settings that still train: the unit tests' PPO and TRL runs."""

from typing import Any

FAST: dict[str, Any] = {
    "epochs": 2,
    "batch_size": 4,
    "mini_batch_size": 2,
    "ppo_epochs": 1,
    "max_new_tokens": 6,
    "num_generations": 2,
    "learning_rate": 1e-3,
    "eval_samples_per_query": 1,
}
