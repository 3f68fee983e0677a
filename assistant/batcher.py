"""Micro-batching of generation: request threads queue their queries and wait; one worker thread
takes everything waiting (up to `max_batch` requests, holding the first for at most `wait_s` so
that others can join), and answers each group of requests with ONE generate call.

A group is the requests routed to the same policy version with the same sampling settings
(temperature, top_p, max_new_tokens). Requests that differ in sampling are answered by separate
calls rather than one call with the largest max_new_tokens cut down afterwards: truncating would
need the token boundaries back, and the callers that leave sampling alone (the chat page, the
demo, anyone using the defaults) still share a call. One worker means one generation at a time,
so torch keeps every core (or the GPU) for the batch instead of contending calls.

A full queue refuses at once (503) instead of letting latency grow without bound. A generate
call that raises fails every request of its group with that error, and the worker goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

from fastapi import HTTPException

log = logging.getLogger("rlhf.serve")
Generate = Callable[[object, list[str], Hashable], list[str]]  # (policy, queries, sampling) -> answers


@dataclass
class Job:
    policy: object  # anything with a `version`: the answering LoadedPolicy
    queries: list[str]
    sampling: Hashable
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def group(self) -> tuple[str, Hashable]:
        return self.policy.version, self.sampling


class Batcher:
    """`submit` queues a request's queries and returns the future of its answers (503 when full)."""

    def __init__(self, generate: Generate, max_batch: int, wait_s: float, queue_size: int):
        self.generate = generate
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._worker = threading.Thread(target=self._run, daemon=True, name="generate-batches")
        self._worker.start()

    def submit(self, policy: object, queries: list[str], sampling: Hashable) -> Future:
        if self._closed:
            raise HTTPException(503, "the assistant is shutting down")
        job = Job(policy, list(queries), sampling)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise HTTPException(
                503,
                f"the assistant is busy: {self._queue.maxsize} requests are already waiting to be answered; retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        return job.future

    def close(self) -> None:
        """Stop the worker once what is queued has been answered."""
        self._closed = True
        self._queue.put(None)

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            for jobs in _grouped(batch).values():
                self._answer(jobs)

    def _take(self) -> list[Job] | None:
        """The next batch: the first job, then whatever else joins before its wait is up (a job that
        already waited through the previous batch takes only those already queued); None to stop."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = first.queued_at + self.wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # close(): answer this batch, then stop
                self._queue.put(None)
                break
            batch.append(job)
        return batch

    def _answer(self, jobs: list[Job]) -> None:
        queries = [q for job in jobs for q in job.queries]
        try:
            answers = self.generate(jobs[0].policy, queries, jobs[0].sampling)
            if len(answers) != len(queries):
                raise RuntimeError(f"generate returned {len(answers)} answers for {len(queries)} queries")
        except Exception as exc:
            log.exception("generating %d answers with %s failed", len(queries), jobs[0].policy.version)
            for job in jobs:
                job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            job.future.set_result(answers[start : start + len(job.queries)])
            start += len(job.queries)


def _grouped(batch: list[Job]) -> dict[tuple[str, Hashable], list[Job]]:
    groups: dict[tuple[str, Hashable], list[Job]] = {}
    for job in batch:
        groups.setdefault(job.group, []).append(job)
    return groups
