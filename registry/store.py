"""Model registry: versioned reward models and policies on a local directory, with lineage.

Layout under the registry root:

    policies/<version>/          weights + tokenizer + manifest.json
    reward_models/<version>/     weights + tokenizer + manifest.json
    pointers.json                per policy: which version serves, which is the A/B candidate, history

A version directory appears atomically (staged in `.staging/`, then renamed), so a crash never
leaves a half-written version that loads. Version ids derive from the trigger id, so publishing
the same trigger twice is recognised and is never a second version. Pointer changes are
serialised with a file lock and written by rename.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from core.errors import ModelLoadError, RlhfError
from core.files import write_atomically

Kind = Literal["policies", "reward_models"]
Status = Literal["base", "candidate", "rejected", "promoted", "rolled_back"]
MANIFEST = "manifest.json"


class RegistryError(RlhfError):
    """A registry operation is not allowed (unknown version, promoting a rejected candidate...)."""


@dataclass(frozen=True)
class Manifest:
    """Everything needed to trace a version back to the feedback it learned from."""

    version: str
    kind: Kind
    policy: str
    status: Status
    trigger_id: str | None = None
    parent_version: str | None = None
    reward_model_version: str | None = None
    data_ranges: list[dict[str, Any]] = field(default_factory=list)  # every offset range trained on, the history's included
    history_triggers: list[str] = field(
        default_factory=list
    )  # the triggers whose feedback it used, oldest first (history.json has them whole)
    metrics: dict[str, float] = field(default_factory=dict)
    guardrails_fired: list[str] = field(default_factory=list)
    config_hash: str = ""
    code_version: str = ""
    reason: str = ""
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    # Whose feedback it learned from (core.hashing.user_fingerprint: a digest, no user id), and of
    # those, who has since asked to be forgotten, here or in an ancestor (`mark_erased`): retrain it.
    data_users: list[str] = field(default_factory=list)
    erased_users: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Deployment:
    """Where an inference engine serves a version (registry/deployment.py): its OpenAI-compatible API's
    base URL and the model name it answers under; `adapter`: loaded at run time, unloaded once retired."""

    url: str
    model: str
    adapter: bool


@dataclass(frozen=True)
class ExperimentRecord:
    """An experiment's decision as the registry applied it."""

    experiment_id: str
    candidate: str
    outcome: str
    serving: str | None
    reason: str
    statistics: dict[str, float]
    decided_at: str
    first: bool  # True for the call that made the decision


def version_for(policy: str, trigger_id: str) -> str:
    """Deterministic version id: the same trigger always names the same version."""
    return f"{policy}-{trigger_id[:16]}"


def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
        if sha.returncode == 0:
            return sha.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    from core import __version__

    return __version__


class ModelRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in ("policies", "reward_models", ".staging"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ---- versions -------------------------------------------------------------------------
    def path(self, kind: Kind, version: str) -> Path:
        return self.root / kind / version

    def exists(self, kind: Kind, version: str) -> bool:
        return (self.path(kind, version) / MANIFEST).is_file()

    def manifest(self, kind: Kind, version: str) -> Manifest:
        file = self.path(kind, version) / MANIFEST
        try:
            return Manifest(**json.loads(file.read_text()))
        except FileNotFoundError:
            raise ModelLoadError(
                f"{self.path(kind, version)}: no such {kind[:-1].replace('_', ' ')} version in the registry"
            ) from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelLoadError(f"{file}: corrupt manifest ({exc})") from None

    def versions(self, kind: Kind) -> list[Manifest]:
        found = [self.manifest(kind, p.name) for p in (self.root / kind).iterdir() if (p / MANIFEST).is_file()]
        return sorted(found, key=lambda m: m.created_at)

    def publish(self, kind: Kind, version: str, build: Callable[[Path], Manifest]) -> Manifest | None:
        """Stage `build(dir)` (writes the files, returns the manifest), then rename into place.

        Returns None, without building, if the version already exists (a re-delivered trigger)."""
        if self.exists(kind, version):
            return None

        def stage(directory: Path) -> Manifest:
            manifest = build(directory)
            if (manifest.kind, manifest.version) != (kind, version):
                raise RegistryError(
                    f"build returned a manifest for {manifest.kind}/{manifest.version}, expected {kind}/{version}"
                )
            (directory / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
            return manifest

        try:  # staged in .staging/, not beside the versions, where `versions()` would list it
            return write_atomically(self.path(kind, version), stage, scratch=self.root / ".staging")
        except FileExistsError:
            if self.exists(kind, version):  # a concurrent publisher won with the same trigger
                return None
            raise

    def set_status(self, kind: Kind, version: str, status: Status, reason: str = "") -> Manifest:
        with self._locked():
            updated = Manifest(
                **{
                    **asdict(self.manifest(kind, version)),
                    "status": status,
                    "reason": reason or self.manifest(kind, version).reason,
                }
            )
            _write_atomically(self.path(kind, version) / MANIFEST, json.dumps(asdict(updated), indent=2))
        return updated

    def mark_erased(self, fingerprint: str) -> list[tuple[Kind, str]]:
        """Record, on every version that learned from the feedback of the user behind `fingerprint`
        (core.hashing.user_fingerprint), that they asked to be forgotten: directly (its data_users),
        or through its parent policy or its reward model. Returns those (kind, version); idempotent."""
        marked: dict[tuple[Kind, str], Manifest] = {}
        with self._locked():
            for kind in ("reward_models", "policies"):  # a policy inherits from its reward model, and
                for m in self.versions(kind):  # oldest first, from its parent
                    inherited = ("policies", m.parent_version) in marked or ("reward_models", m.reward_model_version) in marked
                    if fingerprint in m.data_users or inherited:
                        marked[(kind, m.version)] = m
            for (kind, version), m in marked.items():
                if fingerprint not in m.erased_users:
                    updated = Manifest(**{**asdict(m), "erased_users": [*m.erased_users, fingerprint]})
                    _write_atomically(self.path(kind, version) / MANIFEST, json.dumps(asdict(updated), indent=2))
        return sorted(marked)

    # ---- pointers: what serves -----------------------------------------------------------
    def pointers(self) -> dict[str, dict[str, Any]]:
        file = self.root / "pointers.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def serving(self, policy: str) -> str | None:
        version: str | None = self.pointers().get(policy, {}).get("serving")
        return version

    def candidate(self, policy: str) -> str | None:
        """The A/B candidate, never a rejected version."""
        version: str | None = self.pointers().get(policy, {}).get("candidate")
        if version is None or self.manifest("policies", version).status == "rejected":
            return None
        return version

    def register_base(self, policy: str, version: str, write: Callable[[Path], object]) -> None:
        """Publish the starting policy and make it serve, if the policy has nothing serving yet."""

        def build(directory: Path) -> Manifest:
            write(directory)
            return Manifest(version=version, kind="policies", policy=policy, status="base", code_version=code_version())

        self.publish("policies", version, build)
        with self._pointer_update() as pointers:
            entry = pointers.setdefault(policy, {"serving": None, "candidate": None, "history": []})
            if entry["serving"] is None:
                entry["serving"] = version
                entry["history"].append(version)

    def offer_candidate(self, policy: str, version: str) -> None:
        """Put a published, non-rejected policy version into the A/B test as the candidate."""
        if self.manifest("policies", version).status == "rejected":
            raise RegistryError(f"{version} was rejected by the promotion gate and can never serve")
        with self._pointer_update() as pointers:
            pointers.setdefault(policy, {"serving": None, "candidate": None, "history": []})["candidate"] = version

    def promote(self, policy: str, version: str | None = None, reason: str = "") -> str:
        """Make `version` (default: the current candidate) serve; the candidate slot empties."""
        version = version or self.candidate(policy)
        if version is None:
            raise RegistryError(f"policy {policy!r} has no candidate to promote")
        if self.manifest("policies", version).status == "rejected":
            raise RegistryError(f"{version} was rejected by the promotion gate and can never serve")
        with self._pointer_update() as pointers:
            entry = pointers.setdefault(policy, {"serving": None, "candidate": None, "history": []})
            entry["serving"] = version
            entry["history"].append(version)
            if entry.get("candidate") == version:
                entry["candidate"] = None
        self.set_status("policies", version, "promoted", reason)
        return version

    def rollback(self, policy: str, reason: str = "") -> str:
        """Drop the candidate if there is one; otherwise go back to the previously serving version."""
        with self._pointer_update() as pointers:
            entry = pointers.get(policy)
            if entry is None:
                raise RegistryError(f"policy {policy!r} has nothing serving")
            candidate: str | None = entry.get("candidate")
            if candidate is not None:
                entry["candidate"], dropped = None, candidate
            elif len(entry["history"]) > 1:
                dropped = str(entry["history"].pop())
                entry["serving"] = entry["history"][-1]
            else:
                raise RegistryError(f"policy {policy!r} has no earlier version to roll back to")
        self.set_status("policies", dropped, "rolled_back", reason)
        return dropped

    def decide_experiment(
        self,
        policy: str,
        experiment_id: str,
        candidate: str,
        outcome: str,
        reason: str,
        statistics: dict[str, float] | None = None,
    ) -> ExperimentRecord:
        """Apply an experiment's one decision, once: `promote` makes `candidate` serve; `rollback` and
        `expired` keep control (the candidate slot empties if it still holds `candidate`).

        The pointer move and the decision record are one atomic write of pointers.json, under the
        lock, so a second decider, or a decider re-run after a crash, finds the recorded decision and
        gets it back unchanged (`first=False`) instead of deciding again."""
        with self._pointer_update() as pointers:
            entry = pointers.setdefault(policy, {"serving": None, "candidate": None, "history": []})
            decided = entry.setdefault("decisions", {})
            first = experiment_id not in decided
            if first:
                if outcome == "promote":
                    entry["serving"] = candidate
                    entry["history"].append(candidate)
                if entry.get("candidate") == candidate:
                    entry["candidate"] = None
                decided[experiment_id] = {
                    "experiment_id": experiment_id,
                    "candidate": candidate,
                    "outcome": outcome,
                    "serving": entry["serving"],
                    "reason": reason,
                    "statistics": dict(statistics or {}),
                    "decided_at": datetime.now(UTC).isoformat(),
                }
            record = ExperimentRecord(**decided[experiment_id], first=first)
        # Repeated by a re-run too: a crash between the pointer write and this one is repaired.
        self.set_status("policies", candidate, "promoted" if record.outcome == "promote" else "rolled_back", record.reason)
        return record

    def experiment_decision(self, policy: str, experiment_id: str) -> ExperimentRecord | None:
        record = self.pointers().get(policy, {}).get("decisions", {}).get(experiment_id)
        return None if record is None else ExperimentRecord(**record, first=False)

    # ---- deployments: which engine serves a version ----------------------------------------
    def deployments(self, policy: str) -> dict[str, Deployment]:
        """The policy's versions an engine serves; a version not here is generated in process."""
        recorded = self.pointers().get(policy, {}).get("deployed", {})
        return {version: Deployment(**fields) for version, fields in recorded.items()}

    def record_deployment(self, policy: str, version: str, deployment: Deployment | None) -> None:
        """Record where `version` is served, or (None) that no engine serves it any more."""
        with self._pointer_update() as pointers:
            deployed = pointers.setdefault(policy, {"serving": None, "candidate": None, "history": []}).setdefault("deployed", {})
            if deployment is None:
                deployed.pop(version, None)
            else:
                deployed[version] = asdict(deployment)

    def rollback_target(self, policy: str) -> str | None:
        """The version a rollback of the serving one would serve again."""
        history: list[str] = self.pointers().get(policy, {}).get("history", [])
        return history[-2] if len(history) > 1 else None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def _pointer_update(self) -> Iterator[dict[str, dict[str, Any]]]:
        with self._locked():
            pointers = self.pointers()
            yield pointers
            _write_atomically(self.root / "pointers.json", json.dumps(pointers, indent=2))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
