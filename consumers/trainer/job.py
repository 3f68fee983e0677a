"""One training job: trigger -> exact dataset -> reward model -> policy -> evaluated, gated version.

Called by the trainer consumer for each TrainTrigger. Idempotent by trigger id: the policy
version id derives from it, so a re-delivered trigger whose version exists is a no-op.

Lineage written into each manifest: trigger id and offset ranges -> reward-model version ->
parent policy -> metrics -> gate decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.decider.decisions import published
from consumers.emitter import EventEmitter
from core.errors import GuardrailRejection, RlhfError, TrainingError
from core.hashing import user_fingerprint
from core.settings import Settings
from registry.deployment import ADAPTER_DIR, ADAPTER_ERROR, Deployer, root_base
from registry.store import Manifest, ModelRegistry, code_version, version_for
from schemas import FeedbackEvent, TrainTrigger
from schemas.events import CANDIDATE_STAGE, DEFAULT_POLICY
from schemas.experiments import Arm, ExperimentStarted, experiment_id_for

if TYPE_CHECKING:  # the trainer's libraries load when a training starts
    from trainers.history import History
    from trainers.reward_model import RewardModel
    from trainers.trust import UserTrust

BASE_VERSION = "base"

log = logging.getLogger(__name__)


Progress = Callable[..., None]  # progress(stage, metrics=None, message="")


class JobAbandoned(RlhfError):
    """The trainer is shutting down; the trigger stays uncommitted and will be retried."""


@dataclass(frozen=True)
class RoundRewardModel:
    """A round's reward model, as its policy step needs it."""

    version: str  # its registry version: `rm-` and the start of the trigger id
    model: RewardModel  # loaded from the registry
    metrics: dict[str, float]  # its manifest's metrics; the policy's manifest repeats them as `rm_*`
    history: History  # the feedback it learned from; the policy's queries and corrections come from it too
    trust: UserTrust  # the users' weights it trained under (`trainers.trust`); the corrections' filter uses them


def config_hash(settings: Settings) -> str:
    training = {k: settings.model_dump(mode="json")[k] for k in ("reward_model", "policy", "feedback", "trust")}
    return hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:12]


def ensure_base_policy(settings: Settings, policy: str = DEFAULT_POLICY) -> str:
    """Register the configured starting policy (`policy.base_model`) as serving if nothing serves yet."""
    from trainers.base_models import resolve_base_model

    registry = ModelRegistry.of(settings)
    if registry.serving(policy) is None:
        source = Path(resolve_base_model(settings.policy.base_model))
        if not source.is_dir():
            raise TrainingError(
                f"policy.base_model {settings.policy.base_model!r}: "
                "the registry needs a local directory to copy as the base version"
            )
        registry.register_base(policy, BASE_VERSION, lambda d: shutil.copytree(source, d, dirs_exist_ok=True))
    return registry.serving(policy) or BASE_VERSION


def data_users(events: list[FeedbackEvent]) -> list[str]:
    """Whose feedback a version learns from, as fingerprints (the manifest names no user)."""
    return sorted({user_fingerprint(e.user_id) for e in events})


def data_ranges(history: History) -> list[dict]:
    """Every offset range a version learned from: its triggers' (the history's included), then the
    feedback read between them (trainers.history.between_ranges)."""
    return [r.model_dump() for r in (*(r for t in history.triggers for r in t.ranges), *history.between)]


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested metrics as `a.b` keys (manifests and events carry flat floats)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[f"{prefix}{key}"] = float(value)
    return flat


