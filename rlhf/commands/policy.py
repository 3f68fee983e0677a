"""Policy subcommands: train with PPO (or GRPO / RLOO / KTO / DPO), evaluate a saved policy, ask a
policy one question, build the tiny offline policy.

    rlhf policy train --algorithm ppo --synthetic --out /tmp/p            # the generated world, its hidden preference as reward
    rlhf policy train --algorithm kto --reward-model RM_DIR --data feedback.jsonl --out /tmp/p
    rlhf policy eval --model /tmp/p --reference tiny --synthetic
    rlhf policy chat --model smollm2 "How do I reset my password in Mail?"   # or tiny, a registry version, a path
    rlhf policy build-tiny --out /tmp/tiny

`--synthetic` trains on the generated support questions (train / held-out split of
`trainers.synthetic`) with the hidden preference as reward; KTO and DPO then label the starting
policy's own samples. `--reward-model DIR --data FILE` uses a reward model saved by `rlhf reward
train` (its sigmoid, as the trainer consumer does) and the queries of FILE (JSONL, one
FeedbackEvent per line), split train / held-out by a stable hash; KTO and DPO learn from FILE's
thumbs, ratings and corrections. Hyperparameters come from `policy:` in rlhf.yaml (RLHF_POLICY__*).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import ConfigError, ModelLoadError, RlhfError, TrainingError
from core.learning_settings import ALGORITHMS
from rlhf.arguments import command, group, settings_of


def _quiet() -> None:
    # Weight-loading, shard-writing and dataset-mapping bars would bury our own progress bar.
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _existing(path: str, what: str, *, directory: bool) -> Path:
    p = Path(path)
    if directory and not p.is_dir():
        raise ModelLoadError(f"{p}: {what} not found (no such directory)")
    if not directory and not p.is_file():
        raise ConfigError(f"{p}: {what} not found (no such file)")
    return p


def _policy_path(name_or_path: str, what: str) -> str:
    """A name `trainers.base_models` knows (`tiny`, `smollm2`), an existing directory or .gguf
    file, or something shaped like a Hub id (`org/name`); a path that does not exist is an error
    here rather than a confusing Hub lookup."""
    from trainers.base_models import NAMED, is_hub_id

    path = Path(name_or_path).expanduser()
    if name_or_path in NAMED or path.is_dir() or (path.suffix == ".gguf" and path.is_file()):
        return name_or_path
    if (
        "/" in name_or_path and path.suffix != ".gguf" and is_hub_id(name_or_path)
    ):  # `runs/missing`, with a local runs/, is a path
        return name_or_path
    raise ModelLoadError(f"{name_or_path}: {what} not found (no such directory or file, and not a Hub id)")


def _chat_model(name: str, args: argparse.Namespace) -> str:
    """A registry version of the policy (its directory), else whatever `_policy_path` accepts."""
    from registry.store import ModelRegistry

    settings = settings_of(args)
    if "/" not in name and (settings.registry.url or settings.registry_path.is_dir()):
        registry = ModelRegistry.of(settings)
        if registry.exists("policies", name):
            return str(registry.path("policies", name))
    return _policy_path(name, "policy")


def _events(path: Path) -> list:
    from schemas.events import FeedbackEvent, parse_event
    from trainers.dataset import read_jsonl

    events: list[FeedbackEvent] = []
    invalid = 0
    for line in read_jsonl(path):
        try:
            events.append(parse_event(FeedbackEvent, line))
        except RlhfError:
            invalid += 1
    if invalid:
        print(f"{path}: skipped {invalid} invalid line(s)", file=sys.stderr)
    if not events:
        raise ConfigError(f"{path}: no valid FeedbackEvent lines")
    return events


def _task(args: argparse.Namespace, eval_fraction: float) -> dict[str, Any]:
    """reward_fn, train / held-out queries and (for KTO / DPO) feedback events, from the flags."""
    if args.synthetic:
        from trainers.synthetic import quality_reward, split_questions

        train, held_out = ([q.text for q in qs] for qs in split_questions())
        return {
            "reward_fn": quality_reward,
            "train": train,
            "held_out": held_out,
            "events": None,
            "reward": "synthetic hidden preference",
        }
    if not args.reward_model or not args.data:
        raise ConfigError("give --synthetic, or both --reward-model DIR and --data FILE")
    from trainers.dataset import split_policy_queries
    from trainers.reward_model import RewardModel

    rm = RewardModel.load(_existing(args.reward_model, "reward model", directory=True))
    events = _events(_existing(args.data, "feedback file", directory=False))
    try:
        conversations = split_policy_queries(events, eval_fraction)
    except TrainingError as exc:  # the file's fault: say which file
        raise ConfigError(f"{args.data}: {exc}") from None
    return {
        "reward_fn": rm.reward,
        "train": conversations[0],
        "held_out": conversations[1],
        "events": events,
        "reward": f"reward model {args.reward_model}",
    }


def _train(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from trainers.optimise import optimise_policy

    settings = settings_of(args)
    algorithm = args.algorithm or settings.policy.algorithm
    base = _policy_path(args.base_model or settings.policy.base_model, "base policy")
    out = Path(args.out) if args.out else settings.home / "policies" / datetime.now(UTC).strftime(f"{algorithm}-%Y%m%dT%H%M%SZ")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: already exists and is not an empty directory; choose another --out")
    config = settings.policy.training
    config = config.updated(epochs=args.epochs) if args.epochs is not None else config
    task = _task(args, settings.reward_model.training.eval_fraction)
    _quiet()
    print(
        f"{algorithm}: {base}, {len(task['train'])} training / {len(task['held_out'])} held-out queries, reward: {task['reward']}"
    )

    with tqdm(desc=algorithm, unit="step", dynamic_ncols=True) as bar:

        def on_status(state: str, stage: str, message: str, metrics: dict[str, float]) -> None:
            if state == "progress" and stage == algorithm and "steps" in metrics:  # trainers.policy.step_metrics
                bar.total = int(metrics["steps"])
                bar.update(int(metrics["step"]) - bar.n)
                shown = {k: metrics[k] for k in ("mean_score", "reward", "kl", "loss") if k in metrics}
                bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()}, refresh=False)
            elif state == "guardrail":
                bar.write(f"guardrail: {message}")
            elif state in ("started", "progress"):
                bar.set_description(f"{algorithm} ({stage})")

        metrics = optimise_policy(
            algorithm,
            base,
            task["reward_fn"],
            task["train"],
            task["held_out"],
            config,
            out,
            on_status=on_status,
            feedback_events=task["events"] if algorithm in ("kto", "dpo") else None,
            seed=args.seed or 0,
            min_rating=settings.feedback.min_rating,
        )
    print(summary(metrics, config.kl_bound))


def summary(m: dict[str, Any], kl_bound: float) -> str:
    """The figures a person checks after a training job, one per line."""
    fired = ", ".join(m.get("guardrails_fired") or []) or "none"
    return "\n".join(
        [
            f"policy      {m['out_dir']} ({m['algorithm']})",
            f"mean reward {m['mean_reward_before']:.4f} -> {m['mean_reward_after']:.4f}"
            f" on {int(m['eval_samples'])} held-out samples",
            f"gain        {m['reward_gain']:+.1%}"
            if math.isfinite(m["reward_gain"])
            else "gain        n/a (the starting policy's mean reward is 0)",
            f"KL to start {m['kl']:.4f} nats/token (bound {kl_bound})",
            f"length      {m['mean_length_before']:.1f} -> {m['mean_length']:.1f} tokens",
            f"time        {m['train_seconds']:.1f} s training, {m['wall_seconds']:.1f} s in all",
            f"guardrails  {fired}",
        ]
    )


def _eval(args: argparse.Namespace) -> None:
    from trainers.policy import evaluate_policy, load_policy

    settings = settings_of(args)
    config = settings.policy.training
    model = _policy_path(args.model, "policy")
    reference = _policy_path(args.reference, "reference policy") if args.reference else None
    task = _task(args, settings.reward_model.training.eval_fraction)
    _quiet()
    lm, tokenizer = load_policy(model)
    ref = load_policy(reference)[0] if reference else None
    result = evaluate_policy(
        lm,
        tokenizer,
        task["reward_fn"],
        task["held_out"],
        reference=ref,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        samples_per_query=config.eval_samples_per_query,
    )
    figures = {
        "mean_reward": result.mean_reward,
        "mean_length": result.mean_length,
        "repetition": result.repetition,
        "samples": result.n,
    }
    if ref is not None:
        figures["kl"] = result.kl
    print(json.dumps({"model": model, "reference": reference, "reward": task["reward"], "eval": figures}, indent=2))


def _chat(args: argparse.Namespace) -> None:
    import torch

    from trainers.policy import load_policy, sample

    settings = settings_of(args)
    model = _chat_model(args.model, args)
    _quiet()
    lm, tokenizer = load_policy(model)
    temperature = settings.assistant.temperature if args.temperature is None else args.temperature
    torch.manual_seed(args.seed)
    answer = sample(
        lm.eval(),
        tokenizer,
        [args.question],
        max_new_tokens=args.max_new_tokens,
        temperature=temperature or 1.0,
        top_p=settings.assistant.top_p,
        greedy=temperature == 0,
    ).responses[0]
    print(answer)


def _build_tiny(args: argparse.Namespace) -> None:
    from trainers.tiny_policy import build_tiny_policy

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: already exists and is not an empty directory")
    _quiet()
    print(f"tiny policy written to {build_tiny_policy(out)}")


def _add_task_options(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--synthetic", action="store_true", help="generated questions, their hidden preference as the reward")
    source.add_argument("--reward-model", metavar="DIR", help="a reward model directory written by `rlhf reward train`")
    p.add_argument(
        "--data", metavar="FILE", help="JSONL of FeedbackEvents: the queries (and KTO/DPO examples); with --reward-model"
    )


def register(sub: argparse._SubParsersAction) -> None:
    policy = group(sub, "policy", "Policy: optimise with PPO / GRPO / RLOO / KTO / DPO, evaluate, build the tiny offline policy.")
    p = command(policy, "train", "Train a policy against a reward and save it; prints held-out reward before and after.", _train)
    p.add_argument("--algorithm", choices=ALGORITHMS, help="default: policy.algorithm of the config")
    _add_task_options(p)
    p.add_argument(
        "--base-model",
        metavar="PATH",
        help="starting policy: `tiny`, `smollm2`, a directory, a .gguf file or a Hub id (default: policy.base_model)",
    )
    p.add_argument("--out", metavar="DIR", help="directory to create (default: RLHF_HOME/policies/<algorithm>-<UTC time>)")
    p.add_argument("--epochs", type=int, help="override policy.training.epochs (PPO iterations / GRPO-RLOO rounds)")
    p.add_argument("--seed", type=int, help="override the training seed")
    p = command(policy, "eval", "Held-out mean reward, length and (with --reference) KL of a saved policy.", _eval)
    p.add_argument("--model", required=True, metavar="PATH", help="policy directory (or `tiny`, `smollm2`, a .gguf file)")
    p.add_argument("--reference", metavar="PATH", help="policy to measure KL against, e.g. the starting one")
    _add_task_options(p)
    p = command(policy, "chat", "Print one answer of a policy to QUESTION, in the policy's chat format.", _chat)
    p.add_argument("question", metavar="QUESTION")
    p.add_argument(
        "--model",
        default="tiny",
        metavar="NAME",
        help="a registry version, `tiny`, `smollm2`, a directory, a .gguf file or a Hub id (default: tiny)",
    )
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer, in tokens (default: 128)")
    p.add_argument("--temperature", type=float, help="sampling temperature, 0 for greedy (default: assistant.temperature)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed gives the same answer (default: 0)")
    p = command(
        policy, "build-tiny", "Build the tiny offline policy (tokenizer + warmed-up Llama) into a directory.", _build_tiny
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory to create")
