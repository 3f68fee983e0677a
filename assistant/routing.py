"""Which model version answers a user, given the policy's open experiment: a pure function.

While an experiment is open, its own salt and arm weights assign the user to an arm
(`analytics.assignment`), whose model version answers, labelled with the experiment id and the arm
name; otherwise, or while one of its arms' versions is not loaded, the serving version answers
outside any experiment.

    route("u-42", "v3", experiment, available={"v3", "v4"})   # -> Route("v4", "policy-ab:v4", "variant_a")
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from analytics.assignment import assign
from schemas.experiments import ExperimentStarted


@dataclass(frozen=True)
class Route:
    model_version: str
    experiment: str | None = None
    variant: str | None = None


def routed_experiment(experiment: ExperimentStarted | None, available: Container[str]) -> ExperimentStarted | None:
    """The experiment users are routed into: the open one once every arm's version is available.
    All arms or none: a user assigned to an arm that cannot answer yet must not be counted in the
    experiment under another version."""
    if experiment is None or any(arm.model_version not in available for arm in experiment.arms):
        return None
    return experiment


def route(user_id: str, serving: str, experiment: ExperimentStarted | None, available: Container[str]) -> Route:
    experiment = routed_experiment(experiment, available)
    if experiment is None:
        return Route(serving)
    name = assign(experiment.salt, user_id, [(arm.name, arm.weight) for arm in experiment.arms])
    arm = next(arm for arm in experiment.arms if arm.name == name)
    return Route(arm.model_version, experiment.experiment_id, arm.name)
