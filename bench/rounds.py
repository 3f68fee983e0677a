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

Conversations, and what learning in context is worth:

    python -m bench.rounds --conversations --rounds 3 --seeds 0 1 --learners continuous

With `--conversations` users hold conversations of 1-3 questions whose follow-ups depend on the
earlier turn (`demo.users` with conversations, `synthetic.draw_dialogue`), every feedback event
carries its conversation, and the hidden preference is also measured on follow-up turns
(`synthetic.follow_up_quality`: held-out two-question conversations, the version's own first answer
in the context; 4 samples each). A second, last-turn-only line of candidates learns from the same
feedback events with their context stripped (the last turn alone, as the learners did before
conversations): its reward model (warm-started from its own previous one) and PPO see "And in
Calendar?" without the question it follows. Each round it trains a candidate from its own last
candidate the gate passed (the base policy at first); it is measured, never served, so both lines
rest on identical feedback, and it costs one more reward model and PPO run a round, where a line
with traffic of its own would no longer see the same feedback.

The rule, written before this design's run: the context ablation holds when, on every seed, the
last-turn-only line's round-N candidate scores lower on follow-ups than the in-context line's
round-N candidate, by at least 0.05 (about 1.5 standard errors of the difference of two 540-answer
means); a candidate a guardrail stopped (no weights) counts as its line's parent. A first design,
the twin trained each round from the in-context line's parent, is reported in docs/conversations.md.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from bench._traffic import EPOCH, Traffic, Version, ab_lift, answers, follow_up_preference, hidden_preference, last_turn_only
from bench.policy_gain import quiet
from core.errors import GuardrailRejection
from core.settings import Settings
from demo.report import on_policy_accuracy
from schemas import FeedbackEvent, OffsetRange, TrainTrigger
from trainers.dataset import split_policy_queries
from trainers.ensemble import EnsembleReward
from trainers.history import HistoryWindow, replay_history, replay_sample, select_history
from trainers.optimise import gate_verdict, optimise_policy
from trainers.policy import load_policy
from trainers.reward import train_reward_model
from trainers.reward_config import RewardConfig
from trainers.reward_model import RewardModel
from trainers.synthetic import PREFERENCES, on_traffic_questions, split_questions
from trainers.tiny_policy import ensure_tiny_policy
from trainers.trust import UserTrust, trusted_corrections, user_trust

# What each learner changes from the project's defaults (rlhf.yaml):
# (continuous_learning, reward_model.training, policy.training), and `trust` in TRUST_OF.
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
    "no-trust": ({}, {}, {}),
    "trust": ({}, {}, {}),
}
# `trainers.trust` off: every user's verdicts weigh the same and every correction is learned (the
# default since docs/decisions/0008); and on, with the values that record measured.
NO_TRUST: dict[str, Any] = {"max_user_share": None, "agreement_weighting": False, "correction_filter": False}
TRUST_ON: dict[str, Any] = {"max_user_share": 0.02, "agreement_weighting": True, "correction_filter": True}
TRUST_OF = {"latest-only": NO_TRUST, "no-trust": NO_TRUST, "trust": TRUST_ON}


@dataclass
class RoundRecord:
    round: int
    decision: str = ""  # rejected (by the gate) | promoted | rolled_back (by the A/B test)
    serving_after: float = float("nan")  # hidden preference of the version serving once the round is decided
    candidate_hidden: float | None = None
    # With conversations: the same on follow-up turns, and the last-turn-only line's candidate (first
    # turns, follow-ups; its parent's when a guardrail stopped it).
    serving_follow_up: float = float("nan")
    candidate_follow_up: float | None = None
    # The same on questions like the users' (`synthetic.on_traffic_questions`): "on traffic".
    serving_on_traffic: float = float("nan")
    candidate_on_traffic: float | None = None
    last_turn_only: tuple[float, float] | None = None
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
            "trust": s.trust.model_copy(update=TRUST_OF.get(learner, {})),
        }
    )


