"""What a reward-model run is told: the backbone, `reward_model.training` as it is (one object,
`core.learning_settings.RewardTrainingSettings`, for the YAML, the environment and the trainer alike), and
what the run adds beside it (the feedback's `min_rating`, the seed, the device and CPU threads).

    config = RewardConfig.from_settings(settings)                      # rlhf.yaml under RLHF_* variables
    config = RewardConfig(training=RewardTrainingSettings(epochs=1))   # or built in code

The config is saved beside the weights (`reward_config.json`) so a version says how it was made.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.learning_settings import RewardModelSettings, RewardTrainingSettings
from core.settings import FeedbackSettings, Settings


class RewardConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    base_model: str = Field(
        RewardModelSettings.model_fields["base_model"].default, description="The backbone: `reward_model.base_model`."
    )
    training: RewardTrainingSettings = Field(
        RewardTrainingSettings(), description="`reward_model.training`, the object itself: not a copy of its fields."
    )
    min_rating: int = Field(
        FeedbackSettings.model_fields["min_rating"].default,
        ge=1,
        le=5,
        description="A rating at or above this is a positive pointwise label: `feedback.min_rating`.",
    )
    seed: int = Field(0, description="Seeds the new heads, the batch order and the heads' bootstrap resamples.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="`auto` takes a GPU when one is present (bf16 autocast there), else CPU fp32."
    )
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; None keeps torch's default (one per core).")

    @classmethod
    def from_settings(cls, settings: Settings, **run: Any) -> RewardConfig:
        """The `reward_model:` block and `feedback.min_rating` of the project settings; `run`: seed,
        device, num_threads (a different training block: `training=settings.reward_model.training.updated(...)`)."""
        rm = settings.reward_model
        return cls(**{"base_model": rm.base_model, "training": rm.training, "min_rating": settings.feedback.min_rating, **run})

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> RewardConfig:
        """The config of a saved reward model (its reward_config.json, parsed). Those saved by 0.1.0
        have the training fields at the top level, and a `split_salt` nothing ever set; the oldest
        of them no `truncation` (the joined text was cut at its end), `ensemble_members` (one head)
        or `gate_head` (none). They load with the fields nested under `training` (a compatibility
        reader: removed in 0.3.0)."""
        if "training" not in data:
            data = {"truncation": "right", "ensemble_members": 1, "gate_head": False, **data}
            training = {k: v for k, v in data.items() if k in RewardTrainingSettings.model_fields}
            rest = {k: v for k, v in data.items() if k not in training and k != "split_salt"}
            data = {**rest, "training": training}
        return cls.model_validate(data)

    @property
    def heads(self) -> int:
        """Outputs of the score head: the members, then the gate head if there is one."""
        return self.training.ensemble_members + self.training.gate_head

    def dataset_options(self) -> dict[str, Any]:
        """The arguments of `trainers.dataset.build_dataset` this config fixes."""
        t = self.training
        return dict(
            min_rating=self.min_rating,
            eval_fraction=t.eval_fraction,
            max_text_chars=t.max_text_chars,
            max_pairs_per_query=t.max_pairs_per_query,
        )
