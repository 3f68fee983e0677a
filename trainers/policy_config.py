"""Hyperparameters of policy training: PPO (`trainers.ppo`) and the TRL alternatives
(`trainers.alternatives`) read the same object, so one config line switches the algorithm.

`PolicyTrainingConfig.from_settings(settings)` takes the `policy:` block of `rlhf.yaml`; fields the YAML
does not carry keep the defaults below. KL figures are mean *per response token*, in nats, for
the controller, the guardrail and the reports alike, so they do not move with response length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.settings import PolicyTrainingSettings, Settings

if TYPE_CHECKING:
    from peft import LoraConfig

# The knobs `rlhf.yaml` exposes take their defaults from there, so the two never drift apart.
_YAML = PolicyTrainingSettings()


class PolicyTrainingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- schedule
    epochs: int = Field(
        _YAML.epochs, ge=1, description="PPO iterations (one rollout batch + its update); GRPO/RLOO optimiser steps."
    )
    batch_size: int = Field(
        _YAML.batch_size, ge=1, description="Queries rolled out per PPO iteration; completions per GRPO/RLOO step."
    )
    mini_batch_size: int = Field(_YAML.mini_batch_size, ge=1, description="Rollouts per PPO gradient step.")
    ppo_epochs: int = Field(_YAML.ppo_epochs, ge=1, description="Optimisation passes over each PPO rollout batch.")
    learning_rate: float = Field(
        _YAML.learning_rate,
        gt=0,
        description="AdamW learning rate of the policy (and value head); also TRL's for the alternatives.",
    )
    lr_warmup_updates: int = Field(
        5, ge=1, description="PPO updates over which the learning rate ramps up linearly from 1/N of its value."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clip.")
    seed: int = Field(0, description="Seeds query order, sampling and the value head.")

    # --- sampling
    max_new_tokens: int = Field(_YAML.max_new_tokens, ge=1, description="Tokens generated per rollout and per evaluation answer.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature of rollouts and evaluation.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass of rollouts and evaluation.")

    # --- PPO objective
    gamma: float = Field(1.0, ge=0, le=1, description="Discount over response tokens (1: the episode is one answer).")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    cliprange: float = Field(0.2, gt=0, description="Clip range of the policy ratio.")
    cliprange_value: float = Field(0.2, gt=0, description="Clip range of the value update around the rollout values.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss in the total loss.")

    # --- KL control
    init_kl_coef: float = Field(
        _YAML.kl_coef, ge=0, description="Initial per-token KL penalty coefficient (GRPO/RLOO: their beta)."
    )
    target_kl: float = Field(
        _YAML.target_kl, gt=0, description="Per-token KL to the reference the adaptive controller steers towards."
    )
    kl_horizon: int = Field(100, ge=1, description="Controller horizon in rollouts: smaller reacts faster.")
    adaptive_kl: bool = Field(True, description="Adapt the KL coefficient (Ziegler et al. 2019); False keeps it fixed.")
    score_scaling: bool = Field(
        True, description="PPO: divide scores by their running std, so the KL penalty weighs the same for any reward scale."
    )

    # --- learning across rounds (trainers.ensemble, trainers.demonstrations)
    uncertainty_penalty: float = Field(
        _YAML.uncertainty_penalty,
        ge=0,
        description="PPO's reward is the reward heads' mean less this x their spread (Coste et al. 2024).",
    )
    max_disagreement_growth: float = Field(
        _YAML.max_disagreement_growth,
        gt=1,
        description="Stop PPO (undoing the last update) once the heads' spread on a rollout passes this x the first rollout's (or x 0.01, if that is larger).",
    )
    demo_epochs: int = Field(
        _YAML.demo_epochs, ge=0, description="Supervised passes over the users' corrections before PPO (SFT then RL); 0: none."
    )
    demo_max_steps: int = Field(
        _YAML.demo_max_steps,
        ge=1,
        description="Most optimiser steps of those supervised passes: past it, fewer passes (the cost stays bounded as corrections accumulate).",
    )
    demo_learning_rate: float = Field(
        _YAML.demo_learning_rate,
        gt=0,
        description="AdamW learning rate of the supervised passes over the corrections (`demo_epochs`).",
    )
    demo_coef: float = Field(
        _YAML.demo_coef,
        ge=0,
        description="Weight of the supervised loss on users' corrections beside the PPO loss (0: corrections only teach the reward model).",
    )
    start_from: Literal["parent", "base"] = Field(
        _YAML.start_from,
        description="Each round trains from the serving policy (`parent`) or restarts from the original base policy with the accumulated reward model (`base`).",
    )
    reference: Literal["parent", "base"] = Field(
        _YAML.reference, description="The policy the KL penalty and `kl_bound` hold PPO near."
    )
    kl_base_bound: float = Field(
        _YAML.kl_base_bound,
        gt=0,
        description="The gate rejects a candidate whose per-token KL to the original base policy passes this: drift stays bounded over rounds.",
    )

    # --- guardrails
    kl_bound: float = Field(0.5, gt=0, description="Per-token KL to the reference above which an update is rolled back.")
    min_length_ratio: float = Field(0.5, gt=0, description="Roll back when mean response length falls below this x the start.")
    max_length_ratio: float = Field(2.0, gt=1, description="Roll back when mean response length grows past this x the start.")
    max_repetition: float = Field(
        0.5, gt=0, le=1, description="Roll back when the repeated-bigram share of responses exceeds this."
    )
    kl_backoff: float = Field(
        0.5, gt=0, le=1, description="Multiply the learning rate by this after each update rolled back for kl_bound."
    )
    max_consecutive_rollbacks: int = Field(
        3, ge=1, description="Stop training (keeping the last good policy) after this many in a row."
    )

    # --- evaluation
    eval_samples_per_query: int = Field(2, ge=1, description="Fixed-seed samples per held-out query in evaluation.")
    eval_seed: int = Field(1234, description="Sampling seed of evaluation, the same before and after training.")

    # --- large models
    lora_r: int = Field(
        _YAML.lora_r,
        ge=0,
        description="LoRA rank via peft (PPO's reference is then the base with the adapters off); 0 = full fine-tune.",
    )
    lora_alpha: float | None = Field(
        _YAML.lora_alpha, gt=0, description="LoRA scale: adapter updates are multiplied by lora_alpha / lora_r; None: 2 x lora_r."
    )
    lora_dropout: float = Field(
        _YAML.lora_dropout,
        ge=0,
        lt=1,
        description="Dropout on the adapters' input; the TRL algorithms only (PPO runs without dropout so rollout and update log-probs agree).",
    )
    lora_target_modules: str | list[str] = Field(
        _YAML.lora_target_modules, min_length=1, description="Modules that get adapters: `all-linear` or a list of module names."
    )
    grad_accumulation_steps: int = Field(
        _YAML.grad_accumulation_steps,
        ge=1,
        description="PPO: micro-batches per mini-batch, gradients summed before one optimiser step.",
    )
    checkpoint_every: int = Field(
        _YAML.checkpoint_every,
        ge=0,
        description="PPO: iterations between resumable checkpoints when train_ppo gets a checkpoint_dir; 0: none.",
    )

    # --- alternatives (TRL)
    num_generations: int = Field(4, ge=2, description="GRPO/RLOO completions per prompt (the group).")
    preference_beta: float = Field(0.1, gt=0, description="KTO/DPO beta: strength of the implicit KL to the reference.")
    offline_epochs: int = Field(3, ge=1, description="KTO/DPO passes over the feedback examples.")
    min_rating: int = Field(
        4, ge=1, le=5, description="A rating at or above this is a thumbs up for KTO/DPO (as feedback.min_rating)."
    )

    @model_validator(mode="after")
    def _batches_fit(self) -> PolicyTrainingConfig:
        if self.mini_batch_size > self.batch_size:
            raise ValueError(f"mini_batch_size ({self.mini_batch_size}) must not exceed batch_size ({self.batch_size})")
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_generations ({self.num_generations})")
        return self

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> PolicyTrainingConfig:
        """The `policy:` and `feedback:` blocks of the project settings, then `overrides`."""
        t = settings.policy.training
        values: dict[str, object] = {
            "epochs": t.epochs,
            "batch_size": t.batch_size,
            "mini_batch_size": t.mini_batch_size,
            "ppo_epochs": t.ppo_epochs,
            "learning_rate": t.learning_rate,
            "init_kl_coef": t.kl_coef,
            "target_kl": t.target_kl,
            "max_new_tokens": t.max_new_tokens,
            "min_rating": settings.feedback.min_rating,
            **{
                k: getattr(t, k)
                for k in (
                    "uncertainty_penalty",
                    "max_disagreement_growth",
                    "demo_epochs",
                    "demo_max_steps",
                    "demo_learning_rate",
                    "demo_coef",
                    "start_from",
                    "reference",
                    "kl_base_bound",
                    "lora_r",
                    "lora_alpha",
                    "lora_dropout",
                    "lora_target_modules",
                    "grad_accumulation_steps",
                    "checkpoint_every",
                )
            },
        }
        return cls(**{**values, **overrides})


def lora_config(config: PolicyTrainingConfig) -> LoraConfig | None:
    """The adapters PPO and the TRL algorithms train (one definition, so both read the same YAML
    the same way); None for a full fine-tune."""
    if not config.lora_r:
        return None
    from peft import LoraConfig  # imported on use: a full fine-tune never needs peft

    modules = config.lora_target_modules
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha or 2 * config.lora_r,
        lora_dropout=config.lora_dropout,
        target_modules=modules if isinstance(modules, str) else list(modules),
        task_type="CAUSAL_LM",
    )
