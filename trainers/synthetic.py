"""A generated world of support questions, answers of varying quality, and a hidden user preference.

Used wherever the project needs data it cannot download: the warm-up corpus of the tiny offline
policy, preference data for reward-model tests, and the simulated users of `rlhf demo`.

The hidden preference is *not* a surface keyword: an answer is good when it actually answers the
question asked (names the right app, menu and object, in steps), and bad when it dodges, repeats
the question back, or confidently answers a different question. Every answer style uses the same
vocabulary, so a reward model has to relate the answer to the query to tell them apart.

Conversations: after a first question a user may ask follow-ups that mean something only after it
(`FollowUp`): "And in Calendar?" (the same action in another app), "How do I undo that?" (the
inverse action in the same app), "What about the cache?" (another object in the same app). A
follow-up answer is judged against what it resolves to, and one that answers the earlier question
again (names what the follow-up changed) is bad. `resolve` reads that from a conversation's text
alone, so the preference also works as a reward function on prompts (`quality_reward`).

Users may weigh the parts of an answer differently (`PREFERENCES`, trainers/preferences.py:
`default`, `steps-first`, `concise`); every figure before named preferences was measured with `default`.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.hashing import stable_fraction
from trainers.chat_format import Conversation, Prompt, as_conversation
from trainers.preferences import DEFAULT_PREFERENCE, Preference
from trainers.preferences import PREFERENCES as PREFERENCES  # the world's preferences by name, with the world

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
# Follow-up answers can also go wrong by answering the earlier question again.
FOLLOW_UP_STYLES = (*STYLES, "earlier")
# The actions "How do I undo that?" can follow, both ways (the inverse's own inverse is the action).
_INVERSE_PAIRS = (
    (("enable", "dark mode"), ("disable", "dark mode")),
    (("turn off", "notifications"), ("turn on", "notifications")),
    (("block", "contact"), ("unblock", "contact")),
    (("share", "folder"), ("unshare", "folder")),
    (("delete", "account"), ("recover", "account")),
)
INVERSES = {**dict(_INVERSE_PAIRS), **{b: a for a, b in _INVERSE_PAIRS}}
ALL_ACTIONS = tuple(dict.fromkeys((*ACTIONS, *INVERSES)))  # the inverses are asked after an "undo" (or before one)
# Follow-up wordings by kind: `app` asks the same action in another app, `undo` the inverse action,
# `object` another object (with its action) in the same app.
FOLLOW_UP_FORMS = {
    "app": ("And in {app}?", "What about in {app}?", "Same thing in {app}?"),
    "undo": ("How do I undo that?", "And how do I undo that?", "Can I reverse that later?"),
    "object": ("What about the {obj}?", "And the {obj}?", "How about my {obj}?"),
}
# What some apps send as their system prompt (short: the reward model reads the whole conversation).
SYSTEM_PROMPTS = (
    "You are the help desk of our apps. Answer in short steps.",
    "You are a friendly support assistant. Keep answers to one sentence.",
    "Answer questions about our apps precisely.",
)
SYSTEM_SHARE = 0.3  # of simulated conversations: the app sends a system prompt
TURN_WEIGHTS = (0.4, 0.35, 0.25)  # of simulated conversations: 1, 2 or 3 questions


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

    @property
    def target(self) -> Question:
        """What the question asks: itself (a follow-up's is resolved from the turn before)."""
        return self


@dataclass(frozen=True)
class FollowUp:
    """A question that means something only after the one before it: `target` is what it asks,
    resolved against `earlier` (what the turn before asked)."""

    kind: str  # a key of FOLLOW_UP_FORMS
    form: int
    earlier: Question
    target: Question

    @property
    def text(self) -> str:
        return FOLLOW_UP_FORMS[self.kind][self.form].format(app=self.target.app, obj=self.target.obj)

    @property
    def replaced(self) -> str:
        """What the earlier question said that this one changes: naming it answers the earlier question
        again. Another object replaces the earlier action, named by its verb (an object may share its
        name with a menu, as account does)."""
        return self.earlier.app if self.kind == "app" else self.earlier.verb


Asked = Question | FollowUp


def follow_ups_of(earlier: Question) -> list[FollowUp]:
    """Every follow-up a user may ask after `earlier`."""
    inverse = INVERSES.get((earlier.verb, earlier.obj))
    targets = {
        "app": [Question(app, earlier.verb, earlier.obj, 0) for app in APPS if app != earlier.app],
        "undo": [Question(earlier.app, *inverse, 0)] if inverse else [],
        "object": [Question(earlier.app, verb, obj, 0) for verb, obj in ACTIONS if obj != earlier.obj],
    }
    return [
        FollowUp(kind, form, earlier, target)
        for kind, forms in FOLLOW_UP_FORMS.items()
        for target in targets[kind]
        for form in range(len(forms))
    ]


def follow_up(earlier: Question, rng: random.Random, allowed: Callable[[Question], bool] | None = None) -> FollowUp:
    """A follow-up on `earlier` (asking only what `allowed` allows, when given): a kind drawn evenly (of
    those that apply), then one of its wordings and targets. Every train question has follow-ups on train
    questions, so allowing only train questions always leaves some."""
    options = [f for f in follow_ups_of(earlier) if allowed is None or allowed(f.target)]
    kind = rng.choice(sorted({f.kind for f in options}))
    return rng.choice([f for f in options if f.kind == kind])


@dataclass(frozen=True)
class Dialogue:
    """What one simulated user asks in a conversation: the app's system prompt (or none) and the
    questions, each after the first a follow-up on the one before."""

    asks: tuple[Asked, ...]
    system: str | None = None

    def prompt(self, turn: int, answers: Sequence[str]) -> Conversation:
        """Question `turn` (from 0) as the policy is asked it, after the earlier questions and `answers` to them."""
        history = tuple(t for q, a in zip(self.asks[:turn], answers, strict=True) for t in (("user", q.text), ("assistant", a)))
        return Conversation(self.asks[turn].text, history, self.system)


def draw_dialogue(
    questions: Sequence[Question], rng: random.Random, allowed: Callable[[Question], bool] | None = None
) -> Dialogue:
    """A conversation of 1-3 questions (TURN_WEIGHTS) starting with one of `questions`, its follow-ups
    asking only what `allowed` allows (when given), with a system prompt in SYSTEM_SHARE of them."""
    asks: list[Asked] = [rng.choice(questions)]
    for _ in range(rng.choices(range(len(TURN_WEIGHTS)), TURN_WEIGHTS)[0]):
        asks.append(follow_up(asks[-1].target, rng, allowed))
    return Dialogue(tuple(asks), rng.choice(SYSTEM_PROMPTS) if rng.random() < SYSTEM_SHARE else None)


def all_questions() -> list[Question]:
    return [Question(app, verb, obj, form) for app in APPS for verb, obj in ACTIONS for form in range(len(QUESTION_FORMS))]


def is_held_out(q: Question, seed: int = 0, eval_fraction: float = 0.2) -> bool:
    """Whether `q` asks a held-out (app, object) combination."""
    return stable_fraction("split", str(seed), q.app, q.obj) < eval_fraction


def split_questions(seed: int = 0, eval_fraction: float = 0.2) -> tuple[list[Question], list[Question]]:
    """Train / held-out questions, split by (app, action) so held-out ones are new combinations."""
    train: list[Question] = []
    held_out: list[Question] = []
    for q in all_questions():
        (held_out if is_held_out(q, seed, eval_fraction) else train).append(q)
    return train, held_out


def on_traffic_questions() -> list[Question]:
    """A fixed sample of train questions, as many as the held-out ones: the hidden preference on what
    users ask, beside the held-out figure on what they never ask."""
    train, held_out = split_questions()
    return sorted(train, key=lambda q: stable_fraction("on-traffic", q.text))[: len(held_out)]


def held_out_follow_ups(seed: int = 0) -> list[Dialogue]:
    """Two-question conversations whose follow-up resolves to a held-out question, one per held-out
    question (`split_questions`), of a kind drawn evenly; every other one with an app's system prompt."""
    rng = random.Random(seed)
    _, held_out = split_questions()
    leading_to: dict[Question, list[FollowUp]] = {}  # every follow-up on a first question, by what it asks
    for app, (verb, obj) in itertools.product(APPS, ALL_ACTIONS):
        for f in follow_ups_of(Question(app, verb, obj, 0)):
            leading_to.setdefault(f.target, []).append(f)
    out = []
    for n, h in enumerate(held_out):
        options = leading_to[Question(h.app, h.verb, h.obj, 0)]
        kind = rng.choice(sorted({f.kind for f in options}))
        chosen = rng.choice([f for f in options if f.kind == kind])
        chosen = dataclasses.replace(chosen, earlier=dataclasses.replace(chosen.earlier, form=h.form))
        out.append(Dialogue((chosen.earlier, chosen), SYSTEM_PROMPTS[n // 2 % len(SYSTEM_PROMPTS)] if n % 2 else None))
    return out


def answer(q: Asked, style: str, rng: random.Random) -> str:
    """An answer to `q` in one of FOLLOW_UP_STYLES (`earlier` only for a follow-up: the earlier
    question answered again), or `flawed`: helpful steps with one detail wrong (another menu, or
    another app), as some users' corrections are; all styles share vocabulary on purpose."""
    if isinstance(q, FollowUp):
        return answer(q.earlier, "helpful", rng) if style == "earlier" else answer(q.target, style, rng)
    if style == "flawed":  # the menu or the app wrong, one the object's own name does not give away
        if rng.choice([d for d in (q.menu, q.app) if d.lower() not in q.obj] or [q.menu]) == q.menu:
            return _steps(q.app, rng.choice([m for m in MENUS if m != q.menu]), q.obj, q.verb, rng)
        return _steps(rng.choice([a for a in APPS if a != q.app]), q.menu, q.obj, q.verb, rng)
    if style == "helpful":
        return _steps(q.app, q.menu, q.obj, q.verb, rng)
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


def _steps(app: str, menu: str, obj: str, verb: str, rng: random.Random) -> str:
    return rng.choice(
        (
            f"Open {app}, go to {menu}, select {obj}, then press {verb.capitalize()}.",
            f"In {app} open {menu}, choose {obj} and tap {verb.capitalize()}.",
            f"Go to {app} > {menu} > {obj.capitalize()} and press {verb.capitalize()}.",
        )
    )


def quality(q: Asked, response: str, preference: Preference = DEFAULT_PREFERENCE) -> float:
    """The hidden preference in [0, 1]: does the response answer *this* question, in steps? A
    follow-up's answer is judged against what it resolves to, and naming what the follow-up
    replaced (the earlier app or action) costs as much as echoing the question."""
    if isinstance(q, FollowUp):
        again = re.search(rf"\b{re.escape(q.replaced.lower())}\b", response.lower()) is not None
        return max(0.0, quality(q.target, response, preference) - (preference.echo if again else 0.0))
    text = response.lower()
    names_object = q.obj in text
    names_app = q.app.lower() in text
    names_menu = q.menu.lower() in text
    gives_step = q.verb in text and any(w in text for w in ("press", "tap", "choose", "select"))
    echoes = text.startswith(("you want", "so you need")) or q.text.lower() in text
    p = preference
    score = p.obj * names_object + p.app * names_app + p.menu * names_menu + p.step * gives_step
    if p.length is not None:
        score -= min(p.length.most, p.length.per_word * max(0, len(response.split()) - p.length.words))
    return max(0.0, score - (p.echo if echoes else 0.0))


def warmup_corpus(n: int, seed: int = 0, helpful_share: float = 0.3, conversations: int = 0) -> list[tuple[Conversation, str]]:
    """(prompt, response) examples for the tiny policy's supervised warm-up: mostly mediocre answers,
    so the starting policy has room to improve and RLHF has something to find. `n` one-question
    prompts, then every turn of `conversations` conversations of 2-3 questions (a system prompt in
    SYSTEM_SHARE of them), answered in the same mix of styles, the earlier answers in the context.
    Only train questions are asked, follow-ups included (`split_questions`)."""
    rng = random.Random(seed)
    train, _ = split_questions()
    out = []
    for _ in range(n):
        q = rng.choice(train)
        style = "helpful" if rng.random() < helpful_share else rng.choice(STYLES[1:])
        out.append((Conversation(q.text), answer(q, style, rng)))
    for _ in range(conversations):
        asks: list[Asked] = [rng.choice(train)]
        for _ in range(rng.choice((1, 2))):
            while is_held_out((next_ask := follow_up(asks[-1].target, rng)).target):
                pass
            asks.append(next_ask)
        dialogue = Dialogue(tuple(asks), rng.choice(SYSTEM_PROMPTS) if rng.random() < SYSTEM_SHARE else None)
        answers: list[str] = []
        for turn, asked in enumerate(asks):
            styles = FOLLOW_UP_STYLES if isinstance(asked, FollowUp) else STYLES
            answers.append(answer(asked, "helpful" if rng.random() < helpful_share else rng.choice(styles[1:]), rng))
            out.append((dialogue.prompt(turn, answers[:turn]), answers[turn]))
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


def _questions_by_text() -> dict[str, Question]:
    """Every question the world may ask first, by its wording, the inverse actions' included
    (`held_out_follow_ups` asks them)."""
    combinations = itertools.product(APPS, ALL_ACTIONS, range(len(QUESTION_FORMS)))
    return {q.text: q for q in (Question(app, verb, obj, form) for app, (verb, obj), form in combinations)}


_QUESTIONS_BY_TEXT = _questions_by_text()


def resolve(prompt: Prompt) -> Asked | None:
    """What the last question of a conversation asks, read from its text alone: a generated
    question, or a chain of follow-ups on one (None for a conversation from elsewhere)."""
    conversation = as_conversation(prompt)
    texts = [text for role, text in conversation.history if role == "user"] + [conversation.query]
    asked: Asked | None = question_by_text(texts[0])
    for text in texts[1:]:
        if asked is None:
            return None
        asked = next((f for f in follow_ups_of(asked.target) if f.text == text.strip()), None)
    return asked


def quality_reward(prompts: Sequence[Prompt], responses: list[str], preference: Preference = DEFAULT_PREFERENCE) -> list[float]:
    """The hidden preference as a reward function with the reward model's `predict` signature, on
    questions or whole conversations; one that is not a generated conversation scores 0."""
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        q = resolve(prompt)
        out.append(quality(q, response, preference) if q is not None else 0.0)
    return out


def follow_up_quality(
    answer: Callable[[list[Conversation], int], list[str]], samples: int = 2, preference: Preference = DEFAULT_PREFERENCE
) -> float:
    """Mean hidden preference of a policy's follow-up answers on `held_out_follow_ups`: it answers
    the first question, then the follow-up with its own first answer in the context. `answer(prompts,
    seed)` samples the policy; `samples` seeded rollouts of each conversation."""
    dialogues = held_out_follow_ups()
    scores = []
    for s in range(samples):
        firsts = answer([d.prompt(0, []) for d in dialogues], 2 * s)
        seconds = answer([d.prompt(1, [a]) for d, a in zip(dialogues, firsts, strict=True)], 2 * s + 1)
        scores += [quality(d.asks[1], a, preference) for d, a in zip(dialogues, seconds, strict=True)]
    return sum(scores) / len(scores)


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
