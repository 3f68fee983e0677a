"""Model registry: versioned reward models and policies, with lineage, on a local directory or an
object store any host can reach (`registry.url`, registry/objects.py).

Layout under the registry root:

    policies/<version>/          weights + tokenizer + manifest.json
    reward_models/<version>/     weights + tokenizer + manifest.json
    pointers.json                per policy: which version serves, which is the A/B candidate, history
    blobs/<sha256>               (object store only) the versions' files (registry/content.py)

A version appears whole or not at all: locally its directory is staged in `.staging/`, then renamed;
on an object store its files are uploaded first and its manifest, created only if absent, makes them
a version. Version ids derive from the trigger id, so publishing the same trigger twice is one
version. Pointers and manifests change by compare-and-swap (objects.replace), re-read and re-applied
when another writer got there first, so any number of services, on any hosts, share one registry.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from core.errors import ModelLoadError, RlhfError
from core.files import write_atomically
from registry.content import fetch_files, upload_files
from registry.objects import LocalObjects, open_objects

if TYPE_CHECKING:
    from core.settings import Settings

Kind = Literal["policies", "reward_models"]
Status = Literal["base", "candidate", "rejected", "promoted", "rolled_back"]
MANIFEST = "manifest.json"
POINTERS = "pointers.json"
T = TypeVar("T")


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
    """Versions and pointers at `location`: a local directory, or an object store URL (registry/objects.py),
    whose versions are then read through `cache`, a local directory that holds each file once by content."""

    def __init__(self, location: Path | str, cache: Path | None = None):
        self.objects = open_objects(location)
        self.local = isinstance(self.objects, LocalObjects)
        if isinstance(self.objects, LocalObjects):
            self.root = self.objects.root  # versions are used where they lie
        elif cache is None:
            raise RegistryError(f"registry at {location}: a local cache directory is needed to read its versions")
        else:
            self.root = Path(cache)
        for sub in ("policies", "reward_models", ".staging"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @classmethod
    def of(cls, settings: Settings) -> ModelRegistry:
        """The registry the settings name: `registry.url`, cached in the local `registry.path`, or that path alone."""
        return cls(settings.registry.url or settings.registry_path, cache=settings.registry_path)

    # ---- versions -------------------------------------------------------------------------
    def path(self, kind: Kind, version: str) -> Path:
        """The version's files on this host: fetched into the cache first when the registry is remote."""
        directory = self.root / kind / version
        if not self.local and not (directory / MANIFEST).is_file() and (stored := self._stored_manifest(kind, version)):
            manifest, document, _ = stored
            fetch_files(self.objects, document["files"], self.root, directory, {MANIFEST: json.dumps(asdict(manifest), indent=2)})
        return directory

    def exists(self, kind: Kind, version: str) -> bool:
        return self.objects.exists(_manifest_key(kind, version))

    def manifest(self, kind: Kind, version: str) -> Manifest:
        return self._read_manifest(kind, version)[0]

    def versions(self, kind: Kind) -> list[Manifest]:
        stored = (self._stored_manifest(kind, name) for name in self.objects.children(kind))
        return sorted((found[0] for found in stored if found is not None), key=lambda m: m.created_at)

    def publish(self, kind: Kind, version: str, build: Callable[[Path], Manifest]) -> Manifest | None:
        """Stage `build(dir)` (writes the files, returns the manifest), then make it appear whole.

        Returns None, without building, if the version already exists (a re-delivered trigger), and
        None after building if a concurrent publisher of the same trigger got there first."""
        if self.exists(kind, version):
            return None

        def stage(directory: Path) -> Manifest:
            manifest = build(directory)
            if (manifest.kind, manifest.version) != (kind, version):
                raise RegistryError(
                    f"build returned a manifest for {manifest.kind}/{manifest.version}, expected {kind}/{version}"
                )
            if not self.local:  # the files first, by content; the manifest, created once, makes them a version
                files = upload_files(self.objects, directory)
                document = {**asdict(manifest), "files": files}
                if not self.objects.create(_manifest_key(kind, version), _encode(document)):
                    raise FileExistsError(version)
            (directory / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
            return manifest

        try:  # staged in .staging/, not beside the versions, where `versions()` would list it
            return write_atomically(self.root / kind / version, stage, scratch=self.root / ".staging")
        except FileExistsError:
            if self.exists(kind, version):  # a concurrent publisher won with the same trigger
                return None
            raise

    def set_status(self, kind: Kind, version: str, status: Status, reason: str = "") -> Manifest:
        return self._update_manifest(
            kind, version, lambda m: Manifest(**{**asdict(m), "status": status, "reason": reason or m.reason})
        )

    def mark_erased(self, fingerprint: str) -> list[tuple[Kind, str]]:
        """Record, on every version that learned from the feedback of the user behind `fingerprint`
        (core.hashing.user_fingerprint), that they asked to be forgotten: directly (its data_users),
        or through its parent policy or its reward model. Returns those (kind, version); idempotent."""
        marked: set[tuple[Kind, str]] = set()
        for kind in ("reward_models", "policies"):  # a policy inherits from its reward model, and
            for m in self.versions(kind):  # oldest first, from its parent
                inherited = ("policies", m.parent_version) in marked or ("reward_models", m.reward_model_version) in marked
                if fingerprint in m.data_users or inherited:
                    marked.add((kind, m.version))
        for kind, version in marked:
            self._update_manifest(
                kind,
                version,
                lambda m: (
                    m
                    if fingerprint in m.erased_users
                    else Manifest(**{**asdict(m), "erased_users": [*m.erased_users, fingerprint]})
                ),
            )
        return sorted(marked)

    # ---- pointers: what serves -----------------------------------------------------------
    def pointers(self) -> dict[str, dict[str, Any]]:
        stored = self.objects.read(POINTERS)
        return {} if stored is None else dict(json.loads(stored.data))

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

        def serve_first(pointers: dict[str, dict[str, Any]]) -> None:
            entry = _entry(pointers, policy)
            if entry["serving"] is None:
                entry["serving"] = version
                entry["history"].append(version)

        self._update_pointers(serve_first)

    def offer_candidate(self, policy: str, version: str) -> None:
        """Put a published, non-rejected policy version into the A/B test as the candidate."""
        if self.manifest("policies", version).status == "rejected":
            raise RegistryError(f"{version} was rejected by the promotion gate and can never serve")

        def offer(pointers: dict[str, dict[str, Any]]) -> None:
            _entry(pointers, policy)["candidate"] = version

        self._update_pointers(offer)

    def promote(self, policy: str, version: str | None = None, reason: str = "") -> str:
        """Make `version` (default: the current candidate) serve; the candidate slot empties."""
        version = version or self.candidate(policy)
        if version is None:
            raise RegistryError(f"policy {policy!r} has no candidate to promote")
        if self.manifest("policies", version).status == "rejected":
            raise RegistryError(f"{version} was rejected by the promotion gate and can never serve")
        promoted = version

        def serve(pointers: dict[str, dict[str, Any]]) -> None:
            entry = _entry(pointers, policy)
            entry["serving"] = promoted
            entry["history"].append(promoted)
            if entry.get("candidate") == promoted:
                entry["candidate"] = None

        self._update_pointers(serve)
        self.set_status("policies", version, "promoted", reason)
        return version

    def rollback(self, policy: str, reason: str = "") -> str:
        """Drop the candidate if there is one; otherwise go back to the previously serving version."""

        def drop(pointers: dict[str, dict[str, Any]]) -> str:
            entry = pointers.get(policy)
            if entry is None:
                raise RegistryError(f"policy {policy!r} has nothing serving")
            candidate: str | None = entry.get("candidate")
            if candidate is not None:
                entry["candidate"] = None
                return candidate
            if len(entry["history"]) > 1:
                dropped = str(entry["history"].pop())
                entry["serving"] = entry["history"][-1]
                return dropped
            raise RegistryError(f"policy {policy!r} has no earlier version to roll back to")

        dropped = self._update_pointers(drop)
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

        The pointer move and the decision record are one conditional write of pointers.json, so a
        second decider, on this host or another, or a decider re-run after a crash, finds the recorded
        decision and gets it back unchanged (`first=False`) instead of deciding again."""

        def decide(pointers: dict[str, dict[str, Any]]) -> ExperimentRecord:
            entry = _entry(pointers, policy)
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
            return ExperimentRecord(**decided[experiment_id], first=first)

        record = self._update_pointers(decide)
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

        def record(pointers: dict[str, dict[str, Any]]) -> None:
            deployed = _entry(pointers, policy).setdefault("deployed", {})
            if deployment is None:
                deployed.pop(version, None)
            else:
                deployed[version] = asdict(deployment)

        self._update_pointers(record)

    def rollback_target(self, policy: str) -> str | None:
        """The version a rollback of the serving one would serve again."""
        history: list[str] = self.pointers().get(policy, {}).get("history", [])
        return history[-2] if len(history) > 1 else None

    # ---- conditional writes ----------------------------------------------------------------
    def _update_pointers(self, change: Callable[[dict[str, dict[str, Any]]], T]) -> T:
        """Apply `change` to the pointers and write them if nobody else wrote since they were read;
        otherwise read again and re-apply. `change` mutates only the dict it is given."""
        while True:
            stored = self.objects.read(POINTERS)
            pointers = {} if stored is None else json.loads(stored.data)
            result = change(pointers)
            data = _encode(pointers)
            if self.objects.create(POINTERS, data) if stored is None else self.objects.replace(POINTERS, data, stored.tag):
                return result

    def _read_manifest(self, kind: Kind, version: str) -> tuple[Manifest, dict[str, Any], str]:
        """The manifest, its stored document (with the file index of a remote version) and its tag."""
        found = self._stored_manifest(kind, version)
        if found is None:
            key = _manifest_key(kind, version)
            raise ModelLoadError(f"{self.objects.url}/{key}: no such {kind[:-1].replace('_', ' ')} version in the registry")
        return found

    def _stored_manifest(self, kind: Kind, version: str) -> tuple[Manifest, dict[str, Any], str] | None:
        """`_read_manifest`'s answer in one read, or None where the version does not exist (yet)."""
        key = _manifest_key(kind, version)
        stored = self.objects.read(key)
        if stored is None:
            return None
        try:
            document = json.loads(stored.data)
            fields = {k: v for k, v in document.items() if k != "files"}
            return Manifest(**fields), document, stored.tag
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelLoadError(f"{self.objects.url}/{key}: corrupt manifest ({exc})") from None

    def _update_manifest(self, kind: Kind, version: str, change: Callable[[Manifest], Manifest]) -> Manifest:
        while True:
            manifest, document, tag = self._read_manifest(kind, version)
            updated = change(manifest)
            if updated == manifest:
                return manifest
            if self.objects.replace(_manifest_key(kind, version), _encode({**document, **asdict(updated)}), tag):
                return updated


def _entry(pointers: dict[str, dict[str, Any]], policy: str) -> dict[str, Any]:
    return pointers.setdefault(policy, {"serving": None, "candidate": None, "history": []})


def _manifest_key(kind: Kind, version: str) -> str:
    return f"{kind}/{version}/{MANIFEST}"


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2).encode()
