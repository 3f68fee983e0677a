"""Micro-batching of generation, fair between clients: request threads queue their queries and wait;
one worker thread takes up to `max_batch` queries at a time, in turn from each client's queue (holding
the oldest for at most `wait_s` so that others can join), and answers each group with ONE generate call.

A batch starts once as many queries wait as are expected, or `wait_s` after the oldest query
arrived or after the previous batch was answered, whichever is later. Counting from the previous
batch lets the clients it just answered come back in time to join the next one: clients that send
their next request as soon as an answer ends (a streamed answer ends with its own row,
assistant/streaming.py) otherwise split into two batches that take turns, each waiting for the
other's whole generation. Expected: the queries that waited through the previous batch, plus those
it answered times the share of a batch's queries that came back within `wait_s` of it (averaged over
the batches so far, the past's weight halved each batch; 1 at first), at most `max_batch`. So clients
that ask again as soon as they are answered are waited for, clients that think between questions
are not, and a lone client's next question goes at once. A query that arrives later than `wait_s`
after the previous batch expects nobody and goes at once.

Fairness is per query, not per request: a client's queries wait in its own queue (a client is an API
key, or with none configured a client address: assistant/limits.py), and a batch takes one query
from each client in turn, so a request of another client is answered within the next batch or two
however many queries one client has queued: a 32-query /chat/batch, or many of them, is answered a
slice per batch beside everyone else's, not before them. Admission counts queries too: the queue
holds at most `queue_size` of them (a full queue refuses at once, 503, instead of letting latency
grow without bound) and one client at most `client_share` of them (429 past it), so one client
cannot fill the queue and turn everyone else away.

Fairness is also per cost: while more than one client is active (has queries waiting, or sent some
within `SHARED_WINDOW_S`), a batch holds only as many queries as cost at most `1 + shared_slowdown`
times one query (assistant/batch_costs.py, learned from the batches answered), so another client's
question waits for a short batch in flight and rides in a short one. A lone client, and any client
where a batch costs what one query costs (a GPU), still gets batches of `max_batch`.

A query is whatever the generate function answers (the service's: assistant/generation.py `Ask`,
a question in its conversation with its stop sequences and, streamed, where its text goes as it is
written). A group is the queries routed to the same policy version with the same sampling settings
(temperature, top_p, max_new_tokens); stop sequences are per query and split no group. Queries
that differ in sampling are answered by separate
calls rather than one call with the largest max_new_tokens cut down afterwards: truncating would
need the token boundaries back, and the callers that leave sampling alone (the chat page, the
demo, anyone using the defaults) still share a call. One worker means one generation at a time,
so torch keeps every core (or the GPU) for the batch instead of contending calls.

A generate call that raises fails every request with a query in its group with that error (their
queries not yet taken are dropped), and the worker goes on. A request cancelled while it waits (its
future cancelled: another of its versions failed, or a streaming client went away) has its queries
not yet taken dropped; a query already generating is stopped by its generate call (a streamed row
whose reader went away), and its answer, if any, is not delivered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException

from assistant.batch_costs import BatchCosts

log = logging.getLogger("rlhf.serve")
Generate = Callable[[Any, list[Any], Any], list[Any]]  # (policy, queries, sampling) -> answers
BUSY_RETRY_AFTER_S = "1"
# A client that sent queries this recently is still active: an interactive user asks again within
# seconds, and a longer memory would keep short batches for a client left alone.
SHARED_WINDOW_S = 2.0


@dataclass(eq=False)
class Job:
    """One request's queries for one version and sampling setting; answered once every query is."""

    policy: Any  # anything with a `version`: the answering LoadedPolicy
    queries: list[Any]
    sampling: Hashable
    client: Hashable = None
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)
    taken: int = 0  # queries handed to the worker so far
    answers: list[Any] = field(default_factory=list)
    missing: int = 0

    def __post_init__(self) -> None:
        self.answers = [None] * len(self.queries)
        self.missing = len(self.queries)

    @property
    def group(self) -> tuple[str, Hashable]:
        return self.policy.version, self.sampling


Item = tuple[Job, int]  # a job and the index of one of its queries


