"""The learning loop's settings: when a round trains (`continuous_learning:`), how its reward model
and policy train (`reward_model:`, `policy:`, which are the trainers' own arguments, as TRL's
`*Config` classes are both: `trainers.reward_config`, `trainers.ppo`, `trainers.alternatives`), and
how its candidate is tested (`ab_testing:`). `core.settings` composes them."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, model_validator

from core.sections import Section

Algorithm = Literal["ppo", "grpo", "rloo", "kto", "dpo"]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)


class RewardTrainingSettings(Section):
    """How a reward model trains: `reward_model.training` in the YAML, and the trainer's own arguments
    (`trainers.reward_config.RewardConfig` holds this object as it is, beside the run's device and seed)."""

    # --- input
    max_length: int = Field(
        128,
        ge=8,
        description="Tokens of the (conversation, response) input kept, at most the backbone's limit "
        "(MiniLM 512, SmolLM2 8192 tokens).",
    )
    truncation: Literal["keep_response", "right"] = Field(
        "keep_response",
        description="How an input longer than `max_length` is cut: `keep_response` keeps the response whole and cuts the "
        "conversation from the left (oldest turns first), `right` cuts the joined text's end "
        "(measurements: docs/settings-history.md#truncation).",
    )

    # --- data
    eval_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of conversation contexts, chosen by stable hash, held out for evaluation."
    )
    max_text_chars: int = Field(
        4_000,
        ge=1,
        description="Events whose query, response or correction is longer than this are dropped and counted (characters).",
    )
    max_pairs_per_query: int = Field(
        64, ge=1, description="Most preference pairs one conversation context (earlier turns and question) contributes (pairs)."
    )

    # --- optimisation
    epochs: int = Field(
        2,
        ge=1,
        description="Passes over the training pairs and points of a fresh model (passes; why: docs/settings-history.md#epochs).",
    )
    warm_epochs: int | None = Field(
        1,
        ge=1,
        description="Passes when the model continues from the previous round's (`continuous_learning.warm_start`), None: "
        "`epochs` (passes; measurements: docs/settings-history.md#warm_epochs).",
    )
    batch_size: int = Field(16, ge=1, description="Pairs, or pointwise examples, per optimiser step (examples).")
    learning_rate: float = Field(5e-5, gt=0, description="Peak AdamW learning rate (per step).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (coefficient).")
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="Share of the steps over which the learning rate ramps up, before it decays linearly to 0."
    )
    pointwise_weight: float = Field(
        1.0, ge=0, description="Weight of the BCE loss on unpaired examples beside the pairwise loss (multiplier)."
    )
    disable_dropout: bool = Field(
        True, description="Train without dropout, as TRL's RewardTrainer does: steadier rewards, faster steps."
    )
    recent_weight: float = Field(
        2.0, gt=0, description="Loss weight of the newest trigger's examples against the older history's (multiplier)."
    )

    # --- heads
    ensemble_members: int = Field(
        4,
        ge=1,
        description="Reward heads on one shared backbone, each fit to its own bootstrap resample, whose spread is the "
        "model's uncertainty (heads; Coste et al. 2024).",
    )
    gate_head: bool = Field(
        True, description="Train one head more that the policy optimiser never sees, for the candidate gate to score with."
    )
    eval_batch_size: int = Field(64, ge=1, description="Sequences per forward pass when the model scores answers (sequences).")


class RewardModelSettings(Section):
    base_model: str = Field(
        "minilm",
        description="Backbone of the reward model: `minilm` (offline encoder from PyPI), `smollm2` (SmolLM2-135M-Instruct "
        "with a score head), a .gguf file, a local directory or a Hub id.",
    )
    training: RewardTrainingSettings = RewardTrainingSettings()


# Sampling of answers, one default for the policy's rollouts and evaluation (`policy.training`) and
# for the assistant's answers (`assistant`), so users get the answers the gate measured.
SAMPLING_TEMPERATURE = 0.8
SAMPLING_TOP_P = 0.95


