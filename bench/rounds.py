"""Does the assistant keep getting better, round after round? The continuous learner (history,
warm start, reward ensemble with an uncertainty penalty, corrections as demonstrations, a gate
head PPO never saw) beside today's learner (the latest buffer only, a fresh single-head reward
model each round), offline: no Kafka, no services, the same trainer functions the trainer
consumer calls, and the same simulated users as `rlhf demo` (`demo.users.Population`).

    python -m bench.rounds                                  # 5 rounds, seeds 0 1, continuous vs latest-only
    python -m bench.rounds --learners continuous no-ensemble no-corrections no-history no-gate restart
    python -m bench.rounds --rounds 6 --seeds 0 1 2 --budget 1200 --out runs/rounds.json

One round: the serving policy (and, after round 1, the last candidate in an A/B split) answers
`--budget` simulated users' questions; their feedback is the round's trigger; the learner trains a
reward model on the history its window allows and a PPO candidate; the gate passes it or not;
the next round's traffic is the candidate's A/B test (users split by a stable hash), decided by
the per-user lift of the positive rate (analytics.stats, the decider's statistics) with its 95%
interval above zero. The figure is the hidden preference (`trainers.synthetic.quality`, the
ground truth the learners never see) of the serving version on the held-out questions per round.
Every learner gets the same feedback budget per round. Wall time is this machine's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch

from analytics.stats import RatioMoments, ratio, relative_lift
from bench.policy_gain import quiet
from core.errors import GuardrailRejection
from core.hashing import stable_fraction
from core.learning_settings import SAMPLING_TEMPERATURE, SAMPLING_TOP_P
from core.settings import FeedbackSettings, Settings
from demo.report import on_policy_accuracy
from demo.users import Population
from schemas import FeedbackEvent, OffsetRange, TrainTrigger
from trainers.dataset import split_policy_queries
from trainers.ensemble import EnsembleReward
from trainers.history import HistoryWindow, replay_history, replay_sample, select_history
from trainers.optimise import gate_verdict, optimise_policy
from trainers.policy import load_policy, sample
from trainers.reward import train_reward_model
from trainers.reward_config import RewardConfig
from trainers.synthetic import Question, all_questions, quality, split_questions
from trainers.tiny_policy import ensure_tiny_policy

# What each learner changes from the project's defaults (rlhf.yaml):
# (continuous_learning, reward_model.training, policy.training).
LATEST_ONLY = (
    {"history_triggers": 0, "warm_start": False, "reward_sample_events": None},
    {"ensemble_members": 1, "gate_head": False},
    {"uncertainty_penalty": 0.0, "demo_coef": 0.0, "demo_epochs": 0},
)
LEARNERS: dict[str, tuple[dict, dict, dict]] = {
    "continuous": ({}, {}, {}),
    "latest-only": LATEST_ONLY,  # today's learner
    "no-history": ({"history_triggers": 0, "warm_start": False, "reward_sample_events": None}, {}, {}),
    "no-warm": ({"warm_start": False}, {}, {}),
    "no-ensemble": ({}, {"ensemble_members": 1}, {"uncertainty_penalty": 0.0}),
    "no-penalty": ({}, {}, {"uncertainty_penalty": 0.0}),
    "no-corrections": ({}, {}, {"demo_coef": 0.0, "demo_epochs": 0}),
    "no-gate": ({}, {"gate_head": False}, {}),
    "restart": ({}, {}, {"start_from": "base"}),
    "ref-base": ({}, {}, {"reference": "base"}),
}
USERS = 500
MIN_RATING = FeedbackSettings().min_rating
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Version:
    name: str
    path: Path
    lm: Any
    tokenizer: Any


@dataclass
class RoundRecord:
    round: int
    decision: str = ""  # rejected (by the gate) | promoted | rolled_back (by the A/B test)
    serving_after: float = float("nan")  # hidden preference of the version serving once the round is decided
    candidate_hidden: float | None = None
    ab_lift: list[float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def settings_for(learner: str) -> Settings:
    learning, reward, policy = LEARNERS[learner]
    s = Settings()
    return s.model_copy(
        update={
            "continuous_learning": s.continuous_learning.model_copy(update=learning),
            "reward_model": s.reward_model.model_copy(update={"training": s.reward_model.training.model_copy(update=reward)}),
            "policy": s.policy.model_copy(update={"training": s.policy.training.model_copy(update=policy)}),
        }
    )


def answers(version: Version, queries: list[str], seed: int) -> list[str]:
    """The version's sampled answers, as the assistant serves them (its default temperature and top-p)."""
    torch.manual_seed(seed)
    out: list[str] = []
    for i in range(0, len(queries), 64):
        out += sample(
            version.lm,
            version.tokenizer,
            queries[i : i + 64],
            max_new_tokens=32,
            temperature=SAMPLING_TEMPERATURE,
            top_p=SAMPLING_TOP_P,
        ).responses
    return out


