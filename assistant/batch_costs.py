"""What a batch of n queries costs to generate, learned from the batches answered, and the largest
batch that may run while several clients share the assistant (issue 33).

On a GPU a batch of 32 costs about what one query costs, so batching is free for everyone. On a CPU
it is not (the tiny policy on 2 cores: 61 ms for one query, 160 ms for 32): a client that keeps 32
queries queued makes everyone else's answer wait for its batch in flight, then ride in a batch of
32. So while more than one client is active, a batch holds at most as many queries as cost
`1 + slowdown` times one query, by a straight-line fit (cost = a + b x n) of what each size took,
averaged per size. Where the cost is flat (b ~ 0) the cap is the batcher's `max_batch`: nothing is
lost. Until two sizes have been timed the slope is unknown, and a shared batch takes half of
`max_batch`, which times a second size.
"""

from __future__ import annotations

ALPHA = 0.2  # weight of a new timing in its size's average: a few batches follow a change of load


class BatchCosts:
    def __init__(self, max_batch: int, slowdown: float):
        self.max_batch = max_batch
        self.slowdown = slowdown
        self._seconds: dict[int, float] = {}  # size -> moving average of a generate call's duration

    def observe(self, size: int, seconds: float) -> None:
        """A generate call of `size` queries took `seconds`."""
        last = self._seconds.get(size)
        self._seconds[size] = seconds if last is None else last + ALPHA * (seconds - last)

    def line(self) -> tuple[float, float] | None:
        """(a, b) of cost = a + b x size, by least squares over the sizes timed; None before two sizes."""
        if len(self._seconds) < 2:
            return None
        sizes, costs = list(self._seconds), list(self._seconds.values())
        mean_n, mean_c = sum(sizes) / len(sizes), sum(costs) / len(costs)
        spread = sum((n - mean_n) ** 2 for n in sizes)
        b = max(0.0, sum((n - mean_n) * (c - mean_c) for n, c in zip(sizes, costs, strict=True)) / spread)
        return mean_c - b * mean_n, b

    def shared_cap(self) -> int:
        """The most queries a batch may hold while several clients are active (module docstring)."""
        fit = self.line()
        if fit is None:
            return max(1, self.max_batch // 2)
        a, b = fit
        if b * self.max_batch <= self.slowdown * max(a + b, 1e-9):
            return self.max_batch  # even a full batch costs no more than the allowed slowdown
        # a + b n <= (1 + slowdown)(a + b)  <=>  n <= 1 + slowdown (1 + a / b); a is at least 0 here
        return min(self.max_batch, max(1, int(1 + self.slowdown * (1 + max(a, 0.0) / b))))
