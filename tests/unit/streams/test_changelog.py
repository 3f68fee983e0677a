"""The ledger's table views: writes go to the changelog partition they are routed to, a batch of
dedupe marks is one changelog record, and recovery opens that record into the per-event keys."""

from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest

from core.settings import Settings
from streams.app import build
from streams.changelog import MARKS_BATCH_PREFIX, ChangelogView, MarksView


@pytest.fixture
def streams(tmp_path):
    return build(Settings(home=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:1", "topic_prefix": "unit."}))


def test_writes_go_to_the_routed_partition_and_deletes_are_tombstones(streams):
    streams.state.send_changelog = MagicMock()
    view = ChangelogView(streams.state)
    with pytest.raises(RuntimeError, match="route_to"):
        view["policy:a"] = {"n": 1}
    view.route_to(2)
    view["policy:a"] = {"n": 1}
    del view["policy:a"]
    calls = [c.args for c in streams.state.send_changelog.call_args_list]
    assert calls == [(2, "policy:a", {"n": 1}), (2, "policy:a", None)] and "policy:a" not in view


def test_a_batch_of_marks_is_one_changelog_record_and_recovery_opens_it(streams):
    streams.seen.send_changelog = MagicMock()
    view = MarksView(streams.seen)
    view.route_to(1)
    view.update({"a/e1": [0, 5, 1.0], "a/e2": [1, 7, 2.0]})
    assert view["a/e1"] == [0, 5, 1.0] and len(view) == 2
    [(partition, key, value)] = [c.args for c in streams.seen.send_changelog.call_args_list]
    assert partition == 1 and key.startswith(MARKS_BATCH_PREFIX) and value == {"a/e1": [0, 5, 1.0], "a/e2": [1, 7, 2.0]}

    recovered = build(Settings(home=streams.settings.home, kafka={"bootstrap_servers": "127.0.0.1:1", "topic_prefix": "unit."}))
    events = [
        SimpleNamespace(key=key, value=value, message=SimpleNamespace(partition=1, value=b"{}")),
        SimpleNamespace(
            key="a/e0", value=[2, 3, 0.5], message=SimpleNamespace(partition=1, value=b"[]")
        ),  # a per-event record (layout 2)
    ]
    recovered.seen.apply_changelog_batch(events)  # type: ignore[arg-type]  # stand-ins for faust's events
    assert dict(recovered.seen.data) == {"a/e1": [0, 5, 1.0], "a/e2": [1, 7, 2.0], "a/e0": [2, 3, 0.5]}
    # faust's store keeps each key's partition privately, to drop the key with its partition.
    assert recovered.seen.data._key_partition == {"a/e1": 1, "a/e2": 1, "a/e0": 1}  # type: ignore[attr-defined]
