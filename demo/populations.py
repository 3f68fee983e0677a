"""Named populations of simulated users (`rlhf demo --population`, bench/robustness.py): how often
they react, how noisy and how wrong their feedback is, how unevenly active they are, and who among
them is adversarial.

`kind` is the population every figure before named populations was measured with: nine answers in
ten get a reaction, every correction is right, everyone asks as often, nobody lies. `realistic` is
closer to a deployed chat app: one answer in ten gets a reaction, ratings are noisier, about one
answer in a hundred gets a correction and a quarter of those have a detail wrong, a thumb sometimes
contradicts what the user thought, and a few users ask far more than most. `hostile` is
`realistic` with adversaries: some vote at random, some always against the answer's merit (and
"correct" good answers with bad ones), they react three times as often as honest users, and three
of them are among the busiest users.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

HONEST, CONTRARIAN, RANDOM = "honest", "contrarian", "random"  # a user's role


@dataclass(frozen=True)
class Behaviour:
    feedback_rate: float = 0.9  # share of answers users react to at all
    rating_share: float = 0.3  # of reactions: a 1-5 rating instead of a thumb
    correction_share: float = 0.1  # of reactions to a bad answer: a written correction
    rating_noise: float = 0.6  # std-dev of the rating around 1 + 4 * quality
    wrong_correction_share: float = 0.0  # of corrections: helpful steps with one detail wrong
    thumb_flip_share: float = 0.0  # of thumbs: the opposite of what the user thought (a slip, a mood)
    activity_sigma: float = 0.0  # spread of the users' lognormal activity weights (0: all ask as often)
    adversary_share: float = 0.0  # of users
    contrarian_share: float = 0.5  # of adversaries: always against; the others vote at random
    adversary_feedback_rate: float = 1.0  # share of answers an adversary reacts to (feedback is their aim)
    heavy_adversaries: int = 0  # of the adversaries, this many are among the busiest users ...
    heavy_ask_share: float = 0.0  # ... asking together this share of all questions

    def settings(self, base: Behaviour | None = None) -> str:
        """Its settings as `name value` pairs: those set otherwise than `base`, or (no base) those
        that are on (the adversaries' only with adversaries)."""
        names = [f.name for f in dataclasses.fields(self)]
        if base is not None:
            names = [n for n in names if getattr(self, n) != getattr(base, n)]
        elif not self.adversary_share:
            names = [n for n in names if getattr(self, n) and not n.startswith(("adversary", "contrarian"))]
        return ", ".join(f"{n} {getattr(self, n)}" for n in names)


KIND = Behaviour()
REALISTIC = Behaviour(
    feedback_rate=0.1,
    rating_noise=1.0,
    correction_share=0.25,  # with the two above: 0.8-0.9% of answers where half are bad, more where more are
    wrong_correction_share=0.25,
    thumb_flip_share=0.1,
    activity_sigma=1.0,  # the busiest of 500 users asks some 20 times the median
)
POPULATIONS: dict[str, Behaviour] = {
    "kind": KIND,
    "realistic": REALISTIC,
    # Adversaries react to 3 answers in 10 (honest users to 1): the heavy three give some 15% of the
    # feedback, all adversaries together some 28%, a minority a per-user consensus can outvote (tests/unit/demo).
    "hostile": dataclasses.replace(
        REALISTIC, adversary_share=0.08, adversary_feedback_rate=0.3, heavy_adversaries=3, heavy_ask_share=0.06
    ),
}


def described() -> dict[str, str]:
    """One line per population for `--help`: what it changes from the one listed before it."""
    lines: dict[str, str] = {}
    for name, behaviour in POPULATIONS.items():
        before = list(lines)[-1] if lines else None
        lines[name] = f"{before} with {behaviour.settings(POPULATIONS[before])}" if before else behaviour.settings()
    return lines


@dataclass(frozen=True)
class Cast:
    """Who is who in a population: the adversaries (the contrarians among them) and each user's
    activity weight (None: all ask as often)."""

    adversaries: frozenset[str]
    contrarians: frozenset[str]
    weights: tuple[float, ...] | None

    def role(self, user: str | None) -> str:
        if user not in self.adversaries:
            return HONEST
        return CONTRARIAN if user in self.contrarians else RANDOM


def cast(users: list[str], behaviour: Behaviour, seed: int) -> Cast:
    """The roles and activity of `users`, drawn from `seed` alone (never from the generator that
    draws what they ask), so a population's cast is the same however it is used."""
    b = behaviour
    rng = random.Random(f"cast-{seed}")
    adversaries = rng.sample(users, round(b.adversary_share * len(users))) if b.adversary_share else []
    contrarians = adversaries[: round(b.contrarian_share * len(adversaries))]
    rng.shuffle(adversaries)  # the heavy ones are of both kinds
    heavy = set(adversaries[: b.heavy_adversaries])
    if not b.activity_sigma and not heavy:
        return Cast(frozenset(adversaries), frozenset(contrarians), None)
    weights = {u: rng.lognormvariate(0.0, b.activity_sigma) if b.activity_sigma else 1.0 for u in users if u not in heavy}
    each = b.heavy_ask_share * sum(weights.values()) / ((1 - b.heavy_ask_share) * len(heavy)) if heavy else 0.0
    return Cast(frozenset(adversaries), frozenset(contrarians), tuple(weights.get(u, each) for u in users))
