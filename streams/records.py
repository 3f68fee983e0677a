"""The stream app's internal wire format: what the validation stage hands to the per-policy stage.

Accepted feedback (one record per policy per validation batch), training-status updates, experiment
starts and decisions, and timer ticks for one policy travel through one internal topic keyed by
policy, so a single agent applies them in one order and owns all of that policy's state. Only
the fields the policy stage needs are carried (not the text, nor the conversation): a trigger names
offsets, and trainers replay the events whole from the feedback topic, whatever their version.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from core.settings import PiiType
from schemas import FeedbackEvent, TrainingStatus
from schemas.events import FeedbackType
from schemas.experiments import ExperimentDecided, ExperimentStarted

ExperimentStep = Annotated[ExperimentStarted | ExperimentDecided, Field(discriminator="kind")]


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class Accepted(Record):
    """A schema-valid feedback event and where it sits on the feedback topic."""

    event_id: str
    policy: str
    model_version: str
    experiment: str | None
    variant: str | None
    feedback_type: FeedbackType
    rating: int | None
    timestamp: datetime
    partition: int
    offset: int
    record_ts: float  # Kafka record timestamp (s): a producer retry gets a later one, the payload does not
    # PII found in its text, per type (the metrics windows count it). Nearly always empty, so it is
    # left out of the JSON then: no bytes and no parsing for it per clean event (and a record
    # without it, or from before it, reads as none found).
    pii: dict[str, int] = Field(default_factory=dict, exclude_if=operator.not_)

    @classmethod
    def of(
        cls, event: FeedbackEvent, partition: int, offset: int, record_ts: float, pii: Mapping[PiiType, int] | None = None
    ) -> Accepted:
        found = {"pii": pii} if pii else {}  # an empty count is the default: not validated per event
        return cls(
            event_id=event.event_id,
            policy=event.policy,
            model_version=event.model_version,
            experiment=event.experiment,
            variant=event.variant,
            feedback_type=event.feedback_type,
            rating=event.rating,
            timestamp=event.timestamp,
            partition=partition,
            offset=offset,
            record_ts=record_ts,
            **found,
        )


class PolicyRecord(Record):
    """Exactly one of: accepted feedback (one event, or the batch of one validation step, in
    feedback-partition order), a training status, an experiment's start or decision, or a tick at
    wall time `tick`."""

    policy: str
    accepted: Accepted | None = None
    batch: tuple[Accepted, ...] | None = None
    status: TrainingStatus | None = None
    experiment: ExperimentStep | None = None
    tick: float | None = None
