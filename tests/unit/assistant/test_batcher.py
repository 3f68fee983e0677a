"""The micro-batcher without a model: a fake generate records the batches it is given."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from fastapi import HTTPException

from assistant.batcher import Batcher

V1, V2 = SimpleNamespace(version="v1"), SimpleNamespace(version="v2")


class Generate:
    """Answers `version: query`; holds each call until `release` is set, and fails on `boom`."""

    def __init__(self, held: bool = False):
        self.calls: list[tuple[str, list[str], object]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not held:
            self.release.set()

    def __call__(self, policy, queries, sampling):
        self.calls.append((policy.version, list(queries), sampling))
        self.entered.set()
        self.release.wait(10)
        if "boom" in queries:
            raise ValueError("the model fell over")
        return [f"{policy.version}: {q}" for q in queries]


def test_concurrent_requests_share_generate_calls():
    generate = Generate(held=True)  # the model is busy until every request has been submitted
    batcher = Batcher(generate, max_batch=32, wait_s=0.05, queue_size=100)
    with ThreadPoolExecutor(16) as pool:
        futures = list(pool.map(lambda n: batcher.submit(V1, [f"q{n}"], "s"), range(16)))
    generate.release.set()
    assert [f.result(10) for f in futures] == [[f"v1: q{n}"] for n in range(16)]
    assert len(generate.calls) <= 2 and sorted(q for _, qs, _ in generate.calls for q in qs) == sorted(f"q{n}" for n in range(16))


def test_requests_queued_during_a_generation_are_answered_together_grouped_by_version_and_sampling():
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=32, wait_s=0, queue_size=100)
    first = batcher.submit(V1, ["first"], "s")
    assert generate.entered.wait(10)  # the worker is busy: what comes now waits for the next batch
    futures = [batcher.submit(p, [q], s) for p, q, s in [(V1, "a", "s"), (V2, "b", "s"), (V1, "c", "s"), (V1, "d", "greedy")]]
    futures.append(batcher.submit(V2, ["e", "f"], "s"))
    generate.release.set()
    assert [f.result(10) for f in futures] == [["v1: a"], ["v2: b"], ["v1: c"], ["v1: d"], ["v2: e", "v2: f"]]
    assert first.result(10) == ["v1: first"]
    assert generate.calls[1:] == [("v1", ["a", "c"], "s"), ("v2", ["b", "e", "f"], "s"), ("v1", ["d"], "greedy")]


def test_max_batch_one_answers_one_request_per_call():
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=1, wait_s=0, queue_size=100)
    futures = [batcher.submit(V1, [f"q{n}"], "s") for n in range(4)]
    generate.release.set()
    assert [f.result(10) for f in futures] == [[f"v1: q{n}"] for n in range(4)]
    assert [q for _, q, _ in generate.calls] == [[f"q{n}"] for n in range(4)]


def test_a_full_queue_is_a_503():
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=1, wait_s=0, queue_size=2)
    batcher.submit(V1, ["generating"], "s")
    assert generate.entered.wait(10)
    waiting = [batcher.submit(V1, [f"q{n}"], "s") for n in range(2)]
    with pytest.raises(HTTPException) as err:
        batcher.submit(V1, ["one too many"], "s")
    assert err.value.status_code == 503 and "busy" in err.value.detail
    generate.release.set()
    assert [f.result(10) for f in waiting] == [["v1: q0"], ["v1: q1"]]


def test_a_failed_generation_reaches_every_request_of_its_batch_and_the_worker_goes_on():
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=32, wait_s=0, queue_size=100)
    batcher.submit(V1, ["first"], "s")
    assert generate.entered.wait(10)
    failing = [batcher.submit(V1, ["boom"], "s"), batcher.submit(V1, ["fine"], "s")]
    other = batcher.submit(V2, ["other"], "s")  # another version: its own call, unharmed
    generate.release.set()
    for future in failing:
        with pytest.raises(ValueError, match="fell over"):
            future.result(10)
    assert other.result(10) == ["v2: other"]
    assert batcher.submit(V1, ["later"], "s").result(10) == ["v1: later"]


def test_after_close_requests_are_refused_and_queued_ones_still_answered():
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=1, wait_s=0, queue_size=10)
    queued = [batcher.submit(V1, [f"q{n}"], "s") for n in range(3)]
    batcher.close()
    with pytest.raises(HTTPException) as err:
        batcher.submit(V1, ["late"], "s")
    assert err.value.status_code == 503
    generate.release.set()
    assert [f.result(10) for f in queued] == [[f"v1: q{n}"] for n in range(3)]


def test_one_callers_2000_queries_do_not_hold_back_another_callers_query():
    """Fairness per query (issue 33, finding 1): a query of another caller goes into the next batch, not after
    everything a flooding caller queued; the flood is answered a slice per batch."""
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=32, wait_s=0, queue_size=4096)
    first = batcher.submit(V1, ["first"], "s", client="flood")
    assert generate.entered.wait(10)  # generating: what comes now is queued
    flood = [batcher.submit(V1, [f"f{n}-{i}" for i in range(100)], "s", client="flood") for n in range(20)]
    other = batcher.submit(V1, ["mine"], "s", client="other")
    generate.release.set()
    assert other.result(10) == ["v1: mine"] and first.result(10) == ["v1: first"]
    assert [f.result(10) for f in flood] == [[f"v1: f{n}-{i}" for i in range(100)] for n in range(20)]
    batches = [queries for _, queries, _ in generate.calls[1:]]
    assert "mine" in batches[0] and all(len(b) <= 32 for b in batches)
    assert sum(len(b) for b in batches) == 2001


def test_callers_take_turns_query_by_query_and_a_caller_holds_at_most_its_share():
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=4, wait_s=0, queue_size=10, client_share=5)
    batcher.submit(V1, ["first"], "s", client="a")
    assert generate.entered.wait(10)
    a = batcher.submit(V1, ["a0", "a1", "a2", "a3", "a4"], "s", client="a")
    with pytest.raises(HTTPException) as err:
        batcher.submit(V1, ["a5"], "s", client="a")
    assert err.value.status_code == 429 and "at most 5" in err.value.detail
    b = batcher.submit(V1, ["b0", "b1"], "s", client="b")
    c = batcher.submit(V1, ["c0"], "s", client="c")
    generate.release.set()
    assert (a.result(10), b.result(10), c.result(10)) == (
        [f"v1: a{i}" for i in range(5)],
        ["v1: b0", "v1: b1"],
        ["v1: c0"],
    )
    assert [q for _, q, _ in generate.calls[1:]] == [["a0", "b0", "c0", "a1"], ["b1", "a2", "a3", "a4"]]


def test_a_cancelled_request_leaves_its_queries_unanswered():
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=2, wait_s=0, queue_size=100)
    batcher.submit(V1, ["first"], "s")
    assert generate.entered.wait(10)
    dropped = batcher.submit(V1, [f"d{n}" for n in range(10)], "s", client="gone")
    assert dropped.cancel()  # its HTTP request failed elsewhere (another version refused it)
    kept = batcher.submit(V1, ["kept"], "s", client="here")
    generate.release.set()
    assert kept.result(10) == ["v1: kept"]
    assert [q for _, q, _ in generate.calls[1:]] == [["kept"]]


def test_a_batch_waits_for_the_clients_the_previous_one_answered():
    """Queries queued during a generation wait `wait_s` after it, so a client answered by it (which asks
    again at once) joins them in one call rather than waiting for the next."""
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=32, wait_s=2.0, queue_size=100)
    first = batcher.submit(V1, ["first"], "s", client="a")
    assert generate.entered.wait(10)
    waiting = batcher.submit(V1, ["waiting"], "s", client="b")  # queued during the generation
    generate.release.set()
    assert first.result(10) == ["v1: first"]
    again = batcher.submit(V1, ["again"], "s", client="a")  # the answered client, back at once
    assert waiting.result(10) == ["v1: waiting"] and again.result(10) == ["v1: again"]
    assert [q for _, q, _ in generate.calls] == [["first"], ["waiting", "again"]]


def test_a_lone_client_is_not_kept_waiting():
    """Nothing expected (no batch within `wait_s`), or the one query the previous batch answered back:
    a batch starts at once, not `wait_s` later."""
    generate = Generate()
    generate.release.set()
    batcher = Batcher(generate, max_batch=32, wait_s=30.0, queue_size=100)
    for n in range(3):
        assert batcher.submit(V1, [f"q{n}"], "s", client="a").result(5) == [f"v1: q{n}"]


def test_a_batch_expects_the_queries_that_waited_through_the_previous_one_and_those_it_answered():
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=32, wait_s=30.0, queue_size=100)
    first = batcher.submit(V1, ["a0", "a1"], "s", client="a")
    assert generate.entered.wait(10)
    waiting = batcher.submit(V1, ["b0"], "s", client="b")  # queued during the generation: 2 + 1 expected next
    generate.release.set()
    assert first.result(10) == ["v1: a0", "v1: a1"]
    again = batcher.submit(V1, ["a2"], "s", client="a")
    time.sleep(0.2)
    assert not waiting.done()  # 2 of the 3 expected queries are in: the batch waits for the third
    last = batcher.submit(V1, ["a3"], "s", client="a")
    assert [f.result(5) for f in (waiting, again, last)] == [["v1: b0"], ["v1: a2"], ["v1: a3"]]
    assert [q for _, q, _ in generate.calls] == [["a0", "a1"], ["b0", "a2", "a3"]]


def test_while_two_clients_are_active_a_batch_holds_what_costs_the_allowed_slowdown():
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=32, wait_s=0, queue_size=200, shared_slowdown=0.25)
    assert batcher.costs is not None
    batcher.costs.observe(1, 0.061)  # what a CPU takes: a batch of 5 costs at most 1.25 x one query
    batcher.costs.observe(32, 0.160)
    batcher.submit(V1, ["first"], "s", client="flood")
    assert generate.entered.wait(10)
    flood = batcher.submit(V1, [f"f{n}" for n in range(40)], "s", client="flood")
    other = batcher.submit(V1, ["mine"], "s", client="other")
    generate.release.set()
    assert other.result(10) == ["v1: mine"] and len(flood.result(10)) == 40
    batches = [queries for _, queries, _ in generate.calls[1:]]
    assert "mine" in batches[0] and all(len(b) <= 5 for b in batches)


def test_a_lone_client_gets_full_batches_whatever_they_cost():
    generate = Generate(held=True)
    batcher = Batcher(generate, max_batch=32, wait_s=0, queue_size=200, shared_slowdown=0.25)
    assert batcher.costs is not None
    batcher.costs.observe(1, 0.061)
    batcher.costs.observe(32, 0.160)
    batcher.submit(V1, ["first"], "s", client="app")
    assert generate.entered.wait(10)
    queued = batcher.submit(V1, [f"q{n}" for n in range(40)], "s", client="app")
    generate.release.set()
    assert len(queued.result(10)) == 40
    assert [len(queries) for _, queries, _ in generate.calls[1:]] == [32, 8]
