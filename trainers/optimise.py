"""`optimise_policy`: the one entry point the trainer consumer, the CLI and the benchmarks call for
every algorithm (PPO in `trainers.ppo`; GRPO / RLOO / KTO / DPO in `trainers.alternatives`).

It loads the starting policy, evaluates it on held-out queries, trains, evaluates the result with
the same fixed-seed draws, applies the guardrails to the trained policy as a whole, and saves it
atomically. A trained policy the guardrails reject raises GuardrailRejection (an outcome the
caller records); anything that keeps training from happening raises TrainingError.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.errors import GuardrailRejection, TrainingError
from core.files import write_atomically
from core.learning_settings import ALGORITHMS, PolicyTrainingSettings
from core.settings import FeedbackSettings
from schemas.events import FeedbackEvent
from trainers import distributed
from trainers.alternatives import train_alternative
from trainers.chat_format import Prompt
from trainers.demonstrations import corrections, fit_demonstrations
from trainers.guardrails import check_guardrails
from trainers.policy import RewardFn, StatusFn, evaluate_policy, load_policy, no_status
from trainers.policy_config import with_adapters
from trainers.ppo import train_ppo


def optimise_policy(
    algorithm: str,
    base_model_path: str,
    reward_fn: RewardFn,
    train_queries: Sequence[Prompt],
    eval_queries: Sequence[Prompt],
    config: PolicyTrainingSettings,
    out_dir: str | Path,
    on_status: StatusFn = no_status,
    feedback_events: Sequence[FeedbackEvent] | None = None,
    *,
    seed: int = 0,
    min_rating: int = FeedbackSettings().min_rating,
    gate_fn: RewardFn | None = None,
    original_path: str | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train a new policy for the one at `base_model_path` (the parent, serving now) with
    `algorithm`, evaluate it against the parent on `eval_queries`, and save it (save_pretrained,
    atomically; an existing `out_dir` is replaced) to `out_dir`. The queries are prompts: questions
    in their conversations (`trainers.chat_format.Prompt`), as `reward_fn` receives them.

    `original_path` is the policy the loop started from: training restarts from it under
    `config.start_from == "base"`, PPO's KL is held to it under `config.reference == "base"`, and
    the candidate's KL to it is reported (`kl_base`) and bounded (`kl_base_bound`). `gate_fn` is
    a reward the policy is not trained against (a held-out reward head): the evaluation reports
    it beside `reward_fn`'s (`gate_reward_before/after`). `feedback_events` feed KTO (thumbs) and
    DPO (pairs), and give PPO the users' corrections as demonstrations; without them those two
    label the starting policy's own samples with `reward_fn`. `checkpoint_dir` makes a PPO run
    resumable (`train_ppo`); the TRL algorithms do not use it. `seed` seeds training (evaluation
    always draws the same samples); `min_rating` is `feedback.min_rating`, for KTO / DPO. Returns floats
    (mean_reward_before/after, reward_gain, kl, kl_parent, kl_base, mean_length, rollbacks, ...)
    plus `guardrails_fired` (empty: a final policy that fails a guardrail raises instead) and `out_dir`."""
    if algorithm not in ALGORITHMS:
        raise TrainingError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    out_dir = Path(out_dir)
    started = time.monotonic()
    try:
        original_path = original_path or base_model_path
        start_path = original_path if config.start_from == "base" else base_model_path
        on_status("started", "load", f"{algorithm} from {start_path}", {})
        parent, tokenizer = load_policy(base_model_path)
        parent.requires_grad_(False).eval()
        original = parent if original_path == base_model_path else load_policy(original_path)[0].requires_grad_(False).eval()
        lm = copy.deepcopy(original if start_path == original_path else parent).requires_grad_(True)
        # SFT then RL: the users' corrections first, as supervised passes (`demo_epochs`); the
        # start PPO's KL is held to is then the fine-tuned model (or the original, `reference: base`).
        demos = corrections(feedback_events or ()) if algorithm == "ppo" else []
        lm, demo_loss = _fit_corrections(lm, tokenizer, demos, config, seed, on_status)
        start = (
            copy.deepcopy(lm).requires_grad_(False).eval()
            if demos and config.demo_epochs
            else (original if start_path == original_path else parent)
        )
        reference = original if config.reference == "base" else start
        evaluate = lambda model: evaluate_policy(  # noqa: E731 - the same settings before and after
            model,
            tokenizer,
            reward_fn,
            eval_queries,
            reference=reference,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            samples_per_query=config.eval_samples_per_query,
            gate_fn=gate_fn,
            others={"parent": parent, "base": original},
        )
        on_status("progress", "eval_before", f"evaluating the serving policy on {len(eval_queries)} held-out queries", {})
        before = evaluate(parent)
        on_status(
            "progress",
            "eval_before",
            f"serving policy: mean reward {before.mean_reward:.4f}",
            {"mean_reward_before": before.mean_reward},
        )

        train_started = time.monotonic()
        start_length = before.mean_length  # what the length guardrails judge against (for PPO: see below)
        if algorithm == "ppo":
            # With LoRA, `lm` with its adapters switched off *is* `start`: PPO then takes its KL
            # reference from there (the weights it trains on, no second model in the step) rather
            # than from `start`, which stays for the evaluations only. A reference other than the
            # start (`reference: base`) is passed as before.
            ppo_reference = None if config.lora_r and reference is start else reference
            lm, result = train_ppo(
                lm,
                tokenizer,
                reward_fn,
                train_queries,
                config,
                seed=seed,
                reference=ppo_reference,
                on_status=on_status,
                demonstrations=demos,
                checkpoint_dir=checkpoint_dir,
            )
            # Where PPO started: after the corrections' SFT, users who corrected a rambling model
            # asked for shorter answers, so lengths are judged against PPO's first rollout.
            start_length = result.start_length if math.isfinite(result.start_length) else start_length
            # A rolled-back update is a guardrail that worked: training goes on (or stops early) from
            # the last good policy, counted in `rollbacks`. What the gate must not trust is a final
            # policy that fails the guardrails itself: checked on the evaluation below.
            extra = {
                "iterations": float(result.iterations),
                "rollbacks": float(result.rollbacks),
                "kl_coef": result.kl_coef,
                "stopped_early": float(result.stopped_early),
                "demonstrations": float(len(demos)),
                "demo_loss": demo_loss,
                "disagreement_first": result.disagreement_first,
                "disagreement_last": result.disagreement_last,
            }
        else:
            lm, extra = train_alternative(
                algorithm,
                lm,
                tokenizer,
                reward_fn,
                train_queries,
                config,
                seed=seed,
                min_rating=min_rating,
                feedback_events=feedback_events,
                on_status=on_status,
            )
        train_seconds = time.monotonic() - train_started

        after = evaluate(lm)
        # The whole job is one last update to check: an alternative has no per-step rollback.
        problems = check_guardrails(after.guardrail_stats(), start_length, config)
        kl_to = after.kl_to or {}
        if kl_to.get("base", 0.0) > config.kl_base_bound:
            problems.append("kl_base_bound")
        metrics: dict[str, Any] = {
            "mean_reward_before": before.mean_reward,
            "mean_reward_after": after.mean_reward,
            "reward_gain": after.mean_reward / before.mean_reward - 1.0 if before.mean_reward else float("nan"),
            "kl": after.kl,
            "kl_parent": kl_to.get("parent", float("nan")),
            "kl_base": kl_to.get("base", float("nan")),
            "mean_length_before": before.mean_length,
            "mean_length": after.mean_length,
            "repetition": after.repetition,
            "eval_samples": float(after.n),
            "train_seconds": train_seconds,
            **extra,
        }
        if gate_fn is not None:
            metrics.update(gate_reward_before=before.gate_reward, gate_reward_after=after.gate_reward)
        if problems:
            on_status("guardrail", "eval_after", f"trained policy rejected: {'; '.join(problems)}", _floats(metrics))
            raise GuardrailRejection(
                f"{algorithm}: trained policy failed guardrails {problems} (kl {after.kl:.3f}, kl to base "
                f"{kl_to.get('base', 0.0):.3f}, length {after.mean_length:.1f})"
            )
        if distributed.is_main():  # under torchrun every process holds the same weights: one writes them
            write_atomically(out_dir, lambda tmp: (lm.save_pretrained(tmp), tokenizer.save_pretrained(tmp)), replace=True)
        metrics.update(guardrails_fired=[], out_dir=str(out_dir), algorithm=algorithm, wall_seconds=time.monotonic() - started)
        on_status(
            "finished", "save", f"{algorithm}: mean reward {before.mean_reward:.4f} -> {after.mean_reward:.4f}", _floats(metrics)
        )
        return metrics
    except Exception as exc:
        on_status("failed", "train", f"{type(exc).__name__}: {exc}"[:4000], {})
        raise