@dataclass
class Learner:
    """What a learner keeps between rounds and how it trains a round's candidate."""

    settings: Settings
    rm_config: RewardConfig
    base_path: Path
    workdir: Path
    seed: int
    previous_rm: Path | None = None
    judge: RewardModel | None = None  # the previous round's reward model: the consensus users are compared with
    trust: UserTrust | None = None  # the users' weights of the last round

    def train(self, history: list[FeedbackEvent], recent: frozenset[str], parent: Version, tag: str) -> tuple[Any, dict, bool]:
        """A reward model on the history, then a PPO candidate from `parent` saved as policy-TAG,
        then the gate: (the reward model, the policy job's metrics, whether the gate passed it)."""
        settings = self.settings
        warm = self.previous_rm if settings.continuous_learning.warm_start else None
        sample = replay_sample(history, recent, settings.continuous_learning.reward_sample_events)
        rm_dir = self.workdir / f"rm-{tag}"
        trust = user_trust(sample, settings.trust, self.rm_config.min_rating, score=self.judge.predict if self.judge else None)
        rm, rm_metrics = train_reward_model(
            sample, self.rm_config, rm_dir, recent_ids=recent, warm_start=warm, user_weight=trust.weight
        )
        self.previous_rm, self.judge, self.trust = rm_dir, rm, trust
        learned, filtered = trusted_corrections(history, trust, settings.trust, score=rm.predict)
        train_q, eval_q = split_policy_queries(history)
        policy_config = settings.policy.training
        try:
            metrics = optimise_policy(
                "ppo",
                str(parent.path),
                EnsembleReward(rm, policy_config.uncertainty_penalty),
                train_q,
                eval_q,
                policy_config,
                self.workdir / f"policy-{tag}",
                feedback_events=learned,
                seed=self.seed,
                min_rating=settings.feedback.min_rating,
                gate_fn=rm.gate_reward if rm.config.training.gate_head else None,
                original_path=str(self.base_path),
            )
            passed, _ = gate_verdict(metrics, settings.registry.promotion_margin)
        except GuardrailRejection as exc:  # an outcome, as in the trainer consumer
            metrics, passed = {"guardrail": str(exc)[:200]}, False
        evaluation = rm_metrics["eval"]
        rm_figures = {
            "rm_accuracy": evaluation["pairwise_accuracy"],
            "rm_accuracy_recent": evaluation["accuracy_recent"],
            "rm_disagreement": evaluation["disagreement"],
            "rm_seconds": rm_metrics["train"]["seconds"],
        }
        trusted = {f"trust_{k}": v for k, v in trust.summary().items()}
        return rm, {**rm_figures, **trusted, **filtered, **metrics}, passed

    def trained(self, metrics: dict, tag: str) -> Version | None:
        """The candidate policy-TAG, if the job saved one (whatever the gate said)."""
        if "mean_reward_after" not in metrics:
            return None
        return Version(tag, self.workdir / f"policy-{tag}", *load_policy(str(self.workdir / f"policy-{tag}")))