class TrainingJob:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = ModelRegistry.of(settings)

    def __call__(self, trigger: TrainTrigger, emitter: EventEmitter, stop: threading.Event) -> None:
        from trainers.replay import replay_trigger

        version = version_for(trigger.policy, trigger.trigger_id)
        if self.registry.exists("policies", version):
            # A crash may have come between publishing and offering: an undecided candidate's
            # experiment is (re)started; readers key on its id, so a second start is harmless.
            existing = self.registry.manifest("policies", version)
            if existing.status == "candidate" and existing.parent_version:
                self._start_experiment(trigger, version, existing.parent_version, emitter)
            emitter.status(trigger, "finished", message=f"already published as {version}; nothing to do")
            return
        emitter.status(trigger, "started", stage="replay")
        latest = replay_trigger(self.settings, trigger)
        if not latest:
            raise TrainingError(f"trigger {trigger.trigger_id}: its offset ranges hold no accepted feedback")
        parent = self.registry.serving(trigger.policy) or ensure_base_policy(self.settings, trigger.policy)

        def progress(stage: str, metrics: dict[str, float] | None = None, message: str = "") -> None:
            if stop.is_set():
                raise JobAbandoned("shutdown requested")
            emitter.status(trigger, "progress", stage=stage, message=message, metrics=metrics or {})

        reward = self._reward_model(trigger, latest, progress)
        progress("policy", reward.metrics)
        manifest = self.registry.publish(
            "policies", version, lambda d: self._policy(d, trigger, version, parent, reward, progress, emitter)
        )
        if manifest is None:  # another trainer published this trigger meanwhile
            emitter.status(trigger, "finished", message=f"already published as {version}")
            return
        self._mark_late_erasures(reward.history.events)
        emitter.emit("model-published", published(manifest, manifest.status, manifest.reason), trigger.policy)  # type: ignore[arg-type]
        stage: str = manifest.status
        if (
            manifest.status == "candidate" and self.settings.ab_testing.enabled
        ):  # the round stays open until its experiment is decided
            self._start_experiment(trigger, version, parent, emitter)
            stage = CANDIDATE_STAGE
        elif manifest.status == "candidate":  # A/B testing switched off: the gate's verdict is final
            self._deploy(trigger, [version], emitter)
            promoted = self.registry.promote(trigger.policy, version, reason=f"{manifest.reason}; ab_testing.enabled is false")
            emitter.emit(
                "model-published",
                published(self.registry.manifest("policies", promoted), "promoted", "ab_testing.enabled is false"),
                trigger.policy,
            )
            stage = "promoted"
        emitter.status(trigger, "finished", stage=stage, message=manifest.reason, metrics=manifest.metrics)

    def _start_experiment(self, trigger: TrainTrigger, candidate: str, control: str, emitter: EventEmitter) -> None:
        """Offer the candidate to users: its experiment opens before the training's `finished`
        status is written, so the policy's trigger gate never sees a gap between the two."""
        if self.registry.experiment_decision(trigger.policy, experiment_id_for(self.settings.ab_testing.experiment, candidate)):
            return  # decided already: a redelivered trigger must not reopen it
        ab = self.settings.ab_testing
        self._deploy(trigger, [control, candidate], emitter)  # both arms on the engine before any user is routed
        self.registry.offer_candidate(trigger.policy, candidate)
        by_spec = {"serving": control, "candidate": candidate}
        emitter.emit(
            "experiments",
            ExperimentStarted(
                experiment_id=experiment_id_for(ab.experiment, candidate),
                policy=trigger.policy,
                trigger_id=trigger.trigger_id,
                control_version=control,
                treatment_version=candidate,
                salt=ab.salt,
                horizon_users=ab.horizon_users,
                horizon_s=ab.horizon_s,
                arms=tuple(Arm(name=v.name, model_version=by_spec.get(v.model, v.model), weight=v.weight) for v in ab.variants),
            ),
            trigger.policy,
        )

    def _deploy(self, trigger: TrainTrigger, versions: list[str], emitter: EventEmitter) -> None:
        """With `gateway.engine_url`, serve `versions` from that engine (registry/deployment.py); an
        EngineError (the engine's reason) fails the attempt: retried, then failed on training-status."""
        if not self.settings.gateway.engine_url:
            return
        deployer = Deployer(self.registry, self.settings.gateway)
        try:
            emitter.status(
                trigger, "progress", stage="deploy", message=f"loading {', '.join(versions)} into {deployer.admin.url}"
            )
            for version in versions:
                deployer.deploy(trigger.policy, version)
        finally:
            deployer.close()

    def _reward_model(self, trigger: TrainTrigger, latest: list[FeedbackEvent], progress: Progress) -> RoundRewardModel:
        """The round's reward model, trained on the latest trigger's feedback and the earlier
        triggers the history window allows (trainers.history; the newest events and a stable
        sample of the rest, `reward_sample_events`), warm-started from the previous round's;
        with the whole history's feedback (the policy's corrections and queries come from all of
        it) and the triggers that feedback came from."""
        from trainers.history import HistoryWindow, load_history, replay_history, replay_sample, save_history, select_history
        from trainers.policy import step_metrics
        from trainers.replay import replay_accepted, replay_trigger
        from trainers.reward import train_reward_model
        from trainers.reward_config import RewardConfig
        from trainers.reward_model import RewardModel
        from trainers.trust import load_trust, save_trust, user_trust

        rm_version = f"rm-{trigger.trigger_id[:16]}"
        if self.registry.exists("reward_models", rm_version):  # a redelivered trigger: the same data again
            known, used_ids = load_history(self.registry.path("reward_models", rm_version))
            used = [t for t in known if t.trigger_id in used_ids] or [trigger]
        else:
            previous = self._previous_reward_model(trigger.policy)
            known, _ = load_history(previous)
            used = select_history(known, trigger, HistoryWindow.from_settings(self.settings))
            known = [*(t for t in known if t.trigger_id != trigger.trigger_id), trigger]
        history = replay_history(
            used,
            lambda t: latest if t.trigger_id == trigger.trigger_id else replay_trigger(self.settings, t),
            lambda ranges: replay_accepted(self.settings, trigger.policy, ranges),
        )
        events, recent, used = history.events, history.recent, history.triggers  # what could be read
        if not self.registry.exists("reward_models", rm_version):
            warm = previous / "model" if previous is not None and self.settings.continuous_learning.warm_start else None

            def report(done: int, total: int, running: dict[str, float]) -> None:
                if done % max(1, total // 5) == 0 or done == total:  # a status event per fifth, not per step
                    progress("reward_model", {**running, **step_metrics(done, total)})

            def build(directory: Path) -> Manifest:
                config = RewardConfig.from_settings(self.settings)
                sample = replay_sample(events, recent, self.settings.continuous_learning.reward_sample_events)
                judge = None  # the previous round's reward model, the consensus users are compared with
                if previous is not None and self.settings.trust.agreement_weighting:
                    judge = RewardModel.load(previous / "model").predict
                trust = user_trust(sample, self.settings.trust, config.min_rating, score=judge)
                save_trust(directory, trust)
                _, metrics = train_reward_model(
                    sample,
                    config,
                    directory / "model",
                    lineage=self._lineage(trigger, history),
                    progress=report,
                    recent_ids=recent,
                    warm_start=warm,
                    user_weight=trust.weight,
                )
                metrics["trust"] = trust.summary()
                save_history(directory, known, used)
                return Manifest(
                    version=rm_version,
                    kind="reward_models",
                    policy=trigger.policy,
                    status="candidate",
                    trigger_id=trigger.trigger_id,
                    data_ranges=data_ranges(history),
                    history_triggers=[t.trigger_id for t in used],
                    metrics=flatten_metrics(metrics),
                    config_hash=config_hash(self.settings),
                    code_version=code_version(),
                    data_users=data_users(events),
                )

            progress(
                "reward_model",
                {"history_triggers": float(len(used)), "history_events": float(len(events)), "recent_events": float(len(recent))},
            )
            self.registry.publish("reward_models", rm_version, build)
        directory = self.registry.path("reward_models", rm_version)
        model = RewardModel.load(directory / "model")
        metrics = self.registry.manifest("reward_models", rm_version).metrics
        return RoundRewardModel(rm_version, model, metrics, history, load_trust(directory))

    def _original_policy(self) -> str | None:
        """The base version the loop started from, where the registry holds its weights."""
        from trainers.base_models import is_model_dir

        base = self.registry.path("policies", BASE_VERSION)
        return str(base) if is_model_dir(base) else None

    def _previous_reward_model(self, policy: str) -> Path | None:
        """The directory of the policy's newest reward model (its history.json lists every trigger so far)."""
        mine = [m for m in self.registry.versions("reward_models") if m.policy == policy]
        return self.registry.path("reward_models", mine[-1].version) if mine else None

    def _policy(
        self,
        directory: Path,
        trigger: TrainTrigger,
        version: str,
        parent: str,
        reward: RoundRewardModel,
        progress: Progress,
        emitter: EventEmitter,
    ) -> Manifest:
        """The round's policy, trained from `parent` against `reward` into `directory`, as the
        manifest of a candidate or of a rejected version (the gate's or the guardrails' verdict)."""
        from trainers.dataset import split_policy_queries
        from trainers.ensemble import EnsembleReward
        from trainers.launch import RewardSpec, optimise_in_processes
        from trainers.optimise import gate_verdict, optimise_policy
        from trainers.trust import trusted_corrections

        config = self.settings.policy.training
        history, events = reward.history, reward.history.events
        train_queries, eval_queries = split_policy_queries(events)
        learned, filtered = trusted_corrections(events, reward.trust, self.settings.trust, score=reward.model.predict)

        def on_status(state: str, stage: str, message: str, metrics: dict[str, float]) -> None:
            if state == "guardrail":
                emitter.status(trigger, "guardrail", stage=stage, message=message, metrics=metrics)
            else:  # the job owns started/finished; progress also abandons the job on shutdown
                progress(stage, metrics, message)

        lineage: dict[str, Any] = dict(
            version=version,
            kind="policies",
            policy=trigger.policy,
            trigger_id=trigger.trigger_id,
            parent_version=parent,
            reward_model_version=reward.version,
            data_ranges=data_ranges(history),
            history_triggers=[t.trigger_id for t in history.triggers],
            config_hash=config_hash(self.settings),
            code_version=code_version(),
            data_users=data_users(events),
        )
        gate = reward.model.config.training.gate_head
        common: dict[str, Any] = dict(
            on_status=on_status,
            feedback_events=learned,
            min_rating=self.settings.feedback.min_rating,
            original_path=self._original_policy(),
            # a killed trainer resumes PPO here (policy.training.checkpoint_every)
            checkpoint_dir=self.settings.home / "checkpoints" / version,
        )
        parent_path, algorithm = str(self.registry.path("policies", parent)), self.settings.policy.algorithm
        try:
            # PPO optimises the ensemble's penalised reward; the gate judges with the head it never saw.
            if self.settings.policy.processes > 1:  # data-parallel, in processes of its own (trainers/launch.py)
                log.info("%s: optimising the policy on %d processes (torchrun)", version, self.settings.policy.processes)
                rm = RewardSpec(
                    str(self.registry.path("reward_models", reward.version) / "model"), config.uncertainty_penalty, gate
                )
                metrics = optimise_in_processes(
                    self.settings.policy.processes,
                    algorithm,
                    parent_path,
                    rm,
                    train_queries,
                    eval_queries,
                    config,
                    directory,
                    **common,
                )
            else:
                reward_fn = EnsembleReward(reward.model, config.uncertainty_penalty)
                gate_fn = reward.model.gate_reward if gate else None
                metrics = optimise_policy(
                    algorithm, parent_path, reward_fn, train_queries, eval_queries, config, directory, gate_fn=gate_fn, **common
                )
        except GuardrailRejection as exc:  # an outcome: record it, it never serves. A TrainingError fails the trigger.
            return Manifest(
                **lineage,
                status="rejected",
                metrics={**{f"rm_{k}": v for k, v in reward.metrics.items()}, **filtered},
                reason=str(exc),
                guardrails_fired=["eval_after"],
            )
        metrics.pop("guardrails_fired")  # empty: a policy failing a guardrail raised GuardrailRejection above
        improved, reason = gate_verdict(metrics, self.settings.registry.promotion_margin)
        if improved and config.lora_r:  # what an inference engine loads (registry/deployment.py)
            self._publish_adapter(directory, parent)
        return Manifest(
            **lineage,
            status="candidate" if improved else "rejected",
            reason=reason,
            metrics={**{f"rm_{k}": v for k, v in reward.metrics.items()}, **filtered, **flatten_metrics(metrics)},
        )

    def _publish_adapter(self, directory: Path, parent: str) -> None:
        """The version as a LoRA adapter on its lineage's base model, or why it has none."""
        from trainers.adapters import AdapterError, export_adapter

        base = self.registry.path("policies", root_base(self.registry, parent))
        try:
            info = export_adapter(base, directory, directory / ADAPTER_DIR)
            modules = ", ".join(info.modules)
            log.info("%s: adapter of rank %d on %s (residual %.1g)", directory.name, info.rank, modules, info.residual)
        except AdapterError as exc:
            (directory / ADAPTER_ERROR).write_text(f"{exc}\n")

    def _mark_late_erasures(self, events: list[FeedbackEvent]) -> None:
        """A user erased after the replay and before the publish: `rlhf privacy forget` marked the
        versions that existed then; this marks the ones just trained on their data."""
        from trainers.erasures import erased_users

        for user in {e.user_id for e in events} & erased_users(self.settings):
            self.registry.mark_erased(user_fingerprint(user))

    @staticmethod
    def _lineage(trigger: TrainTrigger, history: History) -> dict:
        return {
            "trigger_id": trigger.trigger_id,
            "policy": trigger.policy,
            "ranges": data_ranges(history),
            "history_triggers": [t.trigger_id for t in history.triggers],
        }