def _fit_corrections(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    demos: Sequence[tuple[Prompt, str]],
    config: PolicyTrainingSettings,
    seed: int,
    on_status: StatusFn,
) -> tuple[PreTrainedModel, float]:
    """The users' corrections as supervised passes (`demo_epochs`, at most `demo_max_steps` steps);
    returns the fitted model and the last epoch's loss. Under LoRA only adapters learn, merged
    afterwards: a full fine-tune of a real chat model on a few dozen corrections would overwrite
    what it knew."""
    if not demos or not config.demo_epochs:
        return lm, float("nan")
    # Minutes on a real chat model: said when they start, as the stages after them are.
    on_status("progress", "corrections", f"supervised passes over {len(demos)} corrections", {})
    lm = with_adapters(lm, config)
    loss = fit_demonstrations(
        lm,
        tokenizer,
        demos,
        epochs=config.demo_epochs,
        batch_size=config.mini_batch_size,
        learning_rate=config.demo_learning_rate,
        seed=seed,
        max_steps=config.demo_max_steps,
    )
    return (lm.merge_and_unload().requires_grad_(True) if config.lora_r else lm), loss  # type: ignore[operator]  # a PeftModel's


def gate_verdict(metrics: dict[str, Any], margin: float) -> tuple[bool, str]:
    """Does a trained policy go to users? Its held-out reward must beat the parent's by `margin`
    (relative), judged by the gate's reward, which the policy was not optimised against, when the
    reward model has a gate head, else by the training reward. Returns (passed, reason)."""
    gated = metrics.get("gate_reward_before") is not None
    what = "gate reward" if gated else "mean reward"
    before, after = (
        (metrics["gate_reward_before"], metrics["gate_reward_after"])
        if gated
        else (metrics["mean_reward_before"], metrics["mean_reward_after"])
    )
    passed = after > before + abs(before) * margin
    reason = f"held-out {what} {before:.3f} -> {after:.3f}" + (
        "" if passed else f": not better than the parent by the {margin:.0%} margin"
    )
    return passed, reason


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric part of `metrics`, as TrainingStatus events carry it."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
