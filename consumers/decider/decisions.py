"""Applying an A/B decision: the registry pointer moves, and the rest of the loop hears about it.

A published candidate keeps its round open: the training job reports it as `progress` at stage
`ab_test`, so the stream app holds the policy's next trigger back (as it does during training)
and the next round trains on top of the decided version rather than beside an undecided one.
Promoting or rolling back here closes the round: `ModelPublished(decision=promoted|rolled_back)`
and a `finished` TrainingStatus for the candidate's trigger. Were no decision ever made, the
stream app's `trigger_timeout` would release the policy anyway.
"""

from __future__ import annotations

from typing import Literal

from registry.store import ModelRegistry
from consumers.emitter import EventEmitter
from core.settings import Settings
from schemas import ModelPublished, TrainingStatus

Decision = Literal["promote", "rollback"]


def apply_decision(settings: Settings, registry: ModelRegistry, policy: str, decision: Decision, reason: str, version: str | None = None) -> str:
    """Promote `version` (default: the candidate) or roll back; returns the version acted on."""
    if decision == "promote":
        acted, status = registry.promote(policy, version, reason=reason), "promoted"
    else:
        acted, status = registry.rollback(policy, reason=reason), "rolled_back"
    manifest = registry.manifest("policies", acted)
    emitter = EventEmitter(settings)
    emitter.emit("model-published", ModelPublished(
        version=acted, policy=policy, trigger_id=manifest.trigger_id or acted, parent_version=manifest.parent_version,
        reward_model_version=manifest.reward_model_version, decision=status, metrics=manifest.metrics, reason=reason[:4000],
    ), policy)  # fmt: skip
    if manifest.trigger_id:
        emitter.emit("training-status", TrainingStatus(
            trigger_id=manifest.trigger_id, policy=policy, state="finished", stage=status, message=reason[:4000],
        ), policy)  # fmt: skip
    return acted