class PolicyTrainingSettings(Section):
    """How a policy trains: `policy.training` in the YAML, and the argument of every policy trainer
    (`trainers.optimise.optimise_policy`, PPO and the TRL alternatives). KL figures are mean per
    response token, in nats, for the controller, the guardrails and the reports alike."""

    # --- schedule
    epochs: int = Field(
        20, ge=1, description="PPO iterations (one rollout batch and its update each), or GRPO/RLOO optimiser steps (iterations)."
    )
    batch_size: int = Field(
        16, ge=1, description="Queries rolled out per PPO iteration, or completions per GRPO/RLOO step (queries)."
    )
    mini_batch_size: int = Field(8, ge=1, description="Rollouts per PPO gradient step (rollouts).")
    ppo_epochs: int = Field(4, ge=1, description="Optimisation passes over each rollout batch (passes).")
    learning_rate: float = Field(
        2e-4,
        gt=0,
        description="AdamW learning rate of the policy and its value head, also TRL's for the alternatives (per step; "
        "history: docs/settings-history.md#learning_rate).",
    )
    lr_warmup_updates: int = Field(
        5, ge=1, description="PPO updates over which the learning rate ramps up linearly from 1/N of its value (updates)."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clip (L2 norm).")

    # --- sampling
    max_new_tokens: int = Field(32, ge=1, description="Tokens generated per rollout and per evaluation answer (tokens).")
    temperature: float = Field(SAMPLING_TEMPERATURE, gt=0, description="Sampling temperature of rollouts and evaluation.")
    top_p: float = Field(
        SAMPLING_TOP_P, gt=0, le=1, description="Nucleus sampling mass of rollouts and evaluation (probability)."
    )

    # --- PPO objective
    gamma: float = Field(1.0, ge=0, le=1, description="Discount per response token (1: the episode is one answer).")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (per token).")
    cliprange: float = Field(0.2, gt=0, description="Clip range of the policy probability ratio (ratio).")
    cliprange_value: float = Field(
        0.2, gt=0, description="Clip range of the value update around the rollout's values (reward units)."
    )
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss in the total loss (multiplier).")

    # --- KL control
    kl_coef: float = Field(0.2, ge=0, description="Initial KL penalty coefficient, GRPO/RLOO's beta (per nat per token).")
    target_kl: float = Field(0.1, gt=0, description="KL to the reference the adaptive controller steers towards (nats/token).")
    kl_horizon: int = Field(100, ge=1, description="Horizon of the adaptive KL controller, smaller reacts faster (rollouts).")

    # --- learning across rounds (trainers.ensemble, trainers.demonstrations)
    uncertainty_penalty: float = Field(
        1.0,
        ge=0,
        description="PPO's reward is the reward heads' mean less this times their spread (multiplier; Coste et al. 2024).",
    )
    max_disagreement_growth: float = Field(
        2.0,
        gt=1,
        description="PPO stops, undoing its last update, once the heads' spread on a rollout passes this times the first "
        "rollout's or 0.01, whichever is larger (multiplier).",
    )
    demo_epochs: int = Field(
        30,
        ge=0,
        description="Supervised passes over the users' corrections before PPO starts, 0: none (passes; "
        "measurements: docs/settings-history.md#demo_epochs).",
    )
    demo_max_steps: int = Field(
        1000,
        ge=1,
        description="Most optimiser steps of those supervised passes, past which a round takes fewer passes (steps; "
        "measurements: docs/settings-history.md#demo_max_steps).",
    )
    demo_learning_rate: float = Field(
        5e-4,
        gt=0,
        description="AdamW learning rate of the supervised passes over the corrections (per step; "
        "measurements: docs/settings-history.md#demo_learning_rate).",
    )
    demo_coef: float = Field(
        2.0,
        ge=0,
        description="Weight of a supervised loss on the users' corrections beside the PPO loss, 0: corrections only train "
        "the reward model (multiplier; measurements: docs/settings-history.md#demo_coef).",
    )
    start_from: Literal["parent", "base"] = Field(
        "parent",
        description="Train each round from the serving policy (`parent`), or from the original base policy with the "
        "accumulated reward model (`base`).",
    )
    reference: Literal["parent", "base"] = Field(
        "parent", description="The policy PPO's KL penalty and `kl_bound` hold it near: `parent` or the original `base`."
    )
    kl_base_bound: float = Field(
        1.0, gt=0, description="Per-token KL to the original base policy past which the gate rejects a candidate (nats/token)."
    )

    # --- guardrails
    kl_bound: float = Field(0.5, gt=0, description="KL to the reference above which an update is rolled back (nats/token).")
    min_length_ratio: float = Field(
        0.5, gt=0, description="An update is rolled back when the mean answer length falls below this times the start's (ratio)."
    )
    max_length_ratio: float = Field(
        2.0, gt=1, description="An update is rolled back when the mean answer length grows past this times the start's (ratio)."
    )
    max_repetition: float = Field(
        0.5, gt=0, le=1, description="An update is rolled back when the share of repeated bigrams in answers exceeds this."
    )
    kl_backoff: float = Field(
        0.5, gt=0, le=1, description="Factor the learning rate is multiplied by after each rollback for `kl_bound` (multiplier)."
    )
    max_consecutive_rollbacks: int = Field(
        3, ge=1, description="Rollbacks in a row after which training stops, keeping the last good policy (rollbacks)."
    )

    # --- evaluation
    eval_samples_per_query: int = Field(
        2, ge=1, description="Fixed-seed samples per held-out query when a policy is evaluated (samples)."
    )

    # --- large models
    lora_r: int = Field(
        0, ge=0, description="LoRA rank of the adapters PPO and the TRL algorithms train, 0: full fine-tune (rank)."
    )
    lora_alpha: float | None = Field(
        None, gt=0, description="LoRA scale, adapter updates multiplied by lora_alpha / lora_r, None: 2 x lora_r (scale)."
    )
    lora_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout probability on the adapters' input, for the TRL algorithms only (PPO runs without dropout).",
    )
    lora_target_modules: str | list[str] = Field(
        "all-linear",
        min_length=1,
        description="Modules that get adapters: `all-linear`, or module names such as [q_proj, v_proj].",
    )
    grad_accumulation_steps: int = Field(
        1,
        ge=1,
        description="PPO micro-batches per mini-batch, their gradients summed into one optimiser step (micro-batches).",
    )
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="PPO iterations between resumable checkpoints when the job has a checkpoint directory, 0: none (iterations).",
    )

    # --- alternatives (TRL)
    num_generations: int = Field(4, ge=2, description="GRPO/RLOO completions per prompt, the group (completions).")
    preference_beta: float = Field(
        0.1, gt=0, description="KTO/DPO beta, the strength of the implicit KL to the reference (coefficient)."
    )
    offline_epochs: int = Field(3, ge=1, description="KTO/DPO passes over the feedback examples (passes).")

    @model_validator(mode="after")
    def _batches_fit(self) -> PolicyTrainingSettings:
        if self.mini_batch_size > self.batch_size:
            raise ValueError(f"mini_batch_size ({self.mini_batch_size}) must not exceed batch_size ({self.batch_size})")
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_generations ({self.num_generations})")
        return self


