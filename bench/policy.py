"""Policy-optimisation throughput: the project's PPO (`trainers.ppo.train_ppo`) next to TRL's
GRPOTrainer as the project runs it (`trainers.alternatives.train_alternative("grpo", ...)`), same
model, same prompts (`trainers.chat_format`: the model's chat template if it has one), same batch
(16 completions of at most 32 tokens from the same queries), same sampling, reward and KL
coefficient, fp32 on CPU, in one run.

    python -m bench.policy [--model tiny] [--lora-r 0] [--steps 8] [--repeats 3] [--batch-size 16]
        [--max-new-tokens 32] [--ppo-epochs 1] [--threads 2]
    python -m bench.policy --model smollm2 --lora-r 16 --steps 4 --repeats 1    # SmolLM2-135M-Instruct with LoRA adapters

`--model` takes any name `trainers.base_models.resolve_base_model` accepts (`tiny`, `smollm2`, a
.gguf file, a model directory, a Hub id). `--lora-r R` trains rank-R adapters (`lora_config` in
`trainers.policy_config`, the same adapters on both sides); both then hold the model once, the
KL reference being the base with the adapters off, and do one generation pass per step. 0 (the
default) is a full fine-tune, where both keep a frozen reference copy.

Per step: rollout tokens/s (completion tokens generated / time in generation) and update time
(the rest of the step: reference and old log-probs, advantages, loss, backward, optimiser). By
default both do one gradient pass over the 16 completions per rollout (`--ppo-epochs 1`, one
mini-batch; GRPO with num_iterations 1), so a step is the same work; PPO also carries its value
head and a post-update KL check. `--ppo-epochs 4 --mini-batch-size 8` times PPO with the
project's settings (8 gradient steps per rollout) instead. A chat model may stop at its
end-of-turn token sooner on one side than the other: the last row, completion tokens per step
(EOS included), shows how much each generated. The first step of each run is warm-up and
dropped; each repeat runs both back to back, and the figure is the median over repeats of the
per-repeat medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from bench.policy_gain import quiet
from core.learning_settings import PolicyTrainingSettings
from trainers import ppo
from trainers.alternatives import train_alternative
from trainers.base_models import resolve_base_model
from trainers.device import pick_device
from trainers.policy import Rollout, load_policy
from trainers.policy_config import lora_config
from trainers.ppo import train_ppo
from trainers.synthetic import quality_reward, split_questions


def run_project(base: str, queries: list[str], config: PolicyTrainingSettings) -> dict[str, float]:
    """Step times of train_ppo, split by wrapping its rollout function."""
    lm, tok = load_policy(base)
    gen_seconds: list[float] = []
    tokens: list[float] = []
    step_ends: list[float] = []
    real_generate = ppo.generate

    def timed_generate(*args: Any, **kwargs: Any) -> Rollout:
        started = time.perf_counter()
        ro = real_generate(*args, **kwargs)
        gen_seconds.append(time.perf_counter() - started)
        tokens.append(ro.mask.sum().item())  # up to and including EOS
        return ro

    def on_status(state: str, stage: str, message: str, metrics: dict[str, float]) -> None:
        if state == "progress":
            step_ends.append(time.perf_counter())

    ppo.generate = timed_generate
    try:
        started = time.perf_counter()
        _, result = train_ppo(lm, tok, quality_reward, queries, config, on_status=on_status)
    finally:
        ppo.generate = real_generate
    if result.rollbacks:
        raise RuntimeError(f"PPO rolled back {result.rollbacks} update(s); timings would mix in rollbacks")
    steps = [b - a for a, b in zip([started, *step_ends[:-1]], step_ends, strict=True)]
    return _figures(steps, gen_seconds, tokens)


def run_trl(base: str, queries: list[str], config: PolicyTrainingSettings) -> dict[str, float]:
    """Step times of GRPOTrainer as `policy.algorithm: grpo` runs it (its dataset, reward wrapper,
    arguments and LoRA adapters), with one gradient pass per generation, split the same way."""
    from trl import GRPOTrainer

    lm, tok = load_policy(base)
    gen_seconds: list[float] = []
    tokens: list[float] = []
    step_ends: list[float] = []
    real_generate = GRPOTrainer._generate

    def timed_generate(self: GRPOTrainer, prompts: list) -> Any:
        started = time.perf_counter()
        out = real_generate(self, prompts)
        gen_seconds.append(time.perf_counter() - started)
        tokens.append(float(sum(len(ids) for ids in out[1])))  # completion_ids, up to and including EOS
        return out

    def on_status(state: str, stage: str, message: str, metrics: dict[str, float]) -> None:
        if state == "progress" and "loss" in metrics:  # a training step's log, not the run's opening line
            step_ends.append(time.perf_counter())

    one_pass = config.updated(ppo_epochs=1)  # num_iterations 1: one gradient pass per generation
    GRPOTrainer._generate = timed_generate  # type: ignore[method-assign]  # timed for this run only
    try:
        started = time.perf_counter()
        train_alternative("grpo", lm, tok, quality_reward, queries, one_pass, on_status=on_status)
    finally:
        GRPOTrainer._generate = real_generate  # type: ignore[method-assign]
    steps = [b - a for a, b in zip([started, *step_ends[:-1]], step_ends, strict=True)]
    return _figures(steps, gen_seconds, tokens)


def _figures(steps: list[float], gen_seconds: list[float], tokens: list[float]) -> dict[str, float]:
    steps, gen_seconds, tokens = steps[1:], gen_seconds[1 : len(steps)], tokens[1 : len(steps)]  # drop warm-up
    return {
        "tokens_per_s": statistics.median(t / s for t, s in zip(tokens, gen_seconds, strict=True)),
        "update_s": statistics.median(s - g for s, g in zip(steps, gen_seconds, strict=True)),
        "step_s": statistics.median(steps),
        "tokens": statistics.median(tokens),
    }


def describe(base: str, name: str, config: PolicyTrainingSettings) -> str:
    """`name (N params)`, and with LoRA the rank and the trainable share."""
    lm, _ = load_policy(base)
    total = sum(p.numel() for p in lm.parameters())
    text = f"{name} ({total / 1e6:.1f}M params"
    if not config.lora_r:
        return text + ", full fine-tune)"
    from peft import get_peft_model

    peft_config = lora_config(config)
    assert peft_config is not None  # lora_r > 0
    trainable = sum(p.numel() for p in get_peft_model(lm, peft_config).parameters() if p.requires_grad)
    return text + f", LoRA r={config.lora_r}: {trainable / 1e6:.2f}M trainable)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, smollm2, a .gguf file, a model directory or a Hub id")
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank; 0: full fine-tune")
    parser.add_argument("--steps", type=int, default=8, help="steps per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="completions per step")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--mini-batch-size", type=int, help="default: the whole batch")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    quiet()
    base = resolve_base_model(args.model)
    train, _ = split_questions()
    queries = [q.text for q in train]
    # Guardrails off: a rolled-back step would not be a like-for-like step.
    config = PolicyTrainingSettings(
        epochs=args.steps,
        batch_size=args.batch_size,
        mini_batch_size=args.mini_batch_size or args.batch_size,
        ppo_epochs=args.ppo_epochs,
        max_new_tokens=args.max_new_tokens,
        num_generations=4,
        lora_r=args.lora_r,
        kl_bound=1e9,
        max_length_ratio=1e9,
        min_length_ratio=1e-9,
        max_repetition=1.0,
    )
    print(
        f"{describe(base, args.model, config)} on {pick_device()}, {torch.get_num_threads()} threads; "
        f"{args.batch_size} completions x <= {args.max_new_tokens} tokens per step, "
        f"PPO {args.ppo_epochs} epoch(s) x {args.batch_size // config.mini_batch_size} mini-batch(es), GRPO 1 pass; "
        f"{args.steps - 1} timed steps"
    )

    rows = []
    for repeat in range(args.repeats):
        ours, trl = run_project(base, queries, config), run_trl(base, queries, config)
        rows.append((ours, trl))
        print(
            f"repeat {repeat + 1}: project PPO {ours['tokens_per_s']:7.0f} tok/s, update {ours['update_s'] * 1e3:6.0f} ms, "
            f"step {ours['step_s'] * 1e3:6.0f} ms | "
            f"TRL GRPO {trl['tokens_per_s']:7.0f} tok/s, update {trl['update_s'] * 1e3:6.0f} ms, "
            f"step {trl['step_s'] * 1e3:6.0f} ms",
            flush=True,
        )

    def med(side: int, key: str) -> float:
        return statistics.median(r[side][key] for r in rows)

    print(f"\nmedian of {args.repeats} repeats        project PPO   TRL GRPOTrainer   ratio (project/TRL)")
    for label, key, scale, better in (
        ("rollout tokens/s", "tokens_per_s", 1, "higher"),
        ("update time per step, ms", "update_s", 1e3, "lower"),
        ("whole step, ms", "step_s", 1e3, "lower"),
    ):
        project, theirs = med(0, key) * scale, med(1, key) * scale
        print(f"{label:<29}{project:11.0f}   {theirs:15.0f}   {project / theirs:.2f} ({better} is better)")
    print(f"completion tokens per step   {med(0, 'tokens'):11.0f}   {med(1, 'tokens'):15.0f}")
    speed_up = med(1, "step_s") / med(0, "step_s")
    print(f"\nproject PPO step speed-up over TRL GRPOTrainer: {speed_up:.2f}x (TRL step time / project step time)")


if __name__ == "__main__":
    main()
