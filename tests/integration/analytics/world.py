"""A small A/B world for the integration tests: users assigned by the real `assign`, exposures,
interactions, feedback whose positive rate depends on the variant (and, for some users, feedback
from before the experiment, as version 1 events: the CUPED history), training progress, and the
experiment lifecycle (an earlier experiment decided, the current one open). A user's interactions
are one conversation with the app's system prompt: the first a first turn, the others follow-ups."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from analytics.assignment import assign_from_settings
from analytics.clickhouse import Warehouse
from consumers.sink.rows import ROUTES
from core.settings import Settings
from schemas import Event, ExposureEvent, FeedbackEvent, InteractionEvent, ModelPublished, TrainingStatus, WindowMetrics
from schemas.events import Turn
from schemas.experiments import Arm, ExperimentDecided, ExperimentEvent, ExperimentStarted

START = datetime(2025, 3, 1, tzinfo=UTC)
SYSTEM = Turn(role="system", content="You answer questions about the Mail and Calendar apps.")
E = TypeVar("E", bound=Event | ExperimentEvent)


@dataclass(frozen=True)
class World:
    events: list[tuple[str, Event | ExperimentEvent]]  # (topic, event)

    def count(self, topic: str) -> int:
        """Distinct events on a topic (the world itself holds no duplicates)."""
        return sum(t == topic for t, _ in self.events)

    def of(self, topic: str, kind: type[E]) -> list[E]:
        """The events on a topic, in order; each is a `kind` (the world puts one type on a topic)."""
        on_topic = [e for t, e in self.events if t == topic]
        typed: list[E] = [e for e in on_topic if isinstance(e, kind)]
        assert len(typed) == len(on_topic), f"{topic} holds events other than {kind.__name__}"
        return typed


def build_world(
    settings: Settings, users: int = 400, days: int = 3, positive: dict[str, float] | None = None, seed: int = 1
) -> World:
    """Each user: one exposure, a few interactions spread over `days`, feedback on most of them."""
    rng = random.Random(seed)
    ab = settings.ab_testing
    models = {v.name: f"{v.name}-v1" for v in ab.variants}
    positive = positive or {ab.variants[0].name: 0.55, **{v.name: 0.7 for v in ab.variants[1:]}}
    events: list[tuple[str, Event | ExperimentEvent]] = []
    for u in range(users):
        user = f"user-{u}"
        variant = assign_from_settings(ab, user)
        common = dict(user_id=user, experiment=ab.experiment, variant=variant, model_version=models[variant])
        when = START + timedelta(seconds=rng.uniform(0, days * 86_400))
        for k in range(rng.choice([0, 0, 1, 3])):  # before the experiment: no experiment, the serving model
            good = rng.random() < 0.6
            events.append(
                (
                    "feedback",
                    FeedbackEvent(
                        schema_version=1,  # from before conversations: a one-turn conversation
                        timestamp=START - timedelta(days=1, minutes=k),
                        interaction_id=f"pre-{u}-{k}",
                        user_id=user,
                        query="earlier",
                        response="an answer",
                        model_version="serving-v0",
                        feedback_type="thumbs_up" if good else "thumbs_down",
                    ),
                )
            )
        events.append(("exposures", ExposureEvent(timestamp=when, **common)))
        context: tuple[Turn, ...] = (SYSTEM,)
        for k in range(rng.randint(1, 4)):
            at = when + timedelta(minutes=10 * k)
            turn = {"context": context, "conversation_id": f"conversation-{u}", "turn_index": k}
            inter = InteractionEvent(
                timestamp=at, query=f"question {u}.{k}", response="an answer", latency_ms=rng.uniform(50, 400), **common, **turn
            )
            events.append(("interactions", inter))
            context += (Turn(role="user", content=inter.query), Turn(role="assistant", content=inter.response))
            if rng.random() < 0.8:
                good = rng.random() < positive[variant]
                kind = rng.choice(["thumbs", "thumbs", "rating", "correction"])
                extra = (
                    {"feedback_type": "thumbs_up" if good else "thumbs_down"}
                    if kind == "thumbs"
                    else {"feedback_type": "rating", "rating": rng.choice([4, 5]) if good else rng.choice([1, 2, 3])}
                    if kind == "rating" or good
                    else {"feedback_type": "correction", "correction": "the right answer"}
                )
                events.append(
                    (
                        "feedback",
                        FeedbackEvent(
                            timestamp=at + timedelta(seconds=30),
                            interaction_id=inter.interaction_id,
                            query=inter.query,
                            response=inter.response,
                            **common,
                            **turn,
                            **extra,
                        ),
                    )
                )
    for j, trigger in enumerate(("trigger-a", "trigger-b")):
        for step in range(8):
            at = START + timedelta(days=j + 1, minutes=5 * step)
            # The keys trainers.ppo reports with each iteration's progress.
            metrics = {
                "iteration": float(step + 1),
                "mean_score": 0.2 + 0.05 * step + 0.1 * j + rng.uniform(-0.02, 0.02),
                "kl": 0.01 * step + rng.uniform(0, 0.005),
                "kl_coef": 0.05,
                "mean_length": 24.0,
                "repetition": 0.02,
            }
            events.append(
                (
                    "training-status",
                    TrainingStatus(
                        timestamp=at, trigger_id=trigger, policy="assistant", state="progress", stage="ppo", metrics=metrics
                    ),
                )
            )
        events.append(
            (
                "model-published",
                ModelPublished(
                    timestamp=at, version=f"assistant-{trigger}", policy="assistant", trigger_id=trigger, decision="candidate"
                ),
            )
        )
    for minute in range(3):  # the stream app's windowed counts
        start = START + timedelta(minutes=minute)
        events.append(
            (
                "metrics",
                WindowMetrics(
                    timestamp=start + timedelta(minutes=1),
                    window_start=start,
                    window_end=start + timedelta(minutes=1),
                    model_version=models[ab.variants[0].name],
                    feedback_type="thumbs_up",
                    count=minute + 1,
                    pii={"email": minute % 2, "phone": 1} if minute % 3 == 0 else {},
                ),
            )
        )
    events += [("experiments", ExperimentEvent(e)) for e in lifecycle(settings)]
    return World(events)


def compress(world: World, start: datetime, span: timedelta) -> World:
    """The world's events retimed into [start, start + span], in the same order and proportion: a
    days-long world as the few minutes a demo's experiment lasts."""
    inner = [e.root if isinstance(e, ExperimentEvent) else e for _, e in world.events]
    first, last = min(e.timestamp for e in inner), max(e.timestamp for e in inner)
    scale = span / (last - first)
    retimed = [e.model_copy(update={"timestamp": start + (e.timestamp - first) * scale}) for e in inner]
    return World(
        [
            (t, ExperimentEvent(r) if isinstance(e, ExperimentEvent) else r)
            for (t, e), r in zip(world.events, retimed, strict=True)
        ]
    )


