"""Policy-optimisation throughput: the project's PPO (`trainers.ppo.train_ppo`) next to TRL's
GRPOTrainer, same model (the tiny policy), same batch (16 completions of at most 32 tokens from
the same queries), same sampling, reward and KL reference, fp32, in one run.

    python -m bench.policy [--steps 8] [--repeats 3] [--batch-size 16] [--max-new-tokens 32] [--ppo-epochs 1] [--threads 2]

Per step: rollout tokens/s (completion tokens generated / time in generation) and update time
(the rest of the step: reference and old log-probs, advantages, loss, backward, optimiser). By
default both do one gradient pass over the 16 completions per rollout (`--ppo-epochs 1`, one
mini-batch; GRPO with num_iterations 1), so a step is the same work; PPO also carries its value
head and a post-update KL check. `--ppo-epochs 4 --mini-batch-size 8` times PPO with the
project's settings (8 gradient steps per rollout) instead. The first step of each run is warm-up
and dropped; each repeat runs both back to back, and the figure is the median over repeats of
the per-repeat medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch
from datasets import Dataset

import trainers.ppo as ppo
from bench.policy_gain import quiet
from trainers.alternatives import _common_args, _reward_for_trl
from trainers.device import pick_device
from trainers.policy import Rollout, load_policy
from trainers.policy_config import PolicyTrainingConfig
from trainers.ppo import train_ppo
from trainers.synthetic import quality_reward, split_questions
from trainers.tiny_policy import ensure_tiny_policy, format_prompt


def run_project(base: str, queries: list[str], config: PolicyTrainingConfig) -> dict[str, float]:
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
        tokens.append(ro.mask.sum().item())
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
    steps = [b - a for a, b in zip([started, *step_ends], step_ends)]
    return _figures(steps, gen_seconds, tokens)


def run_trl(base: str, queries: list[str], config: PolicyTrainingConfig) -> dict[str, float]:
    """Step times of GRPOTrainer with one gradient pass per generation, split the same way."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    lm, tok = load_policy(base)
    gen_seconds: list[float] = []
    tokens: list[float] = []
    steps: list[float] = []

    class TimedGRPO(GRPOTrainer):
        def _generate(self, prompts: list):
            started = time.perf_counter()
            out = super()._generate(prompts)
            gen_seconds.append(time.perf_counter() - started)
            tokens.append(float(sum(len(ids) for ids in out[1])))  # completion_ids, up to and including EOS
            return out

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            steps.append(time.perf_counter() - self.started)

    data = Dataset.from_dict({"prompt": [format_prompt(q) for q in queries], "query": queries})
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            **{**_common_args(config, out), "logging_steps": 1000}, per_device_train_batch_size=config.batch_size,
            num_generations=config.num_generations, max_completion_length=config.max_new_tokens, temperature=config.temperature,
            top_p=config.top_p, beta=config.init_kl_coef, num_iterations=1, max_steps=config.epochs,
        )  # fmt: skip
        trainer = TimedGRPO(model=lm, reward_funcs=_reward_for_trl(quality_reward), args=args, train_dataset=data,
                            processing_class=tok, callbacks=[StepTimer()])  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return _figures(steps, gen_seconds, tokens)


def _figures(steps: list[float], gen_seconds: list[float], tokens: list[float]) -> dict[str, float]:
    steps, gen_seconds, tokens = steps[1:], gen_seconds[1 : len(steps)], tokens[1 : len(steps)]  # drop warm-up
    return {
        "tokens_per_s": statistics.median(t / s for t, s in zip(tokens, gen_seconds)),
        "update_s": statistics.median(s - g for s, g in zip(steps, gen_seconds)),
        "step_s": statistics.median(steps),
        "tokens": statistics.median(tokens),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    base = str(ensure_tiny_policy())
    train, _ = split_questions()
    queries = [q.text for q in train]
    config = PolicyTrainingConfig(
        epochs=args.steps, batch_size=args.batch_size, mini_batch_size=args.mini_batch_size or args.batch_size, ppo_epochs=args.ppo_epochs,
        max_new_tokens=args.max_new_tokens, num_generations=4, kl_bound=1e9, max_length_ratio=1e9, min_length_ratio=1e-9, max_repetition=1.0,
    )  # fmt: skip  (guardrails off: a rolled-back step would not be a like-for-like step)
    device = pick_device()
    print(f"tiny policy ({sum(p.numel() for p in load_policy(base)[0].parameters()) / 1e6:.2f}M params) on {device}, "
          f"{torch.get_num_threads()} threads; {args.batch_size} completions x <= {args.max_new_tokens} tokens per step, "
          f"PPO {args.ppo_epochs} epoch(s) x {args.batch_size // config.mini_batch_size} mini-batch(es), GRPO 1 pass; {args.steps - 1} timed steps")  # fmt: skip

    rows = []
    for repeat in range(args.repeats):
        ours, trl = run_project(base, queries, config), run_trl(base, queries, config)
        rows.append((ours, trl))
        print(f"repeat {repeat + 1}: project PPO {ours['tokens_per_s']:7.0f} tok/s, update {ours['update_s'] * 1e3:6.0f} ms, step {ours['step_s'] * 1e3:6.0f} ms | "
              f"TRL GRPO {trl['tokens_per_s']:7.0f} tok/s, update {trl['update_s'] * 1e3:6.0f} ms, step {trl['step_s'] * 1e3:6.0f} ms", flush=True)  # fmt: skip

    med = lambda side, key: statistics.median(r[side][key] for r in rows)  # noqa: E731
    print(f"\nmedian of {args.repeats} repeats        project PPO   TRL GRPOTrainer   ratio (project/TRL)")
    print(f"rollout tokens/s             {med(0, 'tokens_per_s'):11.0f}   {med(1, 'tokens_per_s'):15.0f}   {med(0, 'tokens_per_s') / med(1, 'tokens_per_s'):.2f} (higher is better)")
    print(f"update time per step, ms     {med(0, 'update_s') * 1e3:11.0f}   {med(1, 'update_s') * 1e3:15.0f}   {med(0, 'update_s') / med(1, 'update_s'):.2f} (lower is better)")
    print(f"whole step, ms               {med(0, 'step_s') * 1e3:11.0f}   {med(1, 'step_s') * 1e3:15.0f}   {med(0, 'step_s') / med(1, 'step_s'):.2f} (lower is better)")
    print(f"completion tokens per step   {med(0, 'tokens'):11.0f}   {med(1, 'tokens'):15.0f}")


if __name__ == "__main__":
    main()
