"""Applying a decision: the registry pointer moves once, and the rest of the loop hears about it.

An experiment's decision (by the decider, or by hand with `rlhf models promote|rollback`) goes
through `close_experiment`: `ModelRegistry.decide_experiment` applies it once and records it, then
`ModelPublished(decision=promoted|rolled_back)` and `ExperimentDecided` announce it. The stream
worker releases the policy's next trigger on `ExperimentDecided`, and the assistant stops routing
the experiment. Announcing again after a crash is harmless: readers key on the experiment id.
"""

from __future__ import annotations

from typing import Literal

from consumers.emitter import EventEmitter
from core.settings import Settings
from registry.store import ExperimentRecord, Manifest, ModelRegistry
from schemas import ModelPublished
from schemas.events import PublishDecision
from schemas.experiments import ExperimentDecided, ExperimentOutcome, experiment_id_for

ManualDecision = Literal["promote", "rollback"]


def close_experiment(
    emitter: EventEmitter,
    registry: ModelRegistry,
    policy: str,
    experiment_id: str,
    candidate: str,
    outcome: ExperimentOutcome,
    reason: str,
    statistics: dict[str, float] | None = None,
) -> tuple[ExperimentRecord, ExperimentDecided]:
    """Decide `experiment_id` (or find it decided) and announce the recorded decision; returns the
    record and the announcement."""
    record = registry.decide_experiment(policy, experiment_id, candidate, outcome, reason[:4000], statistics)
    manifest = registry.manifest("policies", candidate)
    emitter.emit(
        "model-published",
        published(manifest, "promoted" if record.outcome == "promote" else "rolled_back", record.reason),
        policy,
    )
    announced = ExperimentDecided(
        experiment_id=experiment_id,
        policy=policy,
        trigger_id=manifest.trigger_id or candidate,
        outcome=record.outcome,
        serving_version=record.serving or candidate,
        statistics=record.statistics,
        reason=record.reason,
    )
    emitter.emit("experiments", announced, policy)
    return record, announced


def decide_by_hand(
    settings: Settings, registry: ModelRegistry, policy: str, decision: ManualDecision, reason: str, version: str | None = None
) -> str:
    """`rlhf models promote|rollback`: the candidate's experiment is closed like the decider would;
    promoting another version, or rolling back with no candidate, moves the pointer directly."""
    emitter = EventEmitter(settings)
    candidate = registry.candidate(policy)
    if candidate is not None and version in (None, candidate):
        experiment_id = experiment_id_for(settings.ab_testing.experiment, candidate)
        close_experiment(emitter, registry, policy, experiment_id, candidate, decision, reason)
        return candidate
    acted = (
        registry.promote(policy, version, reason=reason) if decision == "promote" else registry.rollback(policy, reason=reason)
    )
    emitter.emit(
        "model-published",
        published(registry.manifest("policies", acted), "promoted" if decision == "promote" else "rolled_back", reason),
        policy,
    )
    return acted


def published(manifest: Manifest, decision: PublishDecision, reason: str) -> ModelPublished:
    """The announcement of a version's new status (the gate's, or a later decision), with its lineage from the manifest."""
    return ModelPublished(
        version=manifest.version,
        policy=manifest.policy,
        trigger_id=manifest.trigger_id or manifest.version,
        parent_version=manifest.parent_version,
        reward_model_version=manifest.reward_model_version,
        decision=decision,
        metrics=manifest.metrics,
        reason=reason[:4000],
    )
