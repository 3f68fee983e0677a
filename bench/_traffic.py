"""The simulated traffic of `bench.rounds`, offline: users (`demo.users.Population`) asking the
serving version, and a candidate on its A/B test, and reacting by the hidden preference; the A/B
lift the decider would compute; and the hidden preference of a version (the ground truth the
learners never see), on held-out first turns and on follow-up turns. The users are one of
`demo.populations.POPULATIONS` and react by one of `trainers.preferences.PREFERENCES`, by name; the ground
truth of a run is measured by the same preference.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch

from analytics.stats import RatioMoments, ratio, relative_lift
from core.hashing import stable_fraction
from core.learning_settings import SAMPLING_TEMPERATURE, SAMPLING_TOP_P
from core.settings import FeedbackSettings
from demo.populations import POPULATIONS
from demo.users import Population, messages_of
from schemas import FeedbackEvent
from schemas.messages import QuestionInContext
from trainers.chat_format import Prompt
from trainers.policy import sample
from trainers.preferences import DEFAULT_PREFERENCE, PREFERENCES, Preference
from trainers.synthetic import Dialogue, Question, follow_up_quality, quality

USERS = 500
MIN_RATING = FeedbackSettings().min_rating
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Version:
    name: str
    path: Path
    lm: Any
    tokenizer: Any


def answers(version: Version, queries: Sequence[Prompt], seed: int) -> list[str]:
    """The version's sampled answers, as the assistant serves them (its default temperature and top-p)."""
    torch.manual_seed(seed)
    out: list[str] = []
    for i in range(0, len(queries), 64):
        out += sample(
            version.lm,
            version.tokenizer,
            queries[i : i + 64],
            max_new_tokens=32,
            temperature=SAMPLING_TEMPERATURE,
            top_p=SAMPLING_TOP_P,
        ).responses
    return out


def hidden_preference(version: Version, questions: list[Question], preference: Preference = DEFAULT_PREFERENCE) -> float:
    """Mean ground-truth quality of the version's answers to `questions` (2 samples each): the held-out
    ones (`synthetic.split_questions`), or those like the users' (`synthetic.on_traffic_questions`)."""
    scores = [
        quality(q, a, preference)
        for s in range(2)
        for q, a in zip(questions, answers(version, [q.text for q in questions], seed=s), strict=True)
    ]
    return sum(scores) / len(scores)


def follow_up_preference(version: Version, preference: Preference = DEFAULT_PREFERENCE) -> float:
    """... on follow-up turns (`synthetic.follow_up_quality`, 4 samples each)."""
    return follow_up_quality(lambda prompts, seed: answers(version, prompts, seed), samples=4, preference=preference)


def last_turn_only(events: list[FeedbackEvent]) -> list[FeedbackEvent]:
    """The events as if users had asked their last question alone: the context ablation's feedback."""
    return [e.model_copy(update={"context": ()}) for e in events]


class Traffic:
    """Simulated users asking the serving version (and a candidate on its A/B test) and reacting;
    with `conversations`, holding conversations turn by turn (each arm answers its users' turns).
    `population` and `preference` name one of POPULATIONS and PREFERENCES."""

    def __init__(self, seed: int, conversations: bool = False, population: str = "kind", preference: str = "default") -> None:
        self.preference = PREFERENCES[preference]
        self.population = Population(
            USERS, seed=seed, behaviour=POPULATIONS[population], conversations=conversations, preference=self.preference
        )
        self.rng = random.Random(seed)
        self.seed = seed
        self.count = 0
        self.talks = 0

    def collect(
        self, arms: list[Version], budget: int, round_no: int
    ) -> tuple[list[FeedbackEvent], dict[str, dict[str, list[int]]]]:
        """`budget` feedback events; with two arms users are split 50/50 by a stable hash. Also
        per arm, per user: [positives, feedback]."""
        events: list[FeedbackEvent] = []
        per_user: dict[str, dict[str, list[int]]] = {v.name: defaultdict(lambda: [0, 0]) for v in arms}
        while len(events) < budget:
            batch = self._reacted(128)
            talks, reacting = [(user, dialogue) for user, dialogue, _ in batch], [r for *_, r in batch]
            arm_of = [arms[int(stable_fraction("bench-ab", str(round_no), user) * len(arms))] for user, _ in talks]
            replies: list[list[str]] = [[] for _ in talks]
            for turn in range(max(len(d.asks) for _, d in talks)):
                for arm in arms:  # a blank answer ends a conversation, as in demo.users
                    idx = [i for i, (_, d) in enumerate(talks) if arm_of[i] is arm and turn < len(d.asks) and all(replies[i])]
                    prompts = [talks[i][1].prompt(turn, replies[i]) for i in idx]
                    for i, text in zip(idx, answers(arm, prompts, seed=self.rng.getrandbits(31)), strict=True):
                        replies[i].append(text)
            for i, (user, dialogue) in enumerate(talks):
                self.talks += 1
                for turn, reply in enumerate(replies[i]):
                    if not reacting[i][turn] or len(events) >= budget:
                        continue
                    verdict = self.population.verdict(dialogue.asks[turn], reply, self.rng, user)
                    kind = verdict.pop("type")
                    self.count += 1
                    asked = QuestionInContext.of(messages_of(dialogue.prompt(turn, replies[i][:turn])))
                    events.append(
                        FeedbackEvent(
                            event_id=f"b{self.seed}-{self.count}",
                            interaction_id=f"b{self.seed}-i{self.count}",
                            user_id=user,
                            response=reply,
                            model_version=arm_of[i].name,
                            feedback_type=kind,
                            timestamp=EPOCH + timedelta(seconds=self.count),
                            **asked.event_fields(user, f"b{self.seed}-c{self.talks}"),
                            **verdict,
                        )
                    )
                    tally = per_user[arm_of[i].name][user]
                    tally[0] += events[-1].is_positive(MIN_RATING)  # the rule the A/B analysis counts by
                    tally[1] += 1
        return events, per_user

    def _reacted(self, n: int) -> list[tuple[str, Dialogue, list[bool]]]:
        """`n` conversations that get at least one reaction: (user, dialogue up to its last turn
        with one, which turns get one). Whether a user reacts does not depend on the answer, so it is
        drawn first, and the answers no one reacts to (9 in 10 for `realistic`) are never generated."""
        out: list[tuple[str, Dialogue, list[bool]]] = []
        while len(out) < n:
            user, dialogue = self.population.pick(self.rng), self.population.dialogue(self.rng)
            reacting = [self.population.reacts(self.rng, user) for _ in dialogue.asks]
            if any(reacting):
                last = max(t for t, r in enumerate(reacting) if r) + 1
                out.append((user, dataclasses.replace(dialogue, asks=dialogue.asks[:last]), reacting[:last]))
        return out


def ab_lift(per_user: dict[str, dict[str, list[int]]], control: str, treatment: str) -> list[float]:
    """Relative lift of the positive rate, per user (delta method), with its 95% interval."""

    def moments(users: dict[str, list[int]]) -> RatioMoments:
        y = [p for p, _ in users.values()]
        w = [n for _, n in users.values()]
        return RatioMoments(
            len(y), sum(y), sum(w), sum(a * a for a in y), sum(b * b for b in w), sum(a * b for a, b in zip(y, w, strict=True))
        )

    lift = relative_lift(ratio(moments(per_user[treatment])), ratio(moments(per_user[control])))
    return [float(lift.estimate), float(lift.low), float(lift.high)]