def run_learner(
    learner: str,
    seed: int,
    rounds: int,
    budget: int,
    threads: int,
    workdir: Path,
    conversations: bool = False,
    population: str = "kind",
    preference: str = "default",
) -> tuple[Start, list[RoundRecord]]:
    """(the base policy's hidden preference on held-out first turns, on follow-ups (NaN without
    `conversations`) and on traffic, one record per round), with users of `population` who judge
    by `preference` (names in `demo.populations.POPULATIONS`, `synthetic.PREFERENCES`)."""
    settings = settings_for(learner)
    torch.manual_seed(seed)
    base_path = ensure_tiny_policy()
    _, held_out = split_questions()
    asked, judged_by = on_traffic_questions(), PREFERENCES[preference]
    traffic = Traffic(seed, conversations, population, preference)
    serving = Version("base", base_path, *load_policy(str(base_path)))

    def follow_ups(version: Version) -> float:
        return follow_up_preference(version, judged_by) if conversations else float("nan")

    def held(version: Version) -> float:
        return hidden_preference(version, held_out, judged_by)

    serving_hidden, serving_follow_up, serving_on_traffic = start = (
        held(serving),
        follow_ups(serving),
        hidden_preference(serving, asked, judged_by),
    )
    candidate: Version | None = None
    triggers: list[TrainTrigger] = []
    events_of: dict[str, list[FeedbackEvent]] = {}
    records: list[RoundRecord] = []
    main = Learner(settings, RewardConfig.from_settings(settings, num_threads=threads), base_path, workdir, seed)
    ablation = Learner(settings, main.rm_config, base_path, workdir, seed)  # the last-turn-only line
    ablation_parent, ablation_figures = serving, start[:2]
    window = HistoryWindow.from_settings(settings)

    def decide(per_user: dict[str, dict[str, list[int]]]) -> None:
        """The last candidate's A/B test is over: promote it or keep the serving version."""
        nonlocal serving, serving_hidden, serving_follow_up, serving_on_traffic, candidate
        last = records[-1]
        last.ab_lift = ab_lift(per_user, serving.name, candidate.name)  # type: ignore[union-attr]
        last.decision = "promoted" if last.ab_lift[1] > 0 else "rolled_back"
        if last.decision == "promoted":
            serving, serving_hidden = candidate, last.candidate_hidden  # type: ignore[assignment]
            serving_follow_up, serving_on_traffic = last.candidate_follow_up, last.candidate_on_traffic  # type: ignore[assignment]
        last.serving_after, last.serving_follow_up, last.serving_on_traffic = (
            serving_hidden,
            serving_follow_up,
            serving_on_traffic,
        )
        candidate = None

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
        rm, metrics, passed = main.train(history, recent, serving, f"r{r}")
        record = RoundRecord(r, serving_after=serving_hidden, serving_follow_up=serving_follow_up)
        record.serving_on_traffic = serving_on_traffic
        on_policy = on_policy_accuracy(rm.predict, lambda queries, seed: answers(serving, queries, seed), held_out)
        record.metrics = {
            "history_events": float(len(history)),
            "serving_before": serving_hidden,
            "serving_follow_up_before": serving_follow_up,
            "rm_accuracy_on_policy": on_policy or float("nan"),
            **{k: float("nan" if v is None else v) for k, v in metrics.items() if v is None or isinstance(v, (int, float))},
        }
        record.metrics.update(adversary_shares(main.trust, traffic.population.adversaries))  # type: ignore[arg-type]
        if trained := main.trained(metrics, f"r{r}"):  # its ground truth, whatever the gate says
            record.candidate_hidden, record.candidate_follow_up = held(trained), follow_ups(trained)
            record.candidate_on_traffic = hidden_preference(trained, asked, judged_by)
            candidate = trained if passed else None
        if not passed:
            record.decision = "rejected"
        # 4. The context ablation: the same feedback, the last turn alone, a line of its own.
        if conversations:
            _, ablation_metrics, ablation_passed = ablation.train(
                last_turn_only(history), recent, ablation_parent, f"r{r}-last-turn"
            )
            if ablated := ablation.trained(ablation_metrics, f"r{r}-last-turn"):
                record.last_turn_only = (held(ablated), follow_ups(ablated))
                if ablation_passed:
                    ablation_parent, ablation_figures = ablated, record.last_turn_only
            else:
                record.last_turn_only = ablation_figures
        record.seconds = time.monotonic() - started
        records.append(record)
        m = record.metrics
        guardrail = f" by a guardrail ({metrics['guardrail']})" if "guardrail" in metrics else ""
        print(
            f"  {learner} seed {seed} round {r}: serving {serving_hidden:.3f} (follow-ups {serving_follow_up:.3f}), "
            f"history {len(history)}, RM acc {m['rm_accuracy']:.3f} "
            f"(on-policy {m['rm_accuracy_on_policy']:.3f}), gain {m.get('reward_gain', float('nan')):+.3f}, "
            f"kl base {m.get('kl_base', float('nan')):.3f}, {'candidate' if passed else 'rejected'}{guardrail} "
            f"(hidden {_num(record.candidate_hidden)}, follow-ups {_num(record.candidate_follow_up)}; "
            f"last-turn-only line {_num(record.last_turn_only and record.last_turn_only[1])}, {record.seconds:.0f}s)",
            flush=True,
        )
    if candidate:  # the last candidate's A/B test: one more round of traffic, no training
        decide(traffic.collect([serving, candidate], budget, rounds + 1)[1])
    return start, records


def adversary_shares(trust: UserTrust, adversaries: set[str]) -> dict[str, float]:
    """The adversarial users' share of a round's reward-model data, by events and by weight (what
    the trust defences left them)."""
    if not adversaries:
        return {}
    events = sum(trust.events.values()) or 1
    weighed = sum(n * trust.weight(u) for u, n in trust.events.items()) or 1.0
    theirs = [u for u in trust.events if u in adversaries]
    return {
        "adversary_share": sum(trust.events[u] for u in theirs) / events,
        "adversary_weight_share": sum(trust.events[u] * trust.weight(u) for u in theirs) / weighed,
    }


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


