"""A generated world of support questions, answers of varying quality, and a hidden user preference.

Used wherever the project needs data it cannot download: the warm-up corpus of the tiny offline
policy, preference data for reward-model tests, and the simulated users of `rlhf demo`.

The hidden preference is *not* a surface keyword: an answer is good when it actually answers the
question asked (names the right app, menu and object, in steps), and bad when it dodges, repeats
the question back, or confidently answers a different question. Every answer style uses the same
vocabulary, so a reward model has to relate the answer to the query to tell them apart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from core.hashing import stable_fraction

APPS = ("Mail", "Calendar", "Photos", "Drive", "Notes", "Maps", "Music", "Wallet", "Chat", "Docs")
MENUS = ("Settings", "Account", "Privacy", "Sharing", "Storage", "Display", "Sync", "Security")
ACTIONS = (
    ("reset", "password"),
    ("change", "language"),
    ("export", "history"),
    ("delete", "account"),
    ("enable", "dark mode"),
    ("turn off", "notifications"),
    ("share", "folder"),
    ("restore", "backup"),
    ("update", "email address"),
    ("block", "contact"),
    ("rename", "device"),
    ("clear", "cache"),
)
QUESTION_FORMS = (
    "How do I {verb} my {obj} in {app}?",
    "Where can I {verb} the {obj} in {app}?",
    "What is the way to {verb} my {obj} in {app}?",
    "Can you tell me how to {verb} the {obj} in {app}?",
    "I need to {verb} my {obj} in {app}, how?",
)
STYLES = ("helpful", "dodge", "repeat", "wrong")


@dataclass(frozen=True)
class Question:
    app: str
    verb: str
    obj: str
    form: int

    @property
    def text(self) -> str:
        return QUESTION_FORMS[self.form].format(verb=self.verb, obj=self.obj, app=self.app)

    @property
    def menu(self) -> str:
        # The "true" menu is a fixed function of the question, so good answers are consistent.
        return MENUS[int(stable_fraction("menu", self.app, self.obj) * len(MENUS))]


def all_questions() -> list[Question]:
    return [Question(app, verb, obj, form) for app in APPS for verb, obj in ACTIONS for form in range(len(QUESTION_FORMS))]


def split_questions(seed: int = 0, eval_fraction: float = 0.2) -> tuple[list[Question], list[Question]]:
    """Train / held-out questions, split by (app, action) so held-out ones are new combinations."""
    train: list[Question] = []
    held_out: list[Question] = []
    for q in all_questions():
        (held_out if stable_fraction("split", str(seed), q.app, q.obj) < eval_fraction else train).append(q)
    return train, held_out


def answer(q: Question, style: str, rng: random.Random) -> str:
    """An answer to `q` in one of STYLES; all styles share vocabulary on purpose."""
    if style == "helpful":
        return rng.choice(
            (
                f"Open {q.app}, go to {q.menu}, select {q.obj}, then press {q.verb.capitalize()}.",
                f"In {q.app} open {q.menu}, choose {q.obj} and tap {q.verb.capitalize()}.",
                f"Go to {q.app} > {q.menu} > {q.obj.capitalize()} and press {q.verb.capitalize()}.",
            )
        )
    if style == "repeat":
        return rng.choice(
            (f"You want to {q.verb} your {q.obj} in {q.app}.", f"So you need to {q.verb} the {q.obj} in {q.app}, right?")
        )
    if style == "wrong":  # confident steps for a different object in another app
        other_app = rng.choice([a for a in APPS if a != q.app])
        other_verb, other_obj = rng.choice([a for a in ACTIONS if a[1] != q.obj])
        other = Question(other_app, other_verb, other_obj, 0)
        return f"Open {other.app}, go to {other.menu}, select {other.obj}, then press {other.verb.capitalize()}."
    return rng.choice(
        (
            f"I am not sure how {q.app} handles that. Maybe check {q.menu} later.",
            "That is a good question. Many people ask about it.",
            f"Sorry, I cannot help with {q.app} right now.",
        )
    )


def quality(q: Question, response: str) -> float:
    """The hidden preference in [0, 1]: does the response answer *this* question, in steps?"""
    text = response.lower()
    names_object = q.obj in text
    names_app = q.app.lower() in text
    names_menu = q.menu.lower() in text
    gives_step = q.verb in text and any(w in text for w in ("press", "tap", "choose", "select"))
    echoes = text.startswith(("you want", "so you need")) or q.text.lower() in text
    score = 0.3 * names_object + 0.2 * names_app + 0.25 * names_menu + 0.25 * gives_step
    return max(0.0, score - (0.5 if echoes else 0.0))


def warmup_corpus(n: int, seed: int = 0, helpful_share: float = 0.3) -> list[tuple[str, str]]:
    """(query, response) pairs for the tiny policy's supervised warm-up: mostly mediocre answers,
    so the starting policy has room to improve and RLHF has something to find."""
    rng = random.Random(seed)
    train, _ = split_questions()
    out = []
    for _ in range(n):
        q = rng.choice(train)
        style = "helpful" if rng.random() < helpful_share else rng.choice(STYLES[1:])
        out.append((q.text, answer(q, style, rng)))
    return out


def preference_pairs(questions: list[Question], n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(query, chosen, rejected) triples: a helpful answer preferred over a dodge, echo or wrong answer."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        q = rng.choice(questions)
        pairs.append((q.text, answer(q, "helpful", rng), answer(q, rng.choice(STYLES[1:]), rng)))
    return pairs


def question_by_text(text: str) -> Question | None:
    """The generated question whose wording is exactly `text` (None for a query from elsewhere)."""
    return _QUESTIONS_BY_TEXT.get(text.strip())


_QUESTIONS_BY_TEXT = {q.text: q for q in all_questions()}


def quality_reward(queries: list[str], responses: list[str]) -> list[float]:
    """The hidden preference as a reward function with the reward model's `predict` signature;
    a query that is not a generated question scores 0."""
    out = []
    for query, response in zip(queries, responses, strict=True):
        q = question_by_text(query)
        out.append(quality(q, response) if q is not None else 0.0)
    return out


def feedback_events(
    questions: list[Question], n: int, seed: int = 0, answers_per_question: int = 2, helpful_share: float = 0.5
) -> list:
    """About `n` FeedbackEvents from simulated users whose verdicts follow the hidden preference.

    Each drawn question is asked `answers_per_question` times and answered in random styles; all
    of a question's users give the same kind of feedback (a 1-5 rating, a thumb, or a correction
    of a bad answer), so the dataset builder finds same-query pairs as well as unpaired events.
    """
    from schemas.events import FeedbackEvent  # only this generator needs the event schema

    rng = random.Random(seed)
    events: list[FeedbackEvent] = []
    while len(events) < n:
        q = rng.choice(questions)
        kind = rng.choice(("rating", "thumbs", "correction"))
        for _ in range(min(answers_per_question, n - len(events))):
            style = "helpful" if rng.random() < helpful_share else rng.choice(STYLES[1:])
            response = answer(q, style, rng)
            score = quality(q, response)
            verdict: dict = {"feedback_type": "thumbs_up" if score >= 0.75 else "thumbs_down"}
            if kind == "rating":
                verdict = {"feedback_type": "rating", "rating": 1 + round(4 * score)}
            elif kind == "correction" and score < 0.75:
                verdict = {"feedback_type": "correction", "correction": answer(q, "helpful", rng)}
            i = len(events)
            events.append(
                FeedbackEvent(
                    event_id=f"sim-{seed}-{i}",
                    interaction_id=f"sim-{seed}-i{i}",
                    user_id=f"user-{rng.randrange(1000)}",
                    query=q.text,
                    response=response,
                    model_version="sim",
                    **verdict,
                )
            )
    return events
