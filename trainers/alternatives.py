"""The policy-optimisation alternatives TRL still maintains, behind the same entry point as PPO
(`trainers.optimise.optimise_policy`, `policy.algorithm: grpo | rloo | kto | dpo` in the config):

- GRPO / RLOO: online, `num_generations` samples per query scored by the reward function; the
  group (GRPO) or leave-one-out (RLOO) mean is the baseline, so no value head is needed.
- KTO: offline, straight from thumbs up / down (the natural fit for binary feedback).
- DPO: offline, from preference pairs in the same conversation (the same earlier turns and question).

KTO and DPO take their examples from feedback events when given; otherwise they label the
starting policy's own samples with the reward function (above / below the median for KTO; each
sample preferred over the worse ones to the same query for DPO), which keeps `optimise_policy`
usable with a reward model alone. Self-labelling draws `epochs * batch_size` samples, the rollout
budget PPO gets, so the algorithms are compared at equal sampling cost.

Every example is a question in its conversation: feedback gives `Conversation.of(event)`, the
online algorithms sample the prompts they are given (`trainers.chat_format.Prompt`), and the prompt
text holds the system prompt and the earlier turns, from `trainers.chat_format`: the policy's chat
template when its tokenizer has one, else the plain multi-turn format (`Query: ...\nResponse:`
for a one-turn conversation).

CPU runs fp32 without gradient checkpointing (TRL's bf16 / checkpointing defaults fail or crawl
there); a GPU runs bf16. The device is picked automatically.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from core.errors import GuardrailRejection, TrainingError
from core.learning_settings import PolicyTrainingSettings
from core.settings import FeedbackSettings
from schemas.events import FeedbackEvent, latest_verdicts
from trainers import distributed
from trainers.chat_format import Conversation, Prompt, as_conversation, format_completion, format_prompt
from trainers.device import pick_device, use_bf16
from trainers.policy import RewardFn, StatusFn, generate, no_status, step_metrics
from trainers.policy_config import lora_config

# Offline examples drawn per training query when KTO / DPO label the policy's own samples.
SELF_LABEL_SAMPLES = 4


class _StatusCallback(TrainerCallback):
    """Forwards TRL's logs as progress and stops training on a non-finite loss (the guardrail
    an offline trainer can apply mid-run; the whole result is then rejected)."""

    def __init__(self, algorithm: str, on_status: StatusFn) -> None:
        self.algorithm = algorithm
        self.on_status = on_status
        self.non_finite = False
        self.last: dict[str, float] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.last = metrics or self.last
        if "loss" in metrics and not math.isfinite(metrics["loss"]):
            self.non_finite = True
            control.should_training_stop = True
            self.on_status("guardrail", self.algorithm, f"step {state.global_step}: non-finite loss; stopping", metrics)
            return
        progress = {**metrics, **step_metrics(state.global_step, state.max_steps)}
        self.on_status("progress", self.algorithm, f"step {state.global_step}/{state.max_steps}", progress)


def _reward_for_trl(reward_fn: RewardFn, queries: Sequence[Prompt]):
    """TRL calls reward functions with the formatted prompts, the completions and every extra
    dataset column as keyword arguments; the `index` column says which of `queries` a row is, so
    `reward_fn` sees the prompt it was given (its conversation included), not the formatted text."""

    def reward(prompts: list[str], completions: list[str], index: list[int], **_: Any) -> list[float]:
        return [float(r) for r in reward_fn([queries[i] for i in index], [c.strip() for c in completions])]

    return reward


def _common_args(config: PolicyTrainingSettings, seed: int, output_dir: str) -> dict[str, Any]:
    device = pick_device()
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": _per_process_batch(config.batch_size),
        "learning_rate": config.learning_rate,
        "max_grad_norm": config.max_grad_norm,
        "seed": seed,
        "bf16": use_bf16(device),
        "use_cpu": device.type == "cpu",
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
    }


def _per_process_batch(batch_size: int) -> int:
    """Under torchrun (`policy.processes`), TRL's trainer runs data-parallel through accelerate: each
    process takes every Nth slice of the one-process batch order and DDP averages the gradients, so
    a process's share of `batch_size` keeps each optimiser step the one-process step. (Not an
    epoch's last, partial batch: accelerate evens it out by repeating examples in a process.)"""
    world = distributed.world()
    if batch_size % world:
        raise TrainingError(f"policy.training.batch_size {batch_size} does not split over policy.processes {world}")
    return batch_size // world


# ----------------------------------------------------------------------------- data for KTO / DPO