class PolicySettings(Section):
    base_model: str = Field(
        "tiny",
        description="Starting policy: `tiny` (the locally built assistant), `smollm2` (SmolLM2-135M-Instruct, offline from "
        "PyPI), a .gguf file, a local directory or a Hub id.",
    )
    algorithm: Algorithm = Field("ppo", description="Policy optimisation algorithm: ppo, grpo, rloo, kto or dpo.")
    processes: int = Field(
        1,
        ge=1,
        description="Processes the trainer job optimises the policy on, data-parallel under torchrun: one per GPU, or gloo "
        "processes on CPU, each taking its share of every batch (trainers/launch.py) (processes).",
    )
    training: PolicyTrainingSettings = PolicyTrainingSettings()


class ContinuousLearningSettings(Section):
    buffer_size: int = Field(1000, ge=1, description="Accepted feedback events kept per policy in the rolling buffer (events).")
    train_threshold: int = Field(
        100, ge=1, description="New accepted feedback events per policy that trigger a training round (events)."
    )
    trigger_timeout_s: float = Field(
        1800.0, gt=0, description="Time after which a training round that has reported nothing is considered dead (seconds)."
    )
    dedupe_horizon_s: float = Field(
        3600.0, gt=0, description="Window within which a repeated event_id counts as a duplicate (seconds)."
    )
    history_triggers: int | None = Field(
        None,
        ge=0,
        description="Earlier triggers whose feedback the reward model trains on beside the latest, None: all, 0: the latest "
        "buffer only (triggers).",
    )
    history_max_age_s: float | None = Field(
        None, gt=0, description="Age past which earlier triggers are left out of the history, None: no age limit (seconds)."
    )
    history_max_events: int | None = Field(
        50_000, ge=1, description="Size past which the oldest earlier triggers are left out of the history (events)."
    )
    reward_sample_events: int | None = Field(
        3000,
        ge=1,
        description="Most events a round's reward model trains on, every newest event and then a stable sample of the older "
        "history, None: the whole history (events; why: docs/settings-history.md#reward_sample_events).",
    )
    warm_start: bool = Field(
        True, description="Continue each round's reward model from the previous round's instead of from a fresh head."
    )

    @model_validator(mode="after")
    def _threshold_fits_buffer(self) -> ContinuousLearningSettings:
        if self.train_threshold > self.buffer_size:
            raise ValueError(f"train_threshold ({self.train_threshold}) must not exceed buffer_size ({self.buffer_size})")
        return self


