"""How much each user's feedback counts: feedback from real users is noisy, sometimes adversarial,
and a few heavy users can give a large share of it. Three defences, each a `trust` setting
(`core.learning_settings.FeedbackTrustSettings`; the reasons: docs/decisions/0008-feedback-trust.md):

- a cap: one user's verdicts weigh at most `max_user_share` of a round's feedback (a user with
  more events gets a proportionally smaller weight per event), so no single user dominates a
  reward-model batch or the corrections;
- agreement: each verdict is compared with the consensus on the same answer, the other users'
  verdicts on the same text in the same context and, from round 2 on, the previous round's reward
  model (positive where it scores the answer above the quantile of the users' overall positive
  rate). A user whose verdicts agree less often than the average user's do is down-weighted
  towards 0 at coin-flip agreement; `agreement_prior` pseudo-verdicts at the population's rate
  keep a user with few verdicts near weight 1;
- corrections: learned as demonstrations only from users of weight at least `min_correction_trust`,
  at most the cap's share per user, and when the round's reward model prefers the correction to
  the answer it replaces.

    trust = user_trust(events, settings.trust, min_rating, score=previous_rm.predict)  # or score=None
    trust.weight("user-7")                 # in [0, 1]; 1 for a user with no events here
    kept, report = trusted_corrections(events, trust, settings.trust, score=rm.predict)
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.hashing import stable_hash64
from core.learning_settings import FeedbackTrustSettings
from schemas.events import FeedbackEvent
from trainers.chat_format import Conversation, Prompt
from trainers.dataset import context_key

Scorer = Callable[[Sequence[Prompt], Sequence[str]], list[float]]  # a reward model's `predict`
DOWN_WEIGHTED = 0.5  # a user below this weight is reported as down-weighted


@dataclass(frozen=True)
class UserTrust:
    """Per-user weights in [0, 1] and what they rest on."""

    weights: dict[str, float]
    events: dict[str, int]  # the user's verdicts in the data
    agreement: dict[str, tuple[int, int]]  # (agreeing, compared) verdicts of the user
    population_agreement: float  # the users' mean agreement rate, each user once (nan: nothing compared)

    def weight(self, user: str) -> float:
        return self.weights.get(user, 1.0)

    def summary(self) -> dict[str, float]:
        """Flat figures for a manifest and the report: how many users were down-weighted and their
        share of the feedback, the heaviest user's share and weight."""
        total = sum(self.events.values()) or 1
        down = [u for u, w in self.weights.items() if w < DOWN_WEIGHTED]
        heaviest = max(self.events, key=lambda u: self.events[u], default=None)
        return {
            "users": float(len(self.weights)),
            "users_down_weighted": float(len(down)),
            "feedback_share_down_weighted": sum(self.events[u] for u in down) / total,
            "effective_share": sum(self.events[u] * w for u, w in self.weights.items()) / total,
            "population_agreement": self.population_agreement,
            "heaviest_user_share": self.events[heaviest] / total if heaviest else 0.0,
            "heaviest_user_weight": self.weights[heaviest] if heaviest else 1.0,
        }


def user_trust(
    events: Sequence[FeedbackEvent], settings: FeedbackTrustSettings, min_rating: int, score: Scorer | None = None
) -> UserTrust:
    """Each user's weight on `events`: the cap's share times the agreement weight (module docstring).
    `score` is the previous round's reward model (None in round 1: other users' verdicts alone)."""
    counts = Counter(e.user_id for e in events)
    agreement = _agreement(events, min_rating, score) if settings.agreement_weighting else {}
    # The population's rate counts each user once: a heavy user cannot move the reference it is judged by.
    rates = [a / n for a, n in agreement.values() if n]
    population = sum(rates) / len(rates) if rates else math.nan
    cap = None if settings.max_user_share is None else settings.max_user_share * len(events)
    weights = {}
    for user, n in counts.items():
        by_cap = 1.0 if cap is None else min(1.0, cap / n)
        weights[user] = by_cap * _agreement_weight(agreement.get(user, (0, 0)), population, settings.agreement_prior)
    return UserTrust(weights, dict(counts), agreement, population)


def _agreement_weight(user: tuple[int, int], population: float, prior: float) -> float:
    """1 at the population's agreement rate or above, 0 at a coin flip's or below, linear between;
    the user's rate is shrunk towards the population's by `prior` pseudo-verdicts."""
    if math.isnan(population) or population <= 0.5:  # no consensus to measure against
        return 1.0
    agreed, compared = user
    rate = (agreed + prior * population) / (compared + prior) if compared + prior else population
    return min(1.0, max(0.0, (rate - 0.5) / (population - 0.5)))