def judgements(events: Sequence[FeedbackEvent], min_rating: int) -> list[tuple[Conversation, str, bool]]:
    """(conversation, response, liked) from feedback: thumbs and ratings liked when positive
    (`FeedbackEvent.is_positive`), and corrections (the correction is liked, the answer it
    corrected is not); of a user's changed mind, the latest verdict."""
    out = []
    for e in latest_verdicts(events):
        conversation = Conversation.of(e)
        if e.feedback_type == "correction" and e.correction:
            out += [(conversation, e.correction, True), (conversation, e.response, False)]
        else:
            out.append((conversation, e.response, e.is_positive(min_rating)))
    return out


def kto_examples(
    events: Sequence[FeedbackEvent], min_rating: int, tokenizer: PreTrainedTokenizerBase | None = None
) -> list[dict[str, Any]]:
    """KTO rows (prompt, completion, label): one per judgement, the conversation in `tokenizer`'s chat format."""
    return [
        {"prompt": format_prompt(tokenizer, q), "completion": format_completion(tokenizer, r), "label": liked}
        for q, r, liked in judgements(events, min_rating)
    ]


def dpo_pairs(
    events: Sequence[FeedbackEvent], min_rating: int, tokenizer: PreTrainedTokenizerBase | None = None
) -> list[dict[str, str]]:
    """DPO rows (prompt, chosen, rejected): every liked answer against every disliked answer in the
    same conversation (so a correction is preferred over the answer it corrected); the same last
    question after other earlier turns is another conversation."""
    liked: dict[Conversation, dict[str, None]] = defaultdict(dict)  # dicts as ordered sets: stable, deduplicated
    disliked: dict[Conversation, dict[str, None]] = defaultdict(dict)
    for q, r, good in judgements(events, min_rating):
        (liked if good else disliked)[q][r] = None
    return [
        {
            "prompt": format_prompt(tokenizer, q),
            "chosen": format_completion(tokenizer, good),
            "rejected": format_completion(tokenizer, bad),
        }
        for q, goods in liked.items()
        for good in goods
        for bad in disliked.get(q, {})
        if good != bad
    ]