def insert_world(warehouse: Warehouse, settings: Settings, world: World) -> dict[str, int]:
    """The world's rows straight into the warehouse, as the sink makes them: rows inserted per topic."""
    rows: dict[str, list] = {}
    for topic, event in world.events:
        rows.setdefault(topic, []).append(ROUTES[topic].row(event, settings))
    return {t: warehouse.insert_new(ROUTES[t].table, ROUTES[t].table.to_arrow(r)) for t, r in rows.items()}


def lifecycle(settings: Settings) -> list[ExperimentStarted | ExperimentDecided]:
    """An earlier experiment, started and promoted, and the current one, started (open)."""
    ab, out = settings.ab_testing, []
    for j, (trigger, control) in enumerate((("trigger-a", "assistant-v0"), ("trigger-b", "assistant-trigger-a"))):
        candidate = f"assistant-{trigger}"
        arms = tuple(
            Arm(name=v.name, model_version=control if i == 0 else candidate, weight=v.weight) for i, v in enumerate(ab.variants)
        )
        out.append(
            ExperimentStarted(
                timestamp=START + timedelta(days=j),
                experiment_id=f"{ab.experiment}:{candidate}",
                policy="assistant",
                trigger_id=trigger,
                control_version=control,
                treatment_version=candidate,
                arms=arms,
                salt=ab.salt,
                horizon_users=ab.horizon_users,
                horizon_s=ab.horizon_s,
            )
        )
    decided = ExperimentDecided(
        timestamp=START + timedelta(days=1),
        experiment_id=out[0].experiment_id,
        policy="assistant",
        trigger_id="trigger-a",
        outcome="promote",
        serving_version=out[0].treatment_version,
        reason="positive rate rose",
        statistics={"lift": 0.12, "lift_low": 0.03, "lift_high": 0.21, "sequential_p": 0.01},
    )
    return [*out, decided]
