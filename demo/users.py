"""A simulated population of chat users for `rlhf demo` and the end-to-end tests.

Users talk to the assistant service the way a chat app does: `POST /v1/chat/completions` (the
OpenAI-compatible API) for an answer, then `POST /v1/feedback` with the answer's feedback token,
as a browser would. They react according to the hidden preference `synthetic.quality`, which the
system never sees: thumbs, 1-5 ratings (noisy), and corrections (the answer they wanted).

A step's users ask concurrently (the service micro-batches them), each with its own random
generator drawn in order from the population's seeded one, so a run is reproducible whatever
order the answers come back in.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from trainers.synthetic import Question, all_questions, answer, quality

CONCURRENT_USERS = 32  # requests in flight per step: what the service batches together
RETRIES_ON_503 = 8  # a full queue, or feedback Kafka did not take (a broker bounce): a chat app tries again


def post(http: httpx.Client, path: str, body: dict, **kw) -> dict:
    """POST as a chat app would: again, with a growing pause, while the service answers 503 or the
    connection breaks (a pooled keep-alive connection the server closed while users waited for a
    training: seen as a ReadError). Safe to repeat: a repeated verdict has the same event id and is
    deduped; a repeated question is a new interaction, and the lost answer got no feedback."""
    for attempt in range(RETRIES_ON_503 + 1):
        try:
            r = http.post(path, json=body, timeout=300, **kw)
        except httpx.TransportError:
            if attempt == RETRIES_ON_503:
                raise
            time.sleep(0.25 * 2**attempt)
            continue
        if r.status_code != 503 or attempt == RETRIES_ON_503:
            r.raise_for_status()
            return r.json()
        time.sleep(0.25 * 2**attempt)
    raise AssertionError("unreachable")


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
    answers: list[str] = field(default_factory=list)  # what the assistant said, for the serving figures


class Population:
    def __init__(self, size: int, seed: int = 0, behaviour: Behaviour = Behaviour()):
        self.users = [f"user-{seed}-{n:05d}" for n in range(size)]
        self.rng = random.Random(seed)
        self.behaviour = behaviour
        self.questions: list[Question] = all_questions()

    def reaction(self, q: Question, response: str, rng: random.Random) -> dict | None:
        """This user's verdict on one answer as a `/v1/feedback` body (without the interaction), or None."""
        b = self.behaviour
        if rng.random() >= b.feedback_rate:
            return None
        score = quality(q, response)
        if rng.random() < b.rating_share:
            return {"type": "rating", "rating": min(5, max(1, round(1 + 4 * score + rng.gauss(0, b.rating_noise))))}
        liked = rng.random() < score
        if not liked and rng.random() < b.correction_share:
            return {"type": "correction", "correction": answer(q, "helpful", rng)}
        return {"type": "thumbs_up" if liked else "thumbs_down"}

    def ask(self, http: httpx.Client, user: str, q: Question, rng: random.Random) -> tuple[str, bool | None]:
        """One user asks, reads the answer and reacts; returns the answer and whether the reaction
        was positive (None: none)."""
        completion = post(http, "/v1/chat/completions", {"messages": [{"role": "user", "content": q.text}], "user": user})
        response = completion["choices"][0]["message"]["content"]
        verdict = self.reaction(q, response, rng)
        if verdict is None or not completion.get("feedback_collected", True):  # outside `feedback.collection_rate`: not asked
            return response, None
        token = {"Authorization": f"Bearer {completion['feedback_token']}"}  # as a browser: the answer's token, no API key
        post(http, "/v1/feedback", {"interaction_id": completion["id"], **verdict}, headers=token)  # a 2xx: Kafka has it
        return response, verdict["type"] == "thumbs_up" or verdict.get("rating", 0) >= 4

    def step(self, http: httpx.Client, n: int) -> RoundStats:
        """`n` users each ask one question through the service and react to the answer."""
        asks = [
            (self.rng.choice(self.users), self.rng.choice(self.questions), random.Random(self.rng.getrandbits(64)))
            for _ in range(n)
        ]
        with ThreadPoolExecutor(min(n, CONCURRENT_USERS)) as pool:
            reactions = list(pool.map(lambda a: self.ask(http, *a), asks))
        stats = RoundStats(interactions=n, answers=[response for response, _ in reactions])
        for _, positive in reactions:
            if positive is not None:
                stats.feedback += 1
                stats.positive += positive
        return stats