def _self_labelled(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: RewardFn,
    queries: Sequence[Prompt],
    config: PolicyTrainingSettings,
    seed: int,
) -> dict[Prompt, list[tuple[str, float]]]:
    """SELF_LABEL_SAMPLES scored samples of the starting policy per query, for a seeded draw of
    queries worth `epochs * batch_size` samples in all (PPO's rollout budget)."""
    n_queries = max(1, config.epochs * config.batch_size // SELF_LABEL_SAMPLES)
    drawn = random.Random(seed).sample(list(queries), min(n_queries, len(queries)))
    repeated = [q for q in drawn for _ in range(SELF_LABEL_SAMPLES)]
    scored: dict[Prompt, list[tuple[str, float]]] = defaultdict(list)
    torch.manual_seed(seed)
    for i in range(0, len(repeated), 64):
        ro = generate(
            lm,
            tokenizer,
            repeated[i : i + 64],
            reward_fn,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
        )
        for q, r, s in zip(ro.queries, ro.responses, ro.scores.tolist(), strict=True):
            scored[q].append((r, s))
    return scored


def kto_weights(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """desirable_weight / undesirable_weight that make both sides weigh the same in the loss; the
    KTO paper (and TRL's warning) want desirable x n_D / (undesirable x n_U) in [1, 4/3]."""
    n_good = sum(1 for r in rows if r["label"])
    n_bad = len(rows) - n_good
    if n_good < n_bad:
        return {"desirable_weight": n_bad / n_good, "undesirable_weight": 1.0}
    return {"desirable_weight": 1.0, "undesirable_weight": n_good / n_bad}


def _self_labelled_kto(
    scored: dict[Prompt, list[tuple[str, float]]], tokenizer: PreTrainedTokenizerBase | None = None
) -> list[dict[str, Any]]:
    # The median is scale-free: a reward model's scores have no fixed threshold of "good".
    median = statistics.median(s for samples in scored.values() for _, s in samples)
    return [
        {"prompt": format_prompt(tokenizer, q), "completion": format_completion(tokenizer, r), "label": s > median}
        for q, samples in scored.items()
        for r, s in samples
    ]


def _self_labelled_dpo(
    scored: dict[Prompt, list[tuple[str, float]]], tokenizer: PreTrainedTokenizerBase | None = None
) -> list[dict[str, str]]:
    # Every strictly better sample over every worse one of the same query: up to 6 pairs from 4
    # samples rather than only best-versus-worst, which leaves DPO too few pairs to move.
    return [
        {
            "prompt": format_prompt(tokenizer, q),
            "chosen": format_completion(tokenizer, good),
            "rejected": format_completion(tokenizer, bad),
        }
        for q, samples in scored.items()
        for good, s_good in samples
        for bad, s_bad in samples
        if s_good > s_bad and good != bad
    ]


# ----------------------------------------------------------------------------- training


def train_alternative(
    algorithm: str,
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: RewardFn,
    train_queries: Sequence[Prompt],
    config: PolicyTrainingSettings,
    *,
    seed: int = 0,
    min_rating: int = FeedbackSettings().min_rating,
    feedback_events: Sequence[FeedbackEvent] | None = None,
    on_status: StatusFn = no_status,
) -> tuple[PreTrainedModel, dict[str, float]]:
    """Train `lm` with TRL's `algorithm` (grpo, rloo, kto, dpo); returns the trained model (LoRA
    merged) and a few figures (steps, final loss, examples used). `seed` seeds TRL and the
    self-labelled samples; `min_rating` (`feedback.min_rating`) makes a rating a thumbs up for KTO
    and DPO. Raises TrainingError when there is nothing to learn from, GuardrailRejection when the
    loss went non-finite."""
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, KTOConfig, KTOTrainer, RLOOConfig, RLOOTrainer

    if not train_queries and not feedback_events:
        raise TrainingError(f"{algorithm}: no training queries or feedback")
    callback = _StatusCallback(algorithm, on_status)
    with tempfile.TemporaryDirectory(prefix=f"rlhf-{algorithm}-") as scratch:
        common = _common_args(config, seed, scratch)
        if algorithm in ("grpo", "rloo"):
            online: dict[str, Any] = {
                "num_generations": config.num_generations,
                "max_completion_length": config.max_new_tokens,
                "temperature": config.temperature,
                "top_p": config.top_p,
                "beta": config.kl_coef,
                # `epochs` generation rounds, each optimised `ppo_epochs` times, as PPO does.
                "num_iterations": config.ppo_epochs,
                "max_steps": config.epochs * config.ppo_epochs,
            }
            # TRL's config and trainer classes share no base that types their keyword arguments.
            args_cls: Any
            trainer_cls: Any
            args_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if algorithm == "grpo" else (RLOOConfig, RLOOTrainer)
            data = Dataset.from_dict(
                {
                    "prompt": [format_prompt(tokenizer, q) for q in train_queries],  # the conversation, formatted
                    "query": [as_conversation(q).query for q in train_queries],  # the question, for people
                    "index": list(range(len(train_queries))),  # which prompt: what the reward function scores
                }
            )
            trainer = trainer_cls(
                model=lm,
                reward_funcs=_reward_for_trl(reward_fn, train_queries),
                args=args_cls(**common, **online),
                train_dataset=data,
                processing_class=tokenizer,
                callbacks=[callback],
                peft_config=lora_config(config),
            )
            n_examples = len(data)
        elif algorithm in ("kto", "dpo"):
            source = "feedback" if feedback_events else "self-labelled samples"
            if feedback_events:
                make = kto_examples if algorithm == "kto" else dpo_pairs
                rows = make(feedback_events, min_rating, tokenizer)
            else:
                scored = _self_labelled(lm, tokenizer, reward_fn, train_queries, config, seed)
                rows = _self_labelled_kto(scored, tokenizer) if algorithm == "kto" else _self_labelled_dpo(scored, tokenizer)
            if not rows:
                raise TrainingError(
                    f"{algorithm}: no usable examples in the {source}"
                    + (" (no query has a liked and a disliked answer)" if algorithm == "dpo" else "")
                )
            if algorithm == "kto" and len({r["label"] for r in rows}) < 2:
                only = "desirable" if rows[0]["label"] else "undesirable"
                raise TrainingError(f"kto: needs both desirable and undesirable examples; the {source} gave only {only} ones")
            offline = {
                "num_train_epochs": config.offline_epochs,
                "beta": config.preference_beta,
                **(kto_weights(rows) if algorithm == "kto" else {}),
            }
            args_cls, trainer_cls = (KTOConfig, KTOTrainer) if algorithm == "kto" else (DPOConfig, DPOTrainer)
            trainer = trainer_cls(
                model=lm,
                args=args_cls(**common, **offline),
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                callbacks=[callback],
                peft_config=lora_config(config),
            )
            n_examples = len(rows)
        else:
            raise TrainingError(f"unknown alternative algorithm {algorithm!r}")
        trainer.remove_callback(PrinterCallback)  # progress goes through on_status, not stdout
        on_status("progress", algorithm, f"{algorithm}: {n_examples} examples", {"examples": float(n_examples)})
        trainer.train()
    if callback.non_finite:
        raise GuardrailRejection(f"{algorithm}: non-finite loss at step {trainer.state.global_step}; result rejected")
    model = trainer.model
    if hasattr(model, "merge_and_unload"):  # LoRA: hand back a plain model
        model = model.merge_and_unload()
    model.eval()
    return model, {
        "steps": float(trainer.state.global_step),
        "examples": float(n_examples),
        "train_loss": callback.last.get("train_loss", float("nan")),
    }