class FeedbackTrustSettings(Section):
    """How much each user's feedback counts when a round learns (`trainers.trust`): per-user caps,
    agreement-based weights, and which corrections are learned as demonstrations. All off by default:
    the rule of docs/decisions/0008-feedback-trust.md switched them off (measured values there)."""

    max_user_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Largest share of a round's feedback, and of its corrections, that one user's verdicts weigh, None: no "
        "cap (fraction; measured at 0.02).",
    )
    agreement_weighting: bool = Field(
        False,
        description="Down-weight users whose verdicts disagree with other users' on the same answers and with the previous "
        "round's reward model.",
    )
    agreement_prior: float = Field(
        8.0,
        ge=0,
        description="Verdicts at the population's agreement rate each user starts with, so few verdicts keep a user's "
        "weight near 1 (verdicts).",
    )
    correction_filter: bool = Field(
        False,
        description="Learn a correction as a demonstration only when the round's reward model prefers it to the answer it "
        "replaces and its user's weight is at least `min_correction_trust`.",
    )
    min_correction_trust: float = Field(
        0.5, ge=0, le=1, description="Lowest user weight whose corrections are learned as demonstrations (weight, 0-1)."
    )


class VariantSettings(Section):
    name: str = Field(description="Variant name, unique within the experiment.")
    model: str = Field(description="Model the variant serves: a version id in the registry, `serving` or `candidate`.")
    weight: float = Field(1.0, gt=0, description="Traffic weight of the variant relative to the others (ratio).")


def _variants_from_names(value: Any) -> Any:
    """`variants: [control, variant_a]` (names only) means: equal weights, the first serves the
    serving version (control), the others the candidate. The detailed form passes through."""
    if isinstance(value, (list, tuple)):
        return tuple(
            {"name": v, "model": "serving" if i == 0 else "candidate"} if isinstance(v, str) else v for i, v in enumerate(value)
        )
    return value


class ABTestingSettings(Section):
    enabled: bool = Field(True, description="Offer each gated candidate in an A/B test; false promotes it without one.")
    experiment: str = Field(
        "policy-ab", description="Experiment name, each candidate's experiment id being `<experiment>:<candidate version>`."
    )
    salt: str = Field("rlhf-ab-1", description="Salt of the user-to-variant assignment, changed to reshuffle users.")
    variants: Annotated[tuple[VariantSettings, ...], BeforeValidator(_variants_from_names)] = Field(
        (VariantSettings(name="control", model="serving"), VariantSettings(name="variant_a", model="candidate")),
        description="Variants of each experiment, the first the control; names alone mean equal weights, the first "
        "serving `serving` and the others `candidate`.",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the tests and intervals (probability).")
    min_lift: float = Field(
        0.0, description="Relative lift of the positive rate a treatment must beat to be promoted (fraction)."
    )
    min_users_per_variant: int = Field(
        100, ge=1, description="Users with feedback per variant before any decision is made (users)."
    )
    horizon_users: int = Field(
        2000, ge=1, description="Exposed users per variant at which an undecided experiment ends, control kept (users)."
    )
    horizon_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Duration after which an undecided experiment ends, control kept (seconds)."
    )
    decide_every_s: float = Field(
        30.0, gt=0, description="Interval at which the decider analyses each open experiment (seconds)."
    )

    @model_validator(mode="after")
    def _unique_variants(self) -> ABTestingSettings:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or len(names) < 2:
            raise ValueError(f"variants need at least two distinct names, got {names}")
        return self
