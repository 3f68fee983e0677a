"""The acceptance figure of policy optimisation: held-out mean reward of the trained policy versus
the starting one, per algorithm, on the tiny local policy, with the project's settings (the
`policy:` block of rlhf.yaml, as the demo and the trainer consumer use them).

    python -m bench.policy_gain [--algorithms ppo grpo kto] [--rewards quality rm] [--repeats 1] [--threads 2]

Rewards with a known preference: `quality` is the hidden preference of the generated world itself
(`trainers.synthetic.quality_reward`, in [0, 1]); `rm` is a MiniLM reward model trained here on
simulated feedback that follows that preference (sigmoid of its score, as the trainer consumer
uses it), so the policy is optimised against a learnt, imperfect reward; its figures are also
scored with `quality` after training, the gain a user would see, and the run prints the ceiling:
the gain in the reward model's own scores of a policy that always answers helpfully (a reward
model's sigmoid scores span a narrow range, which bounds the relative gain they can show). KTO and DPO label the starting
policy's own samples with the reward (no feedback events are passed). The target is a gain of
at least +15% with KL to the reference under `kl_bound`. Timings are wall-clock on this machine.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from core.errors import GuardrailRejection
from core.learning_settings import ALGORITHMS, RewardTrainingSettings
from core.settings import load_settings
from trainers.optimise import optimise_policy
from trainers.policy import RewardFn, evaluate_policy, load_policy
from trainers.synthetic import answer, feedback_events, quality_reward, split_questions
from trainers.tiny_policy import ensure_tiny_policy

TARGET_GAIN = 0.15


def quiet() -> None:
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def reward_model_fn(workdir: Path, threads: int, n_events: int, epochs: int) -> RewardFn:
    """A MiniLM reward model trained on simulated feedback on the training questions."""
    from trainers.reward import train_reward_model
    from trainers.reward_config import RewardConfig

    train, _ = split_questions()
    started = time.monotonic()
    settings = load_settings()
    config = RewardConfig.from_settings(
        settings, num_threads=threads, training=settings.reward_model.training.updated(epochs=epochs)
    )
    rm, metrics = train_reward_model(feedback_events(train, n_events, seed=1), config, workdir / "rm", lineage={})
    print(
        f"reward model: MiniLM, {n_events} feedback events, {epochs} epoch(s), trained in {time.monotonic() - started:.0f} s, "
        f"held-out pairwise accuracy {metrics['eval']['pairwise_accuracy'] or float('nan'):.3f}",
        flush=True,
    )
    return rm.reward


def ceiling(reward_fn: RewardFn, before: float) -> float:
    """The gain a policy answering every held-out question helpfully would show under `reward_fn`:
    a reward model's scores span a limited range, which bounds any relative gain measured in them."""
    rng = random.Random(0)
    _, held_out = split_questions()
    best = reward_fn([q.text for q in held_out], [answer(q, "helpful", rng) for q in held_out])
    return statistics.mean(best) / before - 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=["ppo", "grpo", "kto"], choices=ALGORITHMS)
    parser.add_argument("--rewards", nargs="+", default=["quality"], choices=["quality", "rm"])
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per algorithm and reward with seeds 0, 1, ...; the median is reported"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rm-events", type=int, default=800, help="simulated feedback events the `rm` reward model learns from")
    parser.add_argument(
        "--rm-epochs", type=int, default=RewardTrainingSettings().epochs, help="its training epochs (default: the project's)"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    quiet()
    base = str(ensure_tiny_policy())
    train, held_out = ([q.text for q in qs] for qs in split_questions())
    settings = load_settings()
    config = settings.policy.training
    print(f"tiny policy {base}; {len(train)} training / {len(held_out)} held-out queries; {torch.get_num_threads()} threads")
    print(
        f"settings: epochs {config.epochs}, batch {config.batch_size}, lr {config.learning_rate:g}, "
        f"max_new_tokens {config.max_new_tokens}, "
        f"kl_bound {config.kl_bound}, target gain +{TARGET_GAIN:.0%}"
    )

    rows = []
    with tempfile.TemporaryDirectory(prefix="policy-gain-") as scratch:
        work = Path(scratch)
        for reward_name in args.rewards:
            reward_fn = (
                quality_reward
                if reward_name == "quality"
                else reward_model_fn(work, args.threads, args.rm_events, args.rm_epochs)
            )
            first_before: float | None = None
            for algorithm in args.algorithms:
                runs = []
                for seed in range(args.repeats):
                    out = work / f"{reward_name}-{algorithm}-{seed}"
                    started = time.monotonic()
                    try:
                        m = optimise_policy(algorithm, base, reward_fn, train, held_out, config, out, seed=seed)
                    except GuardrailRejection as exc:  # the trainer would record this policy as rejected too
                        print(f"  {reward_name:7s} {algorithm:4s} seed {seed}: REJECTED ({exc})", flush=True)
                        continue
                    m["job_seconds"] = time.monotonic() - started
                    if reward_name == "rm":  # what the learnt reward's optimisation bought in the true preference
                        lm, tok = load_policy(base)
                        trained, _ = load_policy(str(out))
                        q0, q1 = (
                            evaluate_policy(
                                policy,
                                tok,
                                quality_reward,
                                held_out,
                                max_new_tokens=config.max_new_tokens,
                                temperature=config.temperature,
                                top_p=config.top_p,
                                samples_per_query=config.eval_samples_per_query,
                            ).mean_reward
                            for policy in (lm, trained)
                        )
                        m["quality_gain"] = q1 / q0 - 1.0
                    runs.append(m)
                    if first_before is None:
                        first_before = m["mean_reward_before"]
                        print(
                            f"  {reward_name}: a policy answering every held-out question helpfully would gain "
                            f"{ceiling(reward_fn, first_before):+.1%} in this reward (the ceiling)",
                            flush=True,
                        )
                    extra = f"  quality {m['quality_gain']:+.1%}" if "quality_gain" in m else ""
                    print(
                        f"  {reward_name:7s} {algorithm:4s} seed {seed}: "
                        f"reward {m['mean_reward_before']:.3f} -> {m['mean_reward_after']:.3f} "
                        f"({m['reward_gain']:+.1%}), KL {m['kl']:.4f}, "
                        f"length {m['mean_length_before']:.1f} -> {m['mean_length']:.1f}, "
                        f"train {m['train_seconds']:.0f} s, job {m['job_seconds']:.0f} s{extra}",
                        flush=True,
                    )
                if not runs:
                    rows.append((reward_name, algorithm, *[float("nan")] * 7, None))
                    continue
                med = lambda key, runs=runs: statistics.median(r[key] for r in runs)  # noqa: E731
                rows.append(
                    (
                        reward_name,
                        algorithm,
                        med("mean_reward_before"),
                        med("mean_reward_after"),
                        med("reward_gain"),
                        med("kl"),
                        med("mean_length"),
                        med("train_seconds"),
                        med("job_seconds"),
                        med("quality_gain") if reward_name == "rm" else None,
                    )
                )

    print(
        f"\nmedian of the {args.repeats} run(s) per row the guardrails accepted; "
        f"PASS = gain >= +{TARGET_GAIN:.0%} and KL < {config.kl_bound}"
    )
    print(
        f"{'reward':7s} {'algo':4s} {'before':>7s} {'after':>7s} {'gain':>7s} {'KL':>7s} {'length':>6s} "
        f"{'train s':>7s} {'job s':>6s} {'quality':>7s}  verdict"
    )
    for reward_name, algorithm, before, after, gain, kl, length, train_s, job_s, quality_gain in rows:
        verdict = "REJECTED" if math.isnan(gain) else "PASS" if gain >= TARGET_GAIN and kl < config.kl_bound else "FAIL"
        q = f"{quality_gain:+7.1%}" if quality_gain is not None else f"{'':7s}"
        print(
            f"{reward_name:7s} {algorithm:4s} {before:7.3f} {after:7.3f} {gain:+7.1%} {kl:7.4f} {length:6.1f} "
            f"{train_s:7.0f} {job_s:6.0f} {q}  {verdict}"
        )


if __name__ == "__main__":
    main()
