"""At-least-once plus the trigger id makes duplicates harmless (docs/decisions/0001 says why the app is
not exactly-once): a record the stream app processes again after a crash re-sends its trigger with
the same trigger_id, and the trainer takes a trigger id it has already published as done, so the
duplicate trains and publishes nothing (it only starts the candidate's experiment again, under the
same id, until that is decided: readers key on the id). No broker: the ledger on dicts, the training job on a
registry in tmp_path with an emitter that records what it would send."""

import threading

from consumers.emitter import EventEmitter
from consumers.trainer.job import TrainingJob
from core.settings import Settings
from registry.store import Manifest, ModelRegistry, version_for
from schemas.experiments import experiment_id_for
from tests.unit.streams.test_ledger import Run, fb


class RecordingEmitter(EventEmitter):
    def __init__(self):  # no producer: records what it would send
        self.statuses = []
        self.emitted = []

    def status(self, trigger, state, stage="", message="", metrics=None):
        self.statuses.append((trigger.trigger_id, state, message))

    def emit(self, topic, event, key=None):
        self.emitted.append((topic, event.experiment_id if topic == "experiments" else event))


def test_trigger_resent_after_a_crash_is_a_no_op_for_the_trainer(tmp_path):
    run = Run()
    first = [e for n in range(3) for e in run.feed(fb(n)).triggers]
    # The worker died before committing its input: the same internal records come again.
    again = [e for n in range(3) for e in run.feed(fb(n), offset=n).triggers]
    assert len(first) == len(again) == 1 and again[0].trigger_id == first[0].trigger_id

    trigger = first[0]
    settings = Settings(home=tmp_path)
    registry = ModelRegistry.of(settings)
    version = version_for(trigger.policy, trigger.trigger_id)

    def build(directory):
        (directory / "weights.bin").write_bytes(b"w")
        return Manifest(
            version=version,
            kind="policies",
            policy=trigger.policy,
            status="candidate",
            trigger_id=trigger.trigger_id,
            parent_version="base",
        )

    assert registry.publish("policies", version, build) is not None  # the first delivery was trained and published

    emitter = RecordingEmitter()
    TrainingJob(settings)(again[0], emitter, threading.Event())  # would replay from Kafka and train if it did not dedupe
    assert emitter.statuses == [(trigger.trigger_id, "finished", f"already published as {version}; nothing to do")]
    assert emitter.emitted == [("experiments", experiment_id_for(settings.ab_testing.experiment, version))]
    assert [m.version for m in registry.versions("policies")] == [version]