def _verdict(event: FeedbackEvent, min_rating: int) -> bool:
    """Whether the user liked the answer (a correction: they did not)."""
    return event.is_positive(min_rating)


def _agreement(events: Sequence[FeedbackEvent], min_rating: int, score: Scorer | None) -> dict[str, tuple[int, int]]:
    """(agreeing, compared) verdicts per user: against the other users' verdicts on the same answer
    (where they lean one way), and against `score`'s verdict when given."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_answer: dict[tuple[str, str], list[FeedbackEvent]] = defaultdict(list)
    for e in events:
        by_answer[(context_key(Conversation.of(e)), e.response.strip())].append(e)
    for group in by_answer.values():
        if len({e.user_id for e in group}) < 2:
            continue
        for e in group:
            others = [_verdict(o, min_rating) for o in group if o.user_id != e.user_id]
            lean = sum(others) / len(others)
            if lean != 0.5:
                tally[e.user_id][0] += _verdict(e, min_rating) == (lean > 0.5)
                tally[e.user_id][1] += 1
    if score is not None and events:
        scores = score([Conversation.of(e) for e in events], [e.response for e in events])
        liked = [_verdict(e, min_rating) for e in events]
        # The model's "liked": above the quantile that makes it as positive as the users are overall.
        threshold = sorted(scores)[min(len(scores) - 1, int(len(scores) * (1 - sum(liked) / len(liked))))]
        for e, s, v in zip(events, scores, liked, strict=True):
            tally[e.user_id][0] += v == (s >= threshold)
            tally[e.user_id][1] += 1
    return {u: (a, n) for u, (a, n) in tally.items()}


def trusted_corrections(
    events: Sequence[FeedbackEvent], trust: UserTrust, settings: FeedbackTrustSettings, score: Scorer | None = None
) -> tuple[list[FeedbackEvent], dict[str, float]]:
    """`events` without the corrections not to learn as demonstrations (from a user below
    `min_correction_trust`, past the user's share of the corrections, or one `score` does not
    prefer to the answer it replaces), and how many were kept and dropped, by reason. Everything
    else passes unchanged; without `correction_filter` every event does."""
    fixes = [e for e in events if e.correction is not None]
    if not settings.correction_filter or not fixes:
        return list(events), {"corrections_kept": float(len(fixes)), "corrections_dropped": 0.0}
    dropped: dict[str, str] = {}
    for e in fixes:
        if trust.weight(e.user_id) < settings.min_correction_trust:
            dropped[e.event_id] = "untrusted_user"
    if settings.max_user_share is not None:
        allowed = max(1, math.ceil(settings.max_user_share * len(fixes)))
        by_user: dict[str, list[FeedbackEvent]] = defaultdict(list)
        for e in fixes:
            if e.event_id not in dropped:
                by_user[e.user_id].append(e)
        for mine in by_user.values():  # a stable, content-based choice, so a replay keeps the same ones
            for e in sorted(mine, key=lambda e: stable_hash64(e.event_id))[allowed:]:
                dropped[e.event_id] = "user_share"
    if score is not None:
        rest = [e for e in fixes if e.event_id not in dropped]
        if rest:
            prompts = [Conversation.of(e) for e in rest]
            better = score(prompts, [e.correction or "" for e in rest])
            worse = score(prompts, [e.response for e in rest])
            for e, c, r in zip(rest, better, worse, strict=True):
                if c <= r:
                    dropped[e.event_id] = "not_preferred"
    reasons = Counter(dropped.values())
    report = {
        "corrections_kept": float(len(fixes) - len(dropped)),
        "corrections_dropped": float(len(dropped)),
        **{f"corrections_dropped_{reason}": float(n) for reason, n in reasons.items()},
    }
    return [e for e in events if e.event_id not in dropped], report


TRUST_FILE = "trust.json"  # beside a reward model version: the weights its data was trained under


def save_trust(directory: Path, trust: UserTrust) -> None:
    """The weights a reward model was trained under, for the round's policy (`load_trust`)."""
    fields = {"weights": trust.weights, "events": trust.events, "agreement": trust.agreement}
    (directory / TRUST_FILE).write_text(json.dumps({**fields, "population_agreement": trust.population_agreement}))


def load_trust(directory: Path) -> UserTrust:
    """The weights saved beside a reward model; everyone weighs 1 for a version saved without them."""
    path = directory / TRUST_FILE
    if not path.exists():
        return UserTrust({}, {}, {}, math.nan)
    data = json.loads(path.read_text())
    agreement = {u: (a, n) for u, (a, n) in data["agreement"].items()}
    return UserTrust(data["weights"], data["events"], agreement, data["population_agreement"])