def hidden_preference(version: Version, held_out: list[Question]) -> float:
    """Mean ground-truth quality of the version's answers to the held-out questions (2 samples each)."""
    scores = [
        quality(q, a)
        for s in range(2)
        for q, a in zip(held_out, answers(version, [q.text for q in held_out], seed=s), strict=True)
    ]
    return sum(scores) / len(scores)


class Traffic:
    """Simulated users asking the serving version (and a candidate on its A/B test) and reacting."""

    def __init__(self, seed: int) -> None:
        self.population = Population(USERS, seed=seed)
        self.rng = random.Random(seed)
        self.questions = all_questions()
        self.seed = seed
        self.count = 0

    def collect(
        self, arms: list[Version], budget: int, round_no: int
    ) -> tuple[list[FeedbackEvent], dict[str, dict[str, list[int]]]]:
        """`budget` feedback events; with two arms users are split 50/50 by a stable hash. Also
        per arm, per user: [positives, feedback]."""
        events: list[FeedbackEvent] = []
        per_user: dict[str, dict[str, list[int]]] = {v.name: defaultdict(lambda: [0, 0]) for v in arms}
        while len(events) < budget:
            asks = [(self.rng.choice(self.population.users), self.rng.choice(self.questions)) for _ in range(128)]
            arm_of = [arms[int(stable_fraction("bench-ab", str(round_no), user) * len(arms))] for user, _ in asks]
            replies: dict[int, str] = {}
            for arm in arms:
                idx = [i for i, a in enumerate(arm_of) if a is arm]
                for i, text in zip(idx, answers(arm, [asks[i][1].text for i in idx], seed=self.rng.getrandbits(31)), strict=True):
                    replies[i] = text
            for i, (user, q) in enumerate(asks):
                verdict = self.population.reaction(q, replies[i], self.rng)
                if verdict is None or len(events) >= budget:
                    continue
                kind = verdict.pop("type")
                self.count += 1
                events.append(
                    FeedbackEvent(
                        event_id=f"b{self.seed}-{self.count}",
                        interaction_id=f"b{self.seed}-i{self.count}",
                        user_id=user,
                        query=q.text,
                        response=replies[i],
                        model_version=arm_of[i].name,
                        feedback_type=kind,
                        timestamp=EPOCH + timedelta(seconds=self.count),
                        **verdict,
                    )
                )
                tally = per_user[arm_of[i].name][user]
                tally[0] += events[-1].is_positive(MIN_RATING)  # the rule the A/B analysis counts by
                tally[1] += 1
        return events, per_user


def ab_lift(per_user: dict[str, dict[str, list[int]]], control: str, treatment: str) -> list[float]:
    """Relative lift of the positive rate, per user (delta method), with its 95% interval."""

    def moments(users: dict[str, list[int]]) -> RatioMoments:
        y = [p for p, _ in users.values()]
        w = [n for _, n in users.values()]
        return RatioMoments(
            len(y), sum(y), sum(w), sum(a * a for a in y), sum(b * b for b in w), sum(a * b for a, b in zip(y, w, strict=True))
        )

    lift = relative_lift(ratio(moments(per_user[treatment])), ratio(moments(per_user[control])))
    return [float(lift.estimate), float(lift.low), float(lift.high)]