class Batcher:
    """`submit` queues a request's queries and returns the future of its answers (503 when the queue
    is full, 429 when the client holds its share of it). `shared_slowdown` None: batches of `max_batch`
    however many clients are active."""

    def __init__(
        self,
        generate: Generate,
        max_batch: int,
        wait_s: float,
        queue_size: int,
        client_share: int | None = None,
        shared_slowdown: float | None = None,
    ):
        self.generate = generate
        self.max_batch = max_batch
        self.costs = None if shared_slowdown is None else BatchCosts(max_batch, shared_slowdown)
        self.wait_s = wait_s
        self.queue_size = queue_size
        self.client_share = queue_size if client_share is None else client_share
        self._clients: OrderedDict[Hashable, deque[Job]] = OrderedDict()  # the order in which clients are served next
        self._queued = 0  # queries waiting, over all clients
        self._held: Counter[Hashable] = Counter()  # queries waiting per client
        self._sent_at: dict[Hashable, float] = {}  # when each client last submitted, within SHARED_WINDOW_S
        self._ready = threading.Condition()
        self._closed = False
        self._answered_at = 0.0  # when the previous batch was answered (time.monotonic)
        self._expected = 1  # queries the next batch may expect, within `wait_s` of the previous one (module docstring)
        self._answered = 0  # queries the previous batch answered
        self._returning = 0  # queries submitted within `wait_s` after it
        self._return_share = 1.0  # of a batch's queries, the share that came back within `wait_s`, averaged
        self._worker = threading.Thread(target=self._run, daemon=True, name="generate-batches")
        self._worker.start()

    def submit(self, policy: object, queries: list[Any], sampling: Hashable, client: Hashable = None) -> Future:
        job = Job(policy, list(queries), sampling, client)
        if not job.queries:
            job.future.set_result([])
            return job.future
        n = len(job.queries)
        with self._ready:
            if self._closed:
                raise HTTPException(503, "the assistant is shutting down")
            if self._queued + n > self.queue_size:
                raise HTTPException(
                    503,
                    f"the assistant is busy: {self._queued} queries are already waiting to be answered, at most "
                    f"{self.queue_size} (`assistant.queue_size`); retry shortly",
                    headers={"Retry-After": BUSY_RETRY_AFTER_S},
                )
            if self._held[client] + n > self.client_share:
                raise HTTPException(
                    429,
                    f"too many queries waiting from this client: {self._held[client]} queued, {n} more asked, at most "
                    f"{self.client_share} (half of `assistant.queue_size`); retry shortly",
                    headers={"Retry-After": BUSY_RETRY_AFTER_S},
                )
            self._clients.setdefault(client, deque()).append(job)
            self._sent_at[client] = now = time.monotonic()
            if now <= self._answered_at + self.wait_s:
                self._returning += n
            self._queued += n
            self._held[client] += n
            self._ready.notify()
        return job.future

    def close(self) -> None:
        """Stop the worker once what is queued has been answered."""
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            for items in _grouped(batch).values():
                self._answer(items)
            with self._ready:
                self._expect_after(len(batch))

    def _expect_after(self, answered: int) -> None:
        """A batch of `answered` queries is over: what the next one may expect (module docstring)."""
        if self._answered:  # how many of the previous batch's came back within the wait
            self._return_share = (self._return_share + min(1.0, self._returning / self._answered)) / 2
        self._answered, self._returning, self._answered_at = answered, 0, time.monotonic()
        self._expected = min(self.max_batch, self._queued + round(answered * self._return_share))

    def _take(self) -> list[Item] | None:
        """The next batch, None to stop: once the expected queries wait, or `wait_s` after the oldest query
        or the previous batch (module docstring), one query from each client in turn; a client that had
        a query taken goes to the back of the line."""
        with self._ready:
            while True:
                self._drop_failed()
                if not self._queued:
                    if self._closed:
                        return None
                    self._ready.wait()
                    continue
                oldest = min(jobs[0].queued_at for jobs in self._clients.values())
                remaining = max(oldest, self._answered_at) + self.wait_s - time.monotonic()
                # Past the wait after the previous batch, nobody it answered is coming back soon.
                expected = self._expected if oldest <= self._answered_at + self.wait_s else 1
                if self._queued >= expected or remaining <= 0 or self._closed:
                    break
                self._ready.wait(remaining)
            batch: list[Item] = []
            size = self._batch_size()
            while len(batch) < size and self._clients:
                client, jobs = next(iter(self._clients.items()))
                job = jobs[0]
                batch.append((job, job.taken))
                job.taken += 1
                self._queued -= 1
                self._held[client] -= 1
                if job.taken == len(job.queries):
                    jobs.popleft()
                if jobs:
                    self._clients.move_to_end(client)
                else:
                    del self._clients[client]
                    del self._held[client]
            return batch

    def _batch_size(self) -> int:
        """`max_batch`, or the cost-bounded cap while more than one client is active (module docstring)."""
        now = time.monotonic()
        for client in [c for c, at in self._sent_at.items() if now - at > SHARED_WINDOW_S]:
            del self._sent_at[client]
        if self.costs is None or len(self._sent_at.keys() | self._clients.keys()) < 2:
            return self.max_batch
        return self.costs.shared_cap()

    def _drop_failed(self) -> None:
        """Forget the queries of requests that already failed (a generate call answering some of them raised)."""
        for client, jobs in list(self._clients.items()):
            for job in [j for j in jobs if j.future.done()]:
                jobs.remove(job)
                left = len(job.queries) - job.taken
                self._queued -= left
                self._held[client] -= left
            if not jobs:
                del self._clients[client]
                del self._held[client]

    def _answer(self, items: list[Item]) -> None:
        policy, sampling = items[0][0].policy, items[0][0].sampling
        queries = [job.queries[i] for job, i in items]
        try:
            started = time.perf_counter()
            answers = self.generate(policy, queries, sampling)
            if len(answers) != len(queries):
                raise RuntimeError(f"generate returned {len(answers)} answers for {len(queries)} queries")
            if self.costs is not None:
                self.costs.observe(len(queries), time.perf_counter() - started)
        except Exception as exc:
            log.exception("generating %d answers with %s failed", len(queries), policy.version)
            for job in {id(job): job for job, _ in items}.values():
                _settle(job.future, exception=exc)
            return
        for (job, i), text in zip(items, answers, strict=True):
            job.answers[i] = text
            job.missing -= 1
            if not job.missing:
                _settle(job.future, result=list(job.answers))


def _settle(future: Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Deliver to a request that may have been cancelled meanwhile (by its own thread, at any moment)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass  # cancelled: nobody waits for it


def _grouped(batch: list[Item]) -> dict[tuple[str, Hashable], list[Item]]:
    groups: dict[tuple[str, Hashable], list[Item]] = {}
    for job, i in batch:
        groups.setdefault(job.group, []).append((job, i))
    return groups
