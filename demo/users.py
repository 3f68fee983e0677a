"""A simulated population of chat users for `rlhf demo` and the end-to-end tests.

Users talk to the assistant service the way a chat app does: `POST /v1/chat/completions` (the
OpenAI-compatible API) for an answer, then `POST /v1/feedback` with the answer's feedback token,
as a browser would. They react according to the hidden preference `synthetic.quality`, which the
system never sees: thumbs, 1-5 ratings (noisy), and corrections (the answer they wanted).

With `conversations`, each user holds a conversation of 1-3 questions (`synthetic.draw_dialogue`),
the later ones follow-ups whose right answer depends on the earlier turn ("And in Calendar?"),
sending the whole messages list each time (the app's system prompt first when it has one, the
assistant's own earlier answers, the conversation's id) and reacting to every answer; a follow-up
answer is judged against the conversation. Without it, each user asks one question, as before.

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

from trainers.chat_format import Conversation
from trainers.synthetic import Asked, Dialogue, FollowUp, Question, all_questions, answer, draw_dialogue, quality

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


@dataclass(frozen=True)
class Reply:
    """One answered question: what the assistant said and the user's reaction (None: none)."""

    response: str
    positive: bool | None
    follow_up: bool


@dataclass
class RoundStats:
    interactions: int = 0
    feedback: int = 0
    positive: int = 0
    follow_up_feedback: int = 0  # of `feedback`, on answers to follow-up questions
    follow_up_positive: int = 0
    answers: list[str] = field(default_factory=list)  # what the assistant said, for the serving figures


def messages_of(prompt: Conversation) -> list[dict[str, str]]:
    """A conversation as a chat app sends it: its own system prompt (if any), the earlier turns, the question."""
    system = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return [
        *system,
        *({"role": role, "content": text} for role, text in prompt.history),
        {"role": "user", "content": prompt.query},
    ]


class Population:
    def __init__(self, size: int, seed: int = 0, behaviour: Behaviour = Behaviour(), conversations: bool = False):
        self.users = [f"user-{seed}-{n:05d}" for n in range(size)]
        self.rng = random.Random(seed)
        self.behaviour = behaviour
        self.conversations = conversations
        self.questions: list[Question] = all_questions()

    def dialogue(self, rng: random.Random) -> Dialogue:
        """What a user asks: one question, or with `conversations` a conversation (`synthetic.draw_dialogue`)."""
        return draw_dialogue(self.questions, rng) if self.conversations else Dialogue((rng.choice(self.questions),))

    def reaction(self, q: Asked, response: str, rng: random.Random) -> dict | None:
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

    def converse(self, http: httpx.Client, user: str, dialogue: Dialogue, rng: random.Random) -> list[Reply]:
        """One user asks the dialogue's questions in turn, each with the conversation so far, and
        reacts to every answer. A blank answer ends the conversation (it cannot be sent back as a turn)."""
        conversation = {"conversation_id": f"{user}.c{rng.getrandbits(64):016x}"} if self.conversations else {}
        replies: list[Reply] = []
        for turn, q in enumerate(dialogue.asks):
            prompt = dialogue.prompt(turn, [r.response for r in replies])
            body = {"messages": messages_of(prompt), "user": user, **conversation}
            completion = post(http, "/v1/chat/completions", body)
            response = completion["choices"][0]["message"]["content"]
            replies.append(Reply(response, self.feedback(http, completion, q, response, rng), isinstance(q, FollowUp)))
            if not response.strip():
                break
        return replies

    def feedback(self, http: httpx.Client, completion: dict, q: Asked, response: str, rng: random.Random) -> bool | None:
        """This user's reaction to one answer, sent as a browser would; whether it was positive (None: none)."""
        verdict = self.reaction(q, response, rng)
        if verdict is None or not completion.get("feedback_collected", True):  # outside `feedback.collection_rate`: not asked
            return None
        token = {"Authorization": f"Bearer {completion['feedback_token']}"}  # as a browser: the answer's token, no API key
        post(http, "/v1/feedback", {"interaction_id": completion["id"], **verdict}, headers=token)  # a 2xx: Kafka has it
        return verdict["type"] == "thumbs_up" or verdict.get("rating", 0) >= 4

    def step(self, http: httpx.Client, n: int) -> RoundStats:
        """`n` users each ask one question (with `conversations`: hold one conversation) through
        the service and react to the answers."""
        asks = [(self.rng.choice(self.users), self.dialogue(self.rng), random.Random(self.rng.getrandbits(64))) for _ in range(n)]
        with ThreadPoolExecutor(min(n, CONCURRENT_USERS)) as pool:
            replies = [r for conversation in pool.map(lambda a: self.converse(http, *a), asks) for r in conversation]
        stats = RoundStats(interactions=len(replies), answers=[r.response for r in replies])
        for r in replies:
            if r.positive is not None:
                stats.feedback += 1
                stats.positive += r.positive
                stats.follow_up_feedback += r.follow_up
                stats.follow_up_positive += r.positive and r.follow_up
        return stats
