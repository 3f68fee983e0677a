"""Do the defaults hold across worlds? The learner with the feedback-trust defences on (`trust`,
`trainers.trust`) and off (`no-trust`: every verdict weighs the same, every correction is learned;
the project's defaults since docs/decisions/0008), over simulated populations x hidden preferences x seeds, offline: the loop of
`bench/rounds.py` (the trainer's functions, the A/B test on the next round's traffic).

    python -m bench.robustness                       # kind realistic hostile x default steps-first concise x seeds 0 1, 5 rounds
    python -m bench.robustness --populations hostile --preferences default --seeds 0 --rounds 3 --budget 600

Per world and learner it prints the serving version's final hidden preference on held-out
questions (no user asked them) and on traffic (questions like the users'), the base policy's,
promoted regressions (a promoted candidate worse than what it replaced by more than 0.02, held out),
the round of the first promotion, and what the trust defences down-weighted in the last round.
Then the rule of docs/decisions/0008-feedback-trust.md, line by line.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.rounds import RoundRecord, Start, run_in_process
from demo.populations import POPULATIONS
from trainers.synthetic import PREFERENCES

LEARNERS = ("trust", "no-trust")  # the feedback-trust defences on, and off (the defaults since docs/decisions/0008)
REGRESSION = 0.02  # a promoted candidate this much worse than its parent (held out) is a promoted regression


@dataclass(frozen=True)
class World:
    population: str
    preference: str
    seed: int


@dataclass(frozen=True)
class Outcome:
    """One learner in one world, after the last round."""

    base_held_out: float
    base_on_traffic: float
    held_out: float
    on_traffic: float
    candidates_held_out: float  # median over the rounds' trained candidates, promoted or not: what the learner made
    promotions: int
    promoted_regressions: int
    first_promotion: int | None
    down_weighted_users: float
    down_weighted_share: float
    corrections_dropped: float
    adversary_share: float  # of the last round's reward-model data, by events (0 without adversaries)
    adversary_weight_share: float  # ... by weight, once the trust defences weighed it


def outcome(start: Start, records: list[RoundRecord]) -> Outcome:
    promoted = [r for r in records if r.decision == "promoted"]
    regressions = [r for r in promoted if (r.candidate_hidden or 0.0) < r.metrics["serving_before"] - REGRESSION]
    last = records[-1].metrics
    made = [r.candidate_hidden for r in records if r.candidate_hidden is not None]
    return Outcome(
        base_held_out=start[0],
        base_on_traffic=start[2],
        held_out=records[-1].serving_after,
        on_traffic=records[-1].serving_on_traffic,
        candidates_held_out=statistics.median(made) if made else math.nan,
        promotions=len(promoted),
        promoted_regressions=len(regressions),
        first_promotion=promoted[0].round if promoted else None,
        down_weighted_users=last.get("trust_users_down_weighted", 0.0),
        down_weighted_share=last.get("trust_feedback_share_down_weighted", 0.0),
        corrections_dropped=last.get("corrections_dropped", 0.0),
        adversary_share=last.get("adversary_share", 0.0),
        adversary_weight_share=last.get("adversary_weight_share", 0.0),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--populations", nargs="+", default=["kind", "realistic", "hostile"], choices=list(POPULATIONS))
    parser.add_argument("--preferences", nargs="+", default=["default", "steps-first", "concise"], choices=list(PREFERENCES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=LEARNERS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=1200, help="feedback events per round (the demo's train threshold)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, each in its own process")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each run")
    parser.add_argument("--out", type=Path, help="write every world's outcome and rounds as JSON here")
    parser.add_argument("--report", type=Path, help="print the table and the rule of an earlier run's --out JSON, run nothing")
    args = parser.parse_args()
    if args.report:
        return report_of(args.report)

    worlds = [World(p, q, s) for p in args.populations for q in args.preferences for s in args.seeds]
    runs = [(learner, world) for world in worlds for learner in args.learners]
    jobs = [(learner, w.seed, args.rounds, args.budget, args.threads, False, w.population, w.preference) for learner, w in runs]
    results: dict[tuple[str, World], tuple[Start, list[RoundRecord]]] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for (learner, world), result in zip(runs, pool.map(run_in_process, jobs), strict=True):
            results[learner, world] = result
            print(f"done: {learner} {world}: {outcome(*result)}", flush=True)
    outcomes = {key: outcome(*result) for key, result in results.items()}
    print_table(outcomes, worlds, args.learners)
    print_rule(outcomes, worlds, args.learners)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = [
            {"learner": learner, **asdict(world), **asdict(o), "rounds": [r.__dict__ for r in results[learner, world][1]]}
            for (learner, world), o in outcomes.items()
        ]
        args.out.write_text(json.dumps(rows, indent=1, default=str))


def report_of(path: Path) -> None:
    """The table and the rule of a saved run (`--out`), its outcomes recomputed from its rounds."""
    rows = json.loads(path.read_text())
    outcomes = {}
    for row in rows:
        row["learner"] = {"continuous": "trust"}.get(row["learner"], row["learner"])  # runs before the defaults changed
        start = (row["base_held_out"], math.nan, row["base_on_traffic"])
        outcomes[row["learner"], World(row["population"], row["preference"], row["seed"])] = outcome(
            start, [RoundRecord(**r) for r in row["rounds"]]
        )
    worlds = list(dict.fromkeys(world for _, world in outcomes))
    learners = list(dict.fromkeys(learner for learner, _ in outcomes))
    print_table(outcomes, worlds, learners)
    print_rule(outcomes, worlds, learners)


def print_table(outcomes: dict[tuple[str, World], Outcome], worlds: list[World], learners: list[str]) -> None:
    print(
        "\nhidden preference of the serving version after the last round: held out (never asked) / on traffic; "
        "base: the starting policy's; cand: the median candidate's held out, promoted or not; "
        "P: promotions, !: promoted regressions, 1st: round of the first promotion; "
        "down: users down-weighted (share of feedback) and corrections not learned, last round; "
        "adv: adversaries' share of that round's data, by events -> by weight"
    )
    print(f"{'world':<34}{'learner':<12}{'base':>13}{'final':>13}{'cand':>7}{'P':>3}{'!':>3}{'1st':>5}{'down':>16}{'adv':>14}")
    for w in worlds:
        for learner in learners:
            o = outcomes[learner, w]
            name = f"{w.population}/{w.preference}/seed {w.seed}"
            down = f"{o.down_weighted_users:.0f} ({o.down_weighted_share:.0%}) {o.corrections_dropped:.0f}"
            print(
                f"{name:<34}{learner:<12}{o.base_held_out:>6.3f}/{o.base_on_traffic:.3f}{o.held_out:>7.3f}/{o.on_traffic:.3f}{o.candidates_held_out:>7.3f}"
                f"{o.promotions:>3}{o.promoted_regressions:>3}{o.first_promotion or '-':>5}{down:>16}"
                f"{o.adversary_share:>7.0%} ->{o.adversary_weight_share:>4.0%}"
            )


def print_rule(outcomes: dict[tuple[str, World], Outcome], worlds: list[World], learners: list[str]) -> None:
    """The rule of docs/decisions/0008-feedback-trust.md, for each learner where it applies."""
    print("\nthe rule (docs/decisions/0008-feedback-trust.md):")
    for learner in learners:
        mine = {w: outcomes[learner, w] for w in worlds}
        regressions = sum(o.promoted_regressions for o in mine.values())
        below = [w for w, o in mine.items() if o.held_out <= o.base_held_out]
        print(f"  {learner}: (a) promoted regressions in all worlds: {regressions}: {'holds' if not regressions else 'fails'}")
        verdict = "holds" if not below else "fails"
        print(f"  {learner}: (b) worlds ending at or below the base policy (held out): {len(below)}: {verdict}")
    if set(LEARNERS) <= set(learners):
        for population, test in (("hostile", lambda a, b: a > b), ("kind", lambda a, b: a >= b - REGRESSION)):
            theirs = [w for w in worlds if w.population == population]
            if not theirs:
                continue
            medians = [statistics.median(outcomes[learner, w].held_out for w in theirs) for learner in LEARNERS]
            verdict = "holds" if test(*medians) else "fails"
            line = "(c) robust above no-trust" if population == "hostile" else "(d) robust not below no-trust by > 0.02"
            print(f"  {line} in {population}, median held out: {medians[0]:.3f} vs {medians[1]:.3f}: {verdict}")


if __name__ == "__main__":
    main()