def run_learner(
    learner: str, seed: int, rounds: int, budget: int, threads: int, workdir: Path
) -> tuple[float, list[RoundRecord]]:
    """(the base policy's hidden preference, one record per round)."""
    settings = settings_for(learner)
    torch.manual_seed(seed)
    base_path = ensure_tiny_policy()
    _, held_out = split_questions()
    traffic = Traffic(seed)
    serving = Version("base", base_path, *load_policy(str(base_path)))
    serving_hidden = start_hidden = hidden_preference(serving, held_out)
    candidate: Version | None = None
    triggers: list[TrainTrigger] = []
    events_of: dict[str, list[FeedbackEvent]] = {}
    previous_rm: Path | None = None
    records: list[RoundRecord] = []
    rm_config = RewardConfig.from_settings(settings, num_threads=threads)
    policy_config = settings.policy.training
    window = HistoryWindow.from_settings(settings)

    def decide(per_user: dict[str, dict[str, list[int]]]) -> None:
        """The last candidate's A/B test is over: promote it or keep the serving version."""
        nonlocal serving, serving_hidden, candidate
        last = records[-1]
        last.ab_lift = ab_lift(per_user, serving.name, candidate.name)  # type: ignore[union-attr]
        last.decision = "promoted" if last.ab_lift[1] > 0 else "rolled_back"
        if last.decision == "promoted":
            serving, serving_hidden = candidate, last.candidate_hidden  # type: ignore[assignment]
        last.serving_after, candidate = serving_hidden, None

    for r in range(1, rounds + 1):
        started = time.monotonic()
        # 1. Traffic: the serving version, and the last candidate on its A/B test (decided on it).
        events, per_user = traffic.collect([serving, candidate] if candidate else [serving], budget, r)
        if candidate:
            decide(per_user)

        # 2. The trigger for this round's feedback, and the history the window allows.
        trigger = TrainTrigger(
            policy="default",
            model_version=serving.name,
            timestamp=EPOCH + timedelta(hours=r),
            ranges=(OffsetRange(topic="bench", partition=0, start=(r - 1) * budget, end=r * budget),),
            event_ids=tuple(e.event_id for e in events),
        )
        events_of[trigger.trigger_id] = events
        used = select_history(triggers, trigger, window)
        triggers.append(trigger)
        history, recent, _, _ = replay_history(used, lambda t: events_of[t.trigger_id])  # contiguous: nothing between triggers

        # 3. Reward model, then the PPO candidate, then the gate.
        rm_dir = workdir / f"rm-{r}"
        warm = previous_rm if settings.continuous_learning.warm_start else None
        sample = replay_sample(history, recent, settings.continuous_learning.reward_sample_events)
        rm, rm_metrics = train_reward_model(sample, rm_config, rm_dir, recent_ids=recent, warm_start=warm)
        previous_rm = rm_dir
        train_q, eval_q = split_policy_queries(history)
        record = RoundRecord(r, serving_after=serving_hidden)
        record.metrics = {
            "history_events": float(len(history)),
            "rm_accuracy": rm_metrics["eval"]["pairwise_accuracy"] or float("nan"),
            "rm_accuracy_recent": rm_metrics["eval"]["accuracy_recent"] or float("nan"),
            "rm_disagreement": rm_metrics["eval"]["disagreement"] or float("nan"),
            "rm_seconds": rm_metrics["train"]["seconds"],
            "rm_accuracy_on_policy": on_policy_accuracy(
                rm.predict, lambda queries, seed: answers(serving, queries, seed), held_out
            )
            or float("nan"),
            "serving_before": serving_hidden,
        }
        try:
            metrics = optimise_policy(
                "ppo",
                str(serving.path),
                EnsembleReward(rm, policy_config.uncertainty_penalty),
                train_q,
                eval_q,
                policy_config,
                workdir / f"policy-{r}",
                feedback_events=history,
                seed=seed,
                min_rating=settings.feedback.min_rating,
                gate_fn=rm.gate_reward if rm.config.training.gate_head else None,
                original_path=str(base_path),
            )
            passed, _ = gate_verdict(metrics, settings.registry.promotion_margin)
        except GuardrailRejection as exc:  # an outcome, as in the trainer consumer
            metrics, passed = {"guardrail": str(exc)[:200]}, False
        record.metrics.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        if "mean_reward_after" in metrics:  # trained and saved: its ground truth, whatever the gate says
            trained = Version(f"r{r}", workdir / f"policy-{r}", *load_policy(str(workdir / f"policy-{r}")))
            record.candidate_hidden = hidden_preference(trained, held_out)
            candidate = trained if passed else None
        if not passed:
            record.decision = "rejected"
        record.seconds = time.monotonic() - started
        records.append(record)
        m = record.metrics
        print(
            f"  {learner} seed {seed} round {r}: serving {serving_hidden:.3f}, history {len(history)}, "
            f"RM acc {m['rm_accuracy']:.3f} "
            f"(on-policy {m['rm_accuracy_on_policy']:.3f}), gain {m.get('reward_gain', float('nan')):+.3f}, "
            f"kl base {m.get('kl_base', float('nan')):.3f}, "
            f"{'candidate' if passed else 'rejected'} "
            f"(hidden {record.candidate_hidden if record.candidate_hidden is not None else float('nan'):.3f}, "
            f"{record.seconds:.0f}s)",
            flush=True,
        )
    if candidate:  # the last candidate's A/B test: one more round of traffic, no training
        decide(traffic.collect([serving, candidate], budget, rounds + 1)[1])
    return start_hidden, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", nargs="+", default=["continuous", "latest-only"], choices=list(LEARNERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=1200, help="feedback events per round (the demo's train threshold)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of each job")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="(learner, seed) runs at once, each in its own process (e.g. --jobs 2 --threads 1 on 2 cores)",
    )
    parser.add_argument("--out", type=Path, help="write every round's figures as JSON here, and the curves as a PNG beside it")
    args = parser.parse_args()
    runs = [(learner, seed) for learner in args.learners for seed in args.seeds]
    results: dict[str, dict[int, tuple[float, list[RoundRecord]]]] = defaultdict(dict)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = pool.map(run_in_process, [(learner, seed, args.rounds, args.budget, args.threads) for learner, seed in runs])
        for (learner, seed), result in zip(runs, done, strict=True):
            results[learner][seed] = result
    print(
        f"\nhidden preference of the serving version after each round (median over seeds {args.seeds}); "
        "per seed: P promoted, R rolled back by the A/B test, x rejected by the gate"
    )
    print(
        f"{'learner':<14}{'start':>8}"
        + "".join(f"{'r' + str(r):>12}" for r in range(1, args.rounds + 1))
        + f"{'min s/round':>12}"
    )
    for learner, by_seed in results.items():
        cells = [f"{statistics.median(start for start, _ in by_seed.values()):.3f}"]
        for r in range(args.rounds):
            value = statistics.median(recs[r].serving_after for _, recs in by_seed.values())
            marks = "".join(
                {"promoted": "P", "rolled_back": "R", "rejected": "x"}.get(recs[r].decision, "?") for _, recs in by_seed.values()
            )
            cells.append(f"{value:.3f} {marks}")
        seconds = statistics.median(rec.seconds for _, recs in by_seed.values() for rec in recs)
        print(f"{learner:<14}{cells[0]:>8}" + "".join(f"{c:>12}" for c in cells[1:]) + f"{seconds:>12.0f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        by_learner = {
            k: {seed: {"start": start, "rounds": [r.__dict__ for r in recs]} for seed, (start, recs) in d.items()}
            for k, d in results.items()
        }
        args.out.write_text(json.dumps(by_learner, indent=1, default=str))
        plot_curves(results, args.out.with_suffix(".png"))


def run_in_process(job: tuple[str, int, int, int, int]) -> tuple[float, list[RoundRecord]]:
    """One learner on one seed, in a worker process of its own (torch threads set there)."""
    learner, seed, rounds, budget, threads = job
    quiet()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as tmp:
        return run_learner(learner, seed, rounds, budget, threads, Path(tmp))


def plot_curves(results: dict[str, dict[int, tuple[float, list[RoundRecord]]]], path: Path) -> None:
    """The serving version's hidden preference per round, one line per learner and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for n, (learner, by_seed) in enumerate(results.items()):
        for k, (start, recs) in enumerate(by_seed.values()):
            ax.plot(
                range(len(recs) + 1),
                [start, *(r.serving_after for r in recs)],
                "o-",
                color=f"C{n}",
                alpha=0.7,
                label=learner if k == 0 else None,
            )
    rounds = max(len(recs) for by_seed in results.values() for _, recs in by_seed.values())
    ax.set(
        xlabel="round (0: the base policy)",
        ylabel="hidden preference of the serving version",
        ylim=(0, 1),
        xticks=range(rounds + 1),
        title="bench.rounds: does it keep improving?",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
