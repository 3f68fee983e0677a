"""Event -> table row: which table each topic's events go to and the row each event becomes.

The row's columns are the table's (analytics.tables); optional fields become '' so the columns
the views GROUP BY are never NULL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter

from analytics.tables import (
    DEAD_LETTERS,
    ERASURES,
    EXPERIMENTS,
    EXPOSURES,
    FEEDBACK,
    INTERACTIONS,
    MODEL_PUBLISHED,
    TRAINING_STATUS,
    WINDOW_METRICS,
    Table,
)
from core.settings import Settings
from schemas import (
    DeadLetter,
    ErasureRequest,
    ExposureEvent,
    FeedbackEvent,
    InteractionEvent,
    ModelPublished,
    TrainingStatus,
    WindowMetrics,
)
from schemas.events import Turn
from schemas.experiments import ExperimentEvent, ExperimentStarted

_TURNS = TypeAdapter(tuple[Turn, ...])


def _ab(event: InteractionEvent | FeedbackEvent | ExposureEvent | WindowMetrics) -> dict[str, Any]:
    return {"model_version": event.model_version, "experiment": event.experiment or "", "variant": event.variant or ""}


def _conversation(e: InteractionEvent | FeedbackEvent) -> dict[str, Any]:
    """The answered turn's place in its conversation; a version 1 event is its own one-turn conversation."""
    return {
        "conversation_id": e.conversation_id or e.interaction_id,
        "turn_index": e.turn_index,
        "context": _TURNS.dump_json(e.context).decode(),  # as on the wire: [{"role":"system","content":"..."},...]
        "context_turns": len(e.context),
        "context_chars": sum(len(turn.content) for turn in e.context),
    }


def interaction_row(e: InteractionEvent, _: Settings) -> dict[str, Any]:
    return {
        "interaction_id": e.interaction_id,
        "user_id": e.user_id,
        **_ab(e),
        "latency_ms": e.latency_ms,
        "query": e.query,
        "response": e.response,
        **_conversation(e),
        "ts": e.timestamp,
    }


def feedback_row(e: FeedbackEvent, settings: Settings) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "interaction_id": e.interaction_id,
        "user_id": e.user_id,
        **_ab(e),
        "policy": e.policy,
        "feedback_type": e.feedback_type,
        "rating": e.rating,
        "correction": e.correction or "",
        "positive": int(e.is_positive(settings.feedback.min_rating)),
        "reward": e.reward,
        "query": e.query,
        "response": e.response,
        **_conversation(e),
        "metadata": json.dumps(e.metadata),
        "ts": e.timestamp,
    }


def exposure_row(e: ExposureEvent, _: Settings) -> dict[str, Any]:
    return {
        "exposure_id": e.exposure_id,
        "user_id": e.user_id,
        **_ab(e),
        "interaction_id": e.interaction_id or "",
        "ts": e.timestamp,
    }


def metrics_row(e: WindowMetrics, _: Settings) -> dict[str, Any]:
    return {
        "window_start": e.window_start,
        "window_end": e.window_end,
        **_ab(e),
        "feedback_type": e.feedback_type,
        "count": e.count,
        "rating_sum": e.rating_sum,
        "rating_count": e.rating_count,
        "pii": list(e.pii.items()),
        "ts": e.timestamp,
    }


def status_row(e: TrainingStatus, _: Settings) -> dict[str, Any]:
    return {
        "trigger_id": e.trigger_id,
        "policy": e.policy,
        "state": e.state,
        "stage": e.stage,
        "message": e.message,
        "metrics": list(e.metrics.items()),
        "ts": e.timestamp,
    }


def published_row(e: ModelPublished, _: Settings) -> dict[str, Any]:
    return {
        "version": e.version,
        "policy": e.policy,
        "trigger_id": e.trigger_id,
        "parent_version": e.parent_version or "",
        "reward_model_version": e.reward_model_version or "",
        "decision": e.decision,
        "metrics": list(e.metrics.items()),
        "reason": e.reason,
        "ts": e.timestamp,
    }


def experiment_row(e: ExperimentEvent, _: Settings) -> dict[str, Any]:
    event = e.root
    common = {"kind": event.kind, "experiment_id": event.experiment_id, "policy": event.policy, "trigger_id": event.trigger_id}
    if isinstance(event, ExperimentStarted):
        step = {"control_version": event.control_version, "treatment_version": event.treatment_version}
        return {**common, **step, "outcome": "", "serving_version": "", "reason": "", "statistics": [], "ts": event.timestamp}
    decision = {"outcome": event.outcome, "serving_version": event.serving_version, "reason": event.reason}
    statistics = list(event.statistics.items())
    return {**common, "control_version": "", "treatment_version": "", **decision, "statistics": statistics, "ts": event.timestamp}


def dead_letter_row(dlq: str) -> Callable[[DeadLetter, Settings], dict[str, Any]]:
    """The row of a letter on the DLQ topic `dlq` (one table holds every DLQ's letters)."""

    def row(e: DeadLetter, _: Settings) -> dict[str, Any]:
        return {
            "dlq": dlq,
            "origin_topic": e.origin_topic,
            "origin_partition": e.origin_partition,
            "origin_offset": e.origin_offset,
            "key": e.key or "",
            "reason": e.reason,
            "value": e.value,
            "ts": e.timestamp,
        }

    return row


def erasure_row(e: ErasureRequest, _: Settings) -> dict[str, Any]:
    return {"user_id": e.user_id, "reason": e.reason, "ts": e.timestamp}


@dataclass(frozen=True)
class Route:
    """Where one topic's events go: the schema they must pass, the table, and the row they become."""

    model: type[BaseModel]
    table: Table
    row: Callable[[Any, Settings], dict[str, Any]]


ROUTES: Mapping[str, Route] = {
    "interactions": Route(InteractionEvent, INTERACTIONS, interaction_row),
    "feedback": Route(FeedbackEvent, FEEDBACK, feedback_row),
    "exposures": Route(ExposureEvent, EXPOSURES, exposure_row),
    "metrics": Route(WindowMetrics, WINDOW_METRICS, metrics_row),
    "training-status": Route(TrainingStatus, TRAINING_STATUS, status_row),
    "model-published": Route(ModelPublished, MODEL_PUBLISHED, published_row),
    "experiments": Route(ExperimentEvent, EXPERIMENTS, experiment_row),
    "feedback-dlq": Route(DeadLetter, DEAD_LETTERS, dead_letter_row("feedback-dlq")),
    "train-triggers-dlq": Route(DeadLetter, DEAD_LETTERS, dead_letter_row("train-triggers-dlq")),
    "erasures": Route(ErasureRequest, ERASURES, erasure_row),
}
