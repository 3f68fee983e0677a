"""`optimise_policy`: the one entry point the trainer consumer, the CLI and the benchmarks call for
every algorithm (PPO in `trainers.ppo`; GRPO / RLOO / KTO / DPO in `trainers.alternatives`).

It loads the starting policy, evaluates it on held-out queries, trains, evaluates the result with
the same fixed-seed draws, applies the guardrails to the trained policy as a whole, and saves it
atomically. A trained policy the guardrails reject raises GuardrailRejection (an outcome the
caller records); anything that keeps training from happening raises TrainingError.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.errors import GuardrailRejection, TrainingError
from core.files import write_atomically
from core.settings import ALGORITHMS
from schemas.events import FeedbackEvent
from trainers.alternatives import train_alternative
from trainers.policy import RewardFn, StatusFn, evaluate_policy, load_policy, no_status
from trainers.policy_config import PolicyTrainingConfig
from trainers.ppo import check_guardrails, train_ppo


def optimise_policy(
    algorithm: str,
    base_model_path: str,
    reward_fn: RewardFn,
    train_queries: Sequence[str],
    eval_queries: Sequence[str],
    config: PolicyTrainingConfig,
    out_dir: str | Path,
    on_status: StatusFn = no_status,
    feedback_events: Sequence[FeedbackEvent] | None = None,
) -> dict[str, Any]:
    """Train a new policy from `base_model_path` with `algorithm`, evaluate it against the starting
    policy on `eval_queries`, and save it (save_pretrained, atomically; an existing `out_dir` is
    replaced) to `out_dir`.

    `feedback_events` feed KTO (thumbs) and DPO (pairs); without them those two label the
    starting policy's own samples with `reward_fn`. Returns floats (mean_reward_before/after,
    reward_gain, kl, mean_length, rollbacks, ...) plus `guardrails_fired` (empty: a final policy
    that fails a guardrail raises instead) and `out_dir`."""
    if algorithm not in ALGORITHMS:
        raise TrainingError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    out_dir = Path(out_dir)
    started = time.monotonic()
    try:
        on_status("started", "load", f"{algorithm} from {base_model_path}", {})
        lm, tokenizer = load_policy(base_model_path)
        reference = copy.deepcopy(lm).requires_grad_(False).eval()
        evaluate = lambda model: evaluate_policy(  # noqa: E731 - the same settings before and after
            model, tokenizer, reward_fn, eval_queries, reference=reference, max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, top_p=config.top_p, samples_per_query=config.eval_samples_per_query, seed=config.eval_seed,
        )  # fmt: skip
        before = evaluate(lm)
        on_status("progress", "eval_before", f"starting policy: mean reward {before.mean_reward:.4f}", {"mean_reward_before": before.mean_reward})

        train_started = time.monotonic()
        if algorithm == "ppo":
            lm, result = train_ppo(lm, tokenizer, reward_fn, train_queries, config, reference=reference, on_status=on_status)
            # A rolled-back update is a guardrail that worked: training goes on (or stops early) from
            # the last good policy, counted in `rollbacks`. What the gate must not trust is a final
            # policy that fails the guardrails itself: checked on the evaluation below.
            extra = {"iterations": float(result.iterations), "rollbacks": float(result.rollbacks), "kl_coef": result.kl_coef,
                     "stopped_early": float(result.stopped_early)}  # fmt: skip
        else:
            lm, extra = train_alternative(algorithm, lm, tokenizer, reward_fn, train_queries, config, feedback_events=feedback_events, on_status=on_status)
        train_seconds = time.monotonic() - train_started

        after = evaluate(lm)
        # The whole job is one last update to check: an alternative has no per-step rollback.
        problems = check_guardrails(asdict(after), before.mean_length, config)
        metrics: dict[str, Any] = {
            "mean_reward_before": before.mean_reward, "mean_reward_after": after.mean_reward,
            "reward_gain": after.mean_reward / before.mean_reward - 1.0 if before.mean_reward else float("nan"),
            "kl": after.kl, "mean_length_before": before.mean_length, "mean_length": after.mean_length,
            "repetition": after.repetition, "eval_samples": float(after.n), "train_seconds": train_seconds, **extra,
        }  # fmt: skip
        if problems:
            on_status("guardrail", "eval_after", f"trained policy rejected: {'; '.join(problems)}", _floats(metrics))
            raise GuardrailRejection(f"{algorithm}: trained policy failed guardrails {problems} (kl {after.kl:.3f}, length {after.mean_length:.1f})")
        write_atomically(out_dir, lambda tmp: (lm.save_pretrained(tmp), tokenizer.save_pretrained(tmp)), replace=True)
        metrics.update(guardrails_fired=[], out_dir=str(out_dir), algorithm=algorithm, wall_seconds=time.monotonic() - started)
        on_status("finished", "save", f"{algorithm}: mean reward {before.mean_reward:.4f} -> {after.mean_reward:.4f}", _floats(metrics))
        return metrics
    except Exception as exc:
        on_status("failed", "train", f"{type(exc).__name__}: {exc}"[:4000], {})
        raise


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric part of `metrics`, as TrainingStatus events carry it."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
