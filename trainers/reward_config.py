"""Everything a reward-model training run can be told, one frozen object, grouped by concern.

Defaults come from `Settings.reward_model` (and `feedback.min_rating`), so `rlhf.yaml` and the
`RLHF_REWARD_MODEL__TRAINING__*` environment reach the trainer through `RewardConfig.from_settings`.
The config is saved beside the weights (`reward_config.json`) so a version says how it was made.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.settings import FeedbackSettings, RewardModelSettings, Settings

_MODEL = RewardModelSettings()
_TRAIN = _MODEL.training


class RewardConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Model
    base_model: str = Field(
        _MODEL.base_model,
        description="`minilm` (encoder), `smollm2` (causal LM + score head), a .gguf file, a directory or a Hub id.",
    )
    max_length: int = Field(
        _TRAIN.max_length,
        ge=8,
        description="Tokens of the (query, response) input kept, up to the backbone's limit (batches pad to their longest).",
    )
    truncation: Literal["keep_response", "right"] = Field(
        _TRAIN.truncation,
        description="`keep_response`: cut the prompt from the left and keep the response; `right`: cut the joined text's end.",
    )

    # Data
    min_rating: int = Field(
        FeedbackSettings().min_rating, ge=1, le=5, description="A rating at or above this is a positive pointwise label."
    )
    eval_fraction: float = Field(_TRAIN.eval_fraction, ge=0, lt=1, description="Share of queries held out for evaluation.")
    split_salt: str = Field("", description="Changes which queries are held out, without changing the share.")
    max_text_chars: int = Field(
        4_000, ge=1, description="Events whose query, response or correction is longer are dropped (counted)."
    )
    max_pairs_per_query: int = Field(64, ge=1, description="Cap on the pairs one popular query contributes.")

    # Optimisation
    epochs: int = Field(_TRAIN.epochs, ge=1, description="Passes over the training pairs and points.")
    warm_epochs: int | None = Field(
        _TRAIN.warm_epochs, ge=1, description="Passes when continuing from a previous reward model; None: `epochs`."
    )
    batch_size: int = Field(_TRAIN.batch_size, ge=1, description="Pairs (or pointwise examples) per optimiser step.")
    learning_rate: float = Field(_TRAIN.learning_rate, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="Share of steps spent ramping the learning rate up; it then decays linearly to 0."
    )
    pointwise_weight: float = Field(
        1.0, ge=0, description="Weight of the BCE loss on unpaired examples next to the pairwise loss."
    )
    disable_dropout: bool = Field(
        True, description="Train without dropout, as TRL's RewardTrainer does: steadier rewards and faster steps."
    )
    seed: int = Field(0, description="Seeds the new head, the batch order and the heads' bootstrap resamples.")
    ensemble_members: int = Field(
        _TRAIN.ensemble_members,
        ge=1,
        description="Reward heads on the shared backbone, each fit to its own bootstrap resample; their spread is the model's uncertainty.",
    )
    gate_head: bool = Field(
        _TRAIN.gate_head, description="One more head the policy optimiser never sees: the candidate gate's reward."
    )
    recent_weight: float = Field(
        _TRAIN.recent_weight, gt=0, description="Loss weight of the newest data's examples (`recent_ids`) against older history."
    )

    # Runtime
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="`auto` takes a GPU when one is present (bf16 autocast there), else CPU fp32."
    )
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; unset keeps torch's default (one per core).")
    eval_batch_size: int = Field(64, ge=1, description="Sequences per forward pass when predicting.")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RewardConfig:
        rm = settings.reward_model
        values = dict(base_model=rm.base_model, min_rating=settings.feedback.min_rating, **rm.training.model_dump())
        return cls(**{**values, **overrides})

    @property
    def heads(self) -> int:
        """Outputs of the score head: the members, then the gate head if there is one."""
        return self.ensemble_members + self.gate_head

    def dataset_options(self) -> dict[str, Any]:
        """The arguments of `trainers.dataset.build_dataset` this config fixes."""
        return dict(
            min_rating=self.min_rating,
            eval_fraction=self.eval_fraction,
            split_salt=self.split_salt,
            max_text_chars=self.max_text_chars,
            max_pairs_per_query=self.max_pairs_per_query,
        )
