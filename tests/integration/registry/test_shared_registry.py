"""The registry shared by several hosts through an S3-compatible server (moto, on loopback).

Each "host" is a ModelRegistry with a cache of its own (another RLHF_HOME); they meet only in the
object store. The same races run against a local directory, today's single-host registry."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from devtools.s3_local import LocalS3
from registry.objects import Objects
from registry.store import Manifest, ModelRegistry, version_for

pytestmark = pytest.mark.integration
POLICY = "assistant"


@pytest.fixture(params=["s3", "local"])
def hosts(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ModelRegistry]:
    """A factory of registries on one shared location, each as a different host would open it."""
    if request.param == "s3":
        request.getfixturevalue("s3_environ")
        location = f"s3://rlhf/{uuid.uuid4().hex[:8]}"
    else:
        location = str(tmp_path / "shared")
    count = iter(range(100))
    return lambda: ModelRegistry(location, cache=tmp_path / f"host-{next(count)}")


class CountingWrites:
    """Counts the successful conditional writes of one key, to see how often a pointer changed."""

    def __init__(self, objects: Objects, key: str):
        self.objects, self.key, self.writes = objects, key, 0
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.objects, name)

    def create(self, key: str, data: bytes) -> bool:
        return self._count(key, self.objects.create(key, data))

    def replace(self, key: str, data: bytes, tag: str) -> bool:
        return self._count(key, self.objects.replace(key, data, tag))

    def _count(self, key: str, written: bool) -> bool:
        with self.lock:
            self.writes += written and key == self.key
        return written


def policy_files(micro_policy: str) -> Callable[[Path], None]:
    from trainers.policy import load_policy

    model, tokenizer = load_policy(micro_policy)  # once: loading is not thread-safe, saving is

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    return write


def candidate(version: str, write: Callable[[Path], object]) -> Callable[[Path], Manifest]:
    def build(directory: Path) -> Manifest:
        write(directory)
        return Manifest(version=version, kind="policies", policy=POLICY, status="candidate", parent_version="base")

    return build


def test_two_trainers_racing_one_trigger_make_one_version_and_one_pointer_change(hosts, micro_policy):
    first = hosts()
    first.register_base(POLICY, "base", policy_files(micro_policy))
    trainers = [hosts(), hosts()]
    counted = CountingWrites(trainers[0].objects, "pointers.json")
    for trainer in trainers:
        trainer.objects = counted
    version = version_for(POLICY, uuid.uuid4().hex)
    start, files = threading.Barrier(2), policy_files(micro_policy)

    def train(trainer: ModelRegistry) -> Manifest | None:  # the trainer job's publish-then-offer (consumers/trainer/job.py)
        def build(directory: Path) -> Manifest:
            start.wait()  # both have built before either publishes
            return candidate(version, files)(directory)

        manifest = trainer.publish("policies", version, build)
        if manifest is not None:
            trainer.offer_candidate(POLICY, version)
        return manifest

    with ThreadPoolExecutor(2) as pool:
        published = list(pool.map(train, trainers))
    assert sum(m is not None for m in published) == 1
    assert [m.version for m in first.versions("policies")] == ["base", version]
    assert counted.writes == 1 and first.candidate(POLICY) == version


def test_two_deciders_at_once_make_exactly_one_decision(hosts):
    setup = hosts()
    setup.register_base(POLICY, "base", lambda d: (d / "w").write_text("base"))
    setup.publish("policies", "v1", candidate("v1", lambda d: (d / "w").write_text("v1")))
    setup.offer_candidate(POLICY, "v1")
    deciders = [hosts() for _ in range(2)]
    start = threading.Barrier(2)

    def decide(args: tuple[ModelRegistry, str]) -> Any:
        decider, outcome = args
        start.wait()
        return decider.decide_experiment(POLICY, "exp:v1", "v1", outcome, f"{outcome} by this decider")

    with ThreadPoolExecutor(2) as pool:
        records = list(pool.map(decide, zip(deciders, ["promote", "rollback"], strict=True)))
    assert sorted(r.first for r in records) == [False, True]
    assert records[0].outcome == records[1].outcome and records[0].decided_at == records[1].decided_at
    winner = records[0].outcome
    entry = setup.pointers()[POLICY]
    assert entry["history"] == (["base", "v1"] if winner == "promote" else ["base"])
    assert entry["serving"] == ("v1" if winner == "promote" else "base") and entry["candidate"] is None
    assert setup.manifest("policies", "v1").status == ("promoted" if winner == "promote" else "rolled_back")


def test_a_reader_on_another_host_loads_the_promoted_version(hosts, micro_policy):
    from trainers.policy import load_policy

    trainer = hosts()
    trainer.register_base(POLICY, "base", policy_files(micro_policy))

    def changed(directory: Path) -> None:
        model, tokenizer = load_policy(micro_policy)
        with torch.no_grad():
            next(model.parameters()).add_(0.5)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    trainer.publish("policies", "v1", candidate("v1", changed))
    trainer.offer_candidate(POLICY, "v1")
    trainer.promote(POLICY, reason="won its experiment")

    reader = hosts()
    serving = reader.serving(POLICY)
    assert serving == "v1"
    model, _ = load_policy(str(reader.path("policies", serving)))
    expected, _ = load_policy(str(trainer.path("policies", "v1")))
    for (name, got), want in zip(model.state_dict().items(), expected.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    base, _ = load_policy(micro_policy)
    assert not torch.equal(next(model.parameters()), next(base.parameters()))


def test_a_crashed_publish_leaves_no_version_and_a_retry_publishes_it(hosts):
    registry = hosts()

    def crash(directory: Path) -> Manifest:
        (directory / "w").write_bytes(b"half")
        raise RuntimeError("killed mid-publish")

    with pytest.raises(RuntimeError):
        registry.publish("policies", "v1", crash)
    assert not hosts().exists("policies", "v1") and hosts().versions("policies") == []
    assert registry.publish("policies", "v1", candidate("v1", lambda d: (d / "w").write_bytes(b"whole"))) is not None
    assert (hosts().path("policies", "v1") / "w").read_bytes() == b"whole"


def test_many_hosts_changing_pointers_lose_no_change(hosts):
    setup = hosts()
    setup.register_base(POLICY, "base", lambda d: (d / "w").write_text("base"))
    registries = [hosts() for _ in range(4)]

    def deploy(i: int) -> None:
        from registry.store import Deployment

        registries[i % 4].record_deployment(POLICY, f"v{i}", Deployment(f"http://engine-{i}", f"v{i}", adapter=True))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(deploy, range(12)))
    assert sorted(setup.deployments(POLICY)) == sorted(f"v{i}" for i in range(12))


def test_a_remote_registry_names_what_it_cannot_do(tmp_path):
    from registry.objects import StorageError

    with pytest.raises(StorageError, match="conditional writes"):
        ModelRegistry("gs://bucket/registry", cache=tmp_path)


def test_files_are_cached_by_content(s3_environ: LocalS3, tmp_path: Path):
    location = f"s3://rlhf/{uuid.uuid4().hex[:8]}"
    writer = ModelRegistry(location, cache=tmp_path / "writer")
    for version in ("v1", "v2"):
        writer.publish("policies", version, candidate(version, lambda d: (d / "tokenizer.json").write_text("same")))
    reader = ModelRegistry(location, cache=tmp_path / "reader")
    one, two = (reader.path("policies", v) / "tokenizer.json" for v in ("v1", "v2"))
    assert one.read_text() == "same" and one.stat().st_ino == two.stat().st_ino  # one blob, linked twice
    assert len(list((tmp_path / "reader" / "blobs").iterdir())) == 1
