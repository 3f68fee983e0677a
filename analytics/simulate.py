"""A/A and power harness for the A/B decision (`rlhf ab simulate`): simulated experiments go through
the project's own per-user statistics and decision rule (analytics.decision), with no ClickHouse:
the per-user sums the `ab_users` query would return are computed here and fed to the same code.

Simulated users differ as real ones do: each has a propensity to give positive feedback drawn
from a Beta distribution, and a heavy-tailed number of feedback events (Zipf, capped), so a few
heavy users give much of the feedback. A share of them also gave feedback before the experiment,
from the same propensity: the CUPED covariate. Feedback is a thumbs up or down, so the thumbs-down
guardrail mirrors the positive rate and there are no ratings. An experiment's users arrive in
`peeks` equal batches; it is decided after every batch (continuous peeking, as the decider does)
and once at the end (one look).

The same data is also analysed per event (every event its own unit, with no covariate, as the
analysis before per-user statistics did) to show what ignoring who gave the feedback costs.

    result = simulate(experiments=2000, users=500, lift=0.0, peeks=10, ab=settings.ab_testing, seed=0)
    result.per_user.peeking        # share of A/A experiments that promoted or rolled back: <= alpha
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analytics.decision import ACTIONS, Arm, compare_arms, rule_of, user_terms
from core.learning_settings import ABTestingSettings

Sums = Mapping[str, npt.NDArray[np.float64]]
CHUNK = 250  # experiments simulated at once: bounds memory (arrays of CHUNK x users per arm)
SEARCH_STEPS = 8  # bisection steps of `smallest_lift`: the lift to within 1/2^8 = 0.4%


@dataclass(frozen=True)
class Population:
    """Who the simulated users are."""

    propensity: tuple[float, float] = (3.0, 2.0)  # Beta(a, b): positive rate 0.6 on average, 0.2 sd between users
    zipf: float = 1.8  # events per user ~ Zipf(zipf): most give one, a few give many
    max_events: int = 100
    history_share: float = 0.6  # users with pre-experiment feedback


@dataclass(frozen=True)
class Rates:
    """Share of experiments decided (A/A: falsely) at the last look only, and at any look."""

    one_look: float
    peeking: float


@dataclass(frozen=True)
class Simulation:
    experiments: int
    users: int  # per arm, at the last look
    lift: float  # relative lift of each treated user's positive propensity (capped at 1)
    realised_lift: float  # the treatment's positive rate over the control's, minus 1, at the last look: mean over experiments
    peeks: int
    per_user: Rates  # promote or rollback by the per-user analysis
    per_event: Rates  # promote or rollback by the per-event analysis of the same data
    promoted: Rates  # promote by the per-user analysis: the power when lift > 0


def simulate(
    experiments: int,
    users: int,
    lift: float,
    peeks: int,
    ab: ABTestingSettings,
    seed: int,
    population: Population = Population(),
    progress: Callable[[int], object] | None = None,
) -> Simulation:
    """Simulate `experiments` experiments of `users` users per arm; `progress(n)` after each n experiments."""
    rng = np.random.default_rng(seed)
    looks = np.ceil(users * np.arange(1, peeks + 1) / peeks).astype(int)
    decided = {"per_user": np.zeros(2), "per_event": np.zeros(2), "promoted": np.zeros(2)}
    lifts = 0.0
    for start in range(0, experiments, CHUNK):
        size = min(CHUNK, experiments - start)
        control, treatment = (_arm_sums(rng, size, users, arm_lift, population, looks) for arm_lift in (0.0, lift))
        per_user = _actions(control, treatment, ab)
        per_event = _actions(_as_events(control), _as_events(treatment), ab)
        for name, hit in (
            ("per_user", per_user != "keep_running"),
            ("per_event", per_event != "keep_running"),
            ("promoted", per_user == "promote"),
        ):
            decided[name] += (hit[:, -1].sum(), hit.any(axis=1).sum())
        rate_t, rate_c = (arm["positives"][:, -1] / arm["feedback"][:, -1] for arm in (treatment, control))
        lifts += float((rate_t / rate_c - 1).sum())
        if progress is not None:
            progress(size)
    rates = {name: Rates(float(one) / experiments, float(any_) / experiments) for name, (one, any_) in decided.items()}
    return Simulation(experiments, users, lift, lifts / experiments, peeks, **rates)


def _arm_sums(rng: np.random.Generator, size: int, users: int, lift: float, pop: Population, looks: npt.NDArray[np.int_]) -> Sums:
    """Per-user figures of one arm of `size` experiments, summed over the users seen by each look:
    the columns of `ab_users` (analytics.decision.SUM_COLUMNS), each of shape (size, looks)."""
    shape = (size, users)
    propensity = rng.beta(*pop.propensity, shape)
    f = np.minimum(rng.zipf(pop.zipf, shape), pop.max_events).astype(np.float64)
    p = rng.binomial(f.astype(np.int64), np.minimum(propensity * (1 + lift), 1.0)).astype(np.float64)
    before = np.where(rng.random(shape) < pop.history_share, np.minimum(rng.zipf(pop.zipf, shape), pop.max_events), 0)
    h = (before > 0).astype(np.float64)
    x = np.divide(rng.binomial(before, propensity), before, out=np.zeros(shape), where=before > 0)
    none = np.zeros(shape)  # no ratings
    per_user = {"users_exposed": np.ones(shape), **user_terms(f, p, f - p, none, none, h, x)}
    return {k: np.cumsum(v, axis=1)[:, looks - 1] for k, v in per_user.items()}


def _as_events(sums: Sums) -> Sums:
    """The same arm with every event its own unit (a 0/1 outcome, so its square is itself), no history."""
    f, p, d = sums["feedback"], sums["positives"], sums["thumbs_down"]
    return {
        "users_exposed": sums["users_exposed"],
        "users": f,
        "feedback": f,
        "feedback_sq": f,
        "positives": p,
        "positives_sq": p,
        "positives_feedback": p,
        "thumbs_down": d,
        "thumbs_down_sq": d,
        "thumbs_down_feedback": d,
    }


def _actions(control: Sums, treatment: Sums, ab: ABTestingSettings) -> npt.NDArray[np.str_]:
    """analytics.decision's action for every experiment and look. Arms are equal by construction,
    so the sample-ratio check cannot fire and is passed as held."""
    c, t = Arm.from_sums("control", control), Arm.from_sums("treatment", treatment)
    rules = rule_of(c, t, compare_arms(c, t, ab.alpha), False, ab)
    actions: npt.NDArray[np.str_] = np.vectorize(ACTIONS.__getitem__, otypes=[str])(rules)
    return actions


def smallest_lift(
    users: int,
    peeks: int,
    ab: ABTestingSettings,
    seed: int,
    experiments: int,
    power: float = 0.8,
    steps: int = SEARCH_STEPS,
    progress: Callable[[int], object] | None = None,
) -> Simulation:
    """The simulation at the smallest relative lift promoted (at any look) in at least `power` of the
    experiments, found by bisection over [0, 1] with `steps` simulations on the same seed after one
    at 1; when even a lift of 1 falls short, that simulation (check its `promoted.peeking`)."""

    def run(lift: float) -> Simulation:
        return simulate(experiments, users, lift, peeks, ab, seed, progress=progress)

    low, best = 0.0, run(1.0)
    if best.promoted.peeking < power:
        return best
    for _ in range(steps):
        middle = run((low + best.lift) / 2)
        if middle.promoted.peeking >= power:
            best = middle
        else:
            low = middle.lift
    return best
