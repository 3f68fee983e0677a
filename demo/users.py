"""A simulated population of chat users for `rlhf demo` and the end-to-end tests.

Users talk to the assistant service the way a chat app does: `POST /v1/chat/completions` (the
OpenAI-compatible API) for an answer, then `POST /v1/feedback` with the answer's feedback token,
as a browser would. They react according to the hidden preference `synthetic.quality` (one of
`trainers.preferences.PREFERENCES`), which the system never sees: thumbs, 1-5 ratings (noisy), and corrections
(the answer they wanted), as often and as reliably as their population's `Behaviour` says
(demo/populations.py: `kind`, `realistic`, `hostile`); adversarial users react against it.

They ask train questions only (`synthetic.split_questions`), follow-ups included: no feedback of a
run concerns a held-out (app, object) combination, so the held-out figures measure what the policy
learnt beyond what it was told.

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

from demo.populations import CONTRARIAN, HONEST, KIND, RANDOM, Behaviour, cast
from trainers.chat_format import Conversation
from trainers.preferences import DEFAULT_PREFERENCE, Preference
from trainers.synthetic import (
    STYLES,
    Asked,
    Dialogue,
    FollowUp,
    Question,
    answer,
    draw_dialogue,
    is_held_out,
    quality,
    split_questions,
)

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
    """`size` users of one `behaviour`, reacting by one hidden `preference`; `adversaries` (user ids)
    are those who react against it."""

    def __init__(
        self,
        size: int,
        seed: int = 0,
        behaviour: Behaviour = KIND,
        conversations: bool = False,
        preference: Preference = DEFAULT_PREFERENCE,
    ):
        self.users = [f"user-{seed}-{n:05d}" for n in range(size)]
        self.rng = random.Random(seed)
        self.behaviour = behaviour
        self.preference = preference
        self.conversations = conversations
        self.questions: list[Question] = split_questions()[0]
        self.cast = cast(self.users, behaviour, seed)
        self.adversaries = self.cast.adversaries

    def pick(self, rng: random.Random) -> str:
        """A user, the busier ones more often."""
        return rng.choice(self.users) if self.cast.weights is None else rng.choices(self.users, self.cast.weights)[0]

    def dialogue(self, rng: random.Random) -> Dialogue:
        """What a user asks: one question, or with `conversations` a conversation (`synthetic.draw_dialogue`)."""
        if self.conversations:
            return draw_dialogue(self.questions, rng, allowed=lambda q: not is_held_out(q))
        return Dialogue((rng.choice(self.questions),))

    def reaction(self, q: Asked, response: str, rng: random.Random, user: str | None = None) -> dict | None:
        """This user's verdict on one answer as a `/v1/feedback` body (without the interaction), or None."""
        return self.verdict(q, response, rng, user) if self.reacts(rng, user) else None

    def reacts(self, rng: random.Random, user: str | None = None) -> bool:
        """Whether this user reacts to an answer at all (drawn before the verdict, whatever the answer)."""
        b = self.behaviour
        return rng.random() < (b.feedback_rate if self.cast.role(user) == HONEST else b.adversary_feedback_rate)

    def verdict(self, q: Asked, response: str, rng: random.Random, user: str | None = None) -> dict:
        """The verdict of a user who reacts (`reacts`): a random voter's liking is a coin, a
        contrarian's the opposite of the preference's."""
        b = self.behaviour
        role = self.cast.role(user)
        score = rng.random() if role == RANDOM else quality(q, response, self.preference)
        against = role == CONTRARIAN
        if rng.random() < b.rating_share:
            rating = min(5, max(1, round(1 + 4 * score + rng.gauss(0, b.rating_noise))))
            return {"type": "rating", "rating": 6 - rating if against else rating}
        liked = rng.random() < score
        if liked == against and rng.random() < b.correction_share:  # a contrarian "corrects" what they like
            return {"type": "correction", "correction": answer(q, self._correction_style(role, rng), rng)}
        thumb = liked != against
        if b.thumb_flip_share and rng.random() < b.thumb_flip_share:
            thumb = not thumb
        return {"type": "thumbs_up" if thumb else "thumbs_down"}

    def _correction_style(self, role: str, rng: random.Random) -> str:
        """How a correction is written: the right steps (some with a detail wrong), a bad answer from a
        contrarian, any answer from a random voter."""
        if role == CONTRARIAN:
            return rng.choice(("wrong", "dodge"))
        if role == RANDOM:
            return rng.choice(STYLES)
        wrong = self.behaviour.wrong_correction_share
        return "flawed" if wrong and rng.random() < wrong else "helpful"

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
            positive = self.feedback(http, completion, user, q, response, rng)
            replies.append(Reply(response, positive, isinstance(q, FollowUp)))
            if not response.strip():
                break
        return replies

    def feedback(
        self, http: httpx.Client, completion: dict, user: str, q: Asked, response: str, rng: random.Random
    ) -> bool | None:
        """This user's reaction to one answer, sent as a browser would; whether it was positive (None: none)."""
        verdict = self.reaction(q, response, rng, user)
        if verdict is None or not completion.get("feedback_collected", True):  # outside `feedback.collection_rate`: not asked
            return None
        token = {"Authorization": f"Bearer {completion['feedback_token']}"}  # as a browser: the answer's token, no API key
        post(http, "/v1/feedback", {"interaction_id": completion["id"], **verdict}, headers=token)  # a 2xx: Kafka has it
        return verdict["type"] == "thumbs_up" or verdict.get("rating", 0) >= 4

    def step(self, http: httpx.Client, n: int) -> RoundStats:
        """`n` users each ask one question (with `conversations`: hold one conversation) through
        the service and react to the answers."""
        asks = [(self.pick(self.rng), self.dialogue(self.rng), random.Random(self.rng.getrandbits(64))) for _ in range(n)]
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
