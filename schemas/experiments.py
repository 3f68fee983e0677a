"""The experiment lifecycle on the `experiments` topic, keyed by policy.

A round's candidate is offered to users by `ExperimentStarted` (written by the trainer once the
gate passes it) and ended by exactly one `ExperimentDecided` (written by the decider). While an
experiment is open the stream worker holds the policy's next trigger back and the assistant
routes the experiment's variants; the decision releases both.

    event = parse_event(ExperimentEvent, raw).root     # an ExperimentStarted or an ExperimentDecided
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from schemas.events import Event, Id, utc_now

ExperimentOutcome = Literal["promote", "rollback", "expired"]


def experiment_id_for(experiment: str, candidate_version: str) -> str:
    """Each candidate is its own experiment, so analyses never mix rounds (and the id is stable
    across redeliveries: the candidate's version derives from its trigger id)."""
    return f"{experiment}:{candidate_version}"


class Arm(BaseModel):
    """One variant of an experiment: its name, the model version it serves, its traffic weight."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Id
    model_version: Id
    weight: float = Field(gt=0)


class ExperimentStarted(Event):
    """A candidate is offered: who is compared with whom, how traffic splits, and when it must end."""

    kind: Literal["started"] = "started"
    experiment_id: Id
    policy: Id
    trigger_id: Id = Field(description="The training round whose candidate this is.")
    control_version: Id
    treatment_version: Id
    arms: tuple[Arm, ...] = Field(min_length=2, description="Variants in config order; the first is the control.")
    salt: str = Field(min_length=1, max_length=128, description="Assignment salt (analytics.assignment).")
    started_at: datetime = Field(default_factory=utc_now)
    horizon_users: int = Field(ge=1, description="Exposed users per variant at which the experiment ends undecided.")
    horizon_s: float = Field(gt=0, description="Duration after which the experiment ends undecided.")

    @model_validator(mode="before")
    @classmethod
    def _drop_removed_margin(cls, data: Any) -> Any:
        """Events written by 0.1.0 carry `non_inferiority_margin` (null unless set), a rule measured
        and dropped (docs/settings-history.md#non_inferiority_margin); it is read and ignored so the
        experiments topic replays. A compatibility reader: removed in 0.3.0."""
        if isinstance(data, dict) and "non_inferiority_margin" in data:
            data = {k: v for k, v in data.items() if k != "non_inferiority_margin"}
        return data

    @model_validator(mode="after")
    def _arms_are_distinct(self) -> ExperimentStarted:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be distinct, got {names}")
        return self


class ExperimentDecided(Event):
    """The one decision of an experiment, the statistics it rested on, and what serves afterwards."""

    kind: Literal["decided"] = "decided"
    experiment_id: Id
    policy: Id
    trigger_id: Id
    outcome: ExperimentOutcome = Field(
        description="promote; rollback (significantly worse or a guardrail); expired (the horizon reached without a win: "
        "control kept)."
    )
    serving_version: Id = Field(description="The version serving after the decision.")
    statistics: dict[str, float] = Field(default_factory=dict)
    reason: str = Field("", max_length=4_000)


class ExperimentEvent(RootModel[Annotated[ExperimentStarted | ExperimentDecided, Field(discriminator="kind")]]):
    """The value of the `experiments` topic: either step, told apart by `kind`."""

    model_config = ConfigDict(frozen=True)

    def to_bytes(self) -> bytes:
        return self.root.to_bytes()


class ExperimentBook:
    """The open experiments, folded from the topic's events (pure, no I/O): an `ExperimentStarted`
    opens its experiment, its `ExperimentDecided` closes it, and a decided experiment never opens
    again (a producer's retry may write a start twice). The decider and the assistant both read the
    topic into one of these.

    Written by one thread, read by many: every change swaps in a new mapping, so a reader sees the
    state before or after it, never half of it."""

    def __init__(self) -> None:
        self._open: Mapping[str, ExperimentStarted] = {}  # by experiment id, in the order started
        self._decided: set[str] = set()  # experiment ids; one per round, so it stays small

    def apply(self, step: ExperimentStarted | ExperimentDecided) -> None:
        if step.experiment_id in self._decided:
            return
        if isinstance(step, ExperimentStarted):
            if step.experiment_id not in self._open:
                self._open = {**self._open, step.experiment_id: step}
            return
        self._decided.add(step.experiment_id)
        self._open = {i: s for i, s in self._open.items() if i != step.experiment_id}

    def all_open(self) -> list[ExperimentStarted]:
        return list(self._open.values())

    def open(self, policy: str) -> ExperimentStarted | None:
        """The policy's open experiment. There is one at a time (the stream worker holds the next
        round back until the decision); were another started anyway, the newer one is routed."""
        return next((s for s in reversed(list(self._open.values())) if s.policy == policy), None)