Start = tuple[float, float, float]  # the base policy's hidden preference: held out, follow-ups, on traffic
Results = dict[str, dict[int, tuple[Start, list[RoundRecord]]]]  # learner -> seed -> (start, rounds)
ABLATION_MARGIN = 0.05  # the rule of the context ablation (module docstring)


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
    parser.add_argument(
        "--conversations",
        action="store_true",
        help="users hold conversations with follow-ups; figures on follow-up turns too, and the context ablation",
    )
    parser.add_argument("--out", type=Path, help="write every round's figures as JSON here, and the curves as a PNG beside it")
    args = parser.parse_args()
    runs = [(learner, seed) for learner in args.learners for seed in args.seeds]
    results: Results = defaultdict(dict)
    jobs = [(learner, seed, args.rounds, args.budget, args.threads, args.conversations) for learner, seed in runs]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for (learner, seed), result in zip(runs, pool.map(run_in_process, jobs), strict=True):
            results[learner][seed] = result
    print_table(
        results, args.rounds, f"hidden preference of the serving version after each round (median over seeds {args.seeds})"
    )
    if args.conversations:
        print_table(results, args.rounds, "... on follow-up turns", follow_ups=True)
        print("\ncontext ablation, last round: follow-up hidden preference, in-context vs last-turn-only candidate")
        for learner, by_seed in results.items():
            for seed, (_, recs) in by_seed.items():
                last = recs[-1]
                ours = last.metrics["serving_follow_up_before"] if last.candidate_follow_up is None else last.candidate_follow_up
                theirs = last.last_turn_only[1] if last.last_turn_only else float("nan")
                verdict = "holds" if ours - theirs >= ABLATION_MARGIN else "does not hold"
                print(f"  {learner} seed {seed}: {ours:.3f} vs {theirs:.3f}: {verdict}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        by_learner = {
            k: {seed: {"start": start, "rounds": [r.__dict__ for r in recs]} for seed, (start, recs) in d.items()}
            for k, d in results.items()
        }
        args.out.write_text(json.dumps(by_learner, indent=1, default=str))
        plot_curves(results, args.out.with_suffix(".png"))


def print_table(results: Results, rounds: int, title: str, follow_ups: bool = False) -> None:
    """The serving version's hidden preference per learner and round (on follow-up turns with `follow_ups`)."""
    print(f"\n{title}; per seed: P promoted, R rolled back by the A/B test, x rejected by the gate")
    print(f"{'learner':<14}{'start':>8}" + "".join(f"{'r' + str(r):>12}" for r in range(1, rounds + 1)) + f"{'min s/round':>12}")
    for learner, by_seed in results.items():
        cells = [f"{statistics.median(start[follow_ups] for start, _ in by_seed.values()):.3f}"]
        for r in range(rounds):
            value = statistics.median(
                recs[r].serving_follow_up if follow_ups else recs[r].serving_after for _, recs in by_seed.values()
            )
            marks = "".join(
                {"promoted": "P", "rolled_back": "R", "rejected": "x"}.get(recs[r].decision, "?") for _, recs in by_seed.values()
            )
            cells.append(f"{value:.3f} {marks}")
        seconds = statistics.median(rec.seconds for _, recs in by_seed.values() for rec in recs)
        print(f"{learner:<14}{cells[0]:>8}" + "".join(f"{c:>12}" for c in cells[1:]) + f"{seconds:>12.0f}")


def run_in_process(job: tuple[Any, ...]) -> tuple[Start, list[RoundRecord]]:
    """One learner on one seed, in a worker process of its own (torch threads set there): `job` is
    (learner, seed, rounds, budget, threads, conversations[, population, preference])."""
    learner, seed, rounds, budget, threads, conversations, *world = job
    quiet()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as tmp:
        return run_learner(learner, seed, rounds, budget, threads, Path(tmp), conversations, *world)


def plot_curves(results: Results, path: Path) -> None:
    """The serving version's hidden preference per round, one line per learner and seed (dashed: on follow-up turns;
    dotted: the follow-ups of the context ablation's last-turn-only candidates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for n, (learner, by_seed) in enumerate(results.items()):
        for k, (start, recs) in enumerate(by_seed.values()):
            xs = range(len(recs) + 1)
            ax.plot(
                xs,
                [start[0], *(r.serving_after for r in recs)],
                "o-",
                color=f"C{n}",
                alpha=0.7,
                label=learner if k == 0 else None,
            )
            if not math.isnan(start[1]):
                follow_ups = [start[1], *(r.serving_follow_up for r in recs)]
                ax.plot(xs, follow_ups, "s--", color=f"C{n}", alpha=0.7, label=f"{learner}, follow-ups" if k == 0 else None)
            if any(r.last_turn_only for r in recs):
                ablated = [start[1], *(r.last_turn_only[1] if r.last_turn_only else math.nan for r in recs)]
                label = f"{learner}, follow-ups, last turn only (candidates)" if k == 0 else None
                ax.plot(xs, ablated, "x:", color=f"C{n}", alpha=0.7, label=label)
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
