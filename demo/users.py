"""A simulated population of chat users for `rlhf demo` and the end-to-end tests.

Users ask generated support questions through the real assistant service, read the answers, and
react through the real producer SDK according to the hidden preference `synthetic.quality`, which
the system never sees: thumbs, 1-5 ratings (noisy), and corrections (the answer they wanted).
Every random choice comes from one seeded generator, so a run is reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from sdk.client import FeedbackClient
from trainers.synthetic import Question, all_questions, answer, quality


@dataclass(frozen=True)
class Behaviour:
    feedback_rate: float = 0.9  # share of answers users react to at all
    rating_share: float = 0.3  # of reactions: a 1-5 rating instead of a thumb
    correction_share: float = 0.1  # of reactions to a bad answer: a written correction
    rating_noise: float = 0.6  # std-dev of the rating around 1 + 4 * quality


@dataclass
class RoundStats:
    interactions: int = 0
    feedback: int = 0
    positive: int = 0


class Population:
    def __init__(self, size: int, seed: int = 0, behaviour: Behaviour = Behaviour()):
        self.users = [f"user-{seed}-{n:05d}" for n in range(size)]
        self.rng = random.Random(seed)
        self.behaviour = behaviour
        self.questions: list[Question] = all_questions()

    def react(self, client: FeedbackClient, user_id: str, q: Question, reply: dict) -> bool | None:
        """Send this user's feedback on one answer; returns whether it was positive (None: no reaction)."""
        b, rng = self.behaviour, self.rng
        if rng.random() >= b.feedback_rate:
            return None
        score = quality(q, reply["response"])
        common = dict(interaction_id=reply["interaction_id"], user_id=user_id, query=q.text, response=reply["response"],
                      model_version=reply["model_version"], experiment=reply["experiment"], variant=reply["variant"])  # fmt: skip
        if rng.random() < b.rating_share:
            rating = min(5, max(1, round(1 + 4 * score + rng.gauss(0, b.rating_noise))))
            client.feedback(**common, feedback_type="rating", rating=rating)
            return rating >= 4
        liked = rng.random() < score
        if not liked and rng.random() < b.correction_share:
            client.feedback(**common, feedback_type="correction", correction=answer(q, "helpful", rng))
        else:
            client.feedback(**common, feedback_type="thumbs_up" if liked else "thumbs_down")
        return liked

    def step(self, http: httpx.Client, client: FeedbackClient, n: int) -> RoundStats:
        """`n` users each ask one question through the service and react to the answer."""
        asks = [(self.rng.choice(self.users), self.rng.choice(self.questions)) for _ in range(n)]
        response = http.post("/chat/batch", json=[{"user_id": u, "query": q.text} for u, q in asks], timeout=300)
        response.raise_for_status()
        stats = RoundStats(interactions=n)
        for (user, q), reply in zip(asks, response.json()):
            positive = self.react(client, user, q, reply)
            if positive is not None:
                stats.feedback += 1
                stats.positive += positive
        client.flush()
        return stats

