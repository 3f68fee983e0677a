"""The cost model that bounds a shared batch (assistant/batch_costs.py), fed timings by hand."""

from __future__ import annotations

import pytest

from assistant.batch_costs import BatchCosts


def cost(costs: BatchCosts, n: int) -> float:
    line = costs.line()
    assert line is not None
    return line[0] + line[1] * n


def test_on_a_cpu_a_shared_batch_costs_at_most_the_allowed_slowdown_over_one_query():
    costs = BatchCosts(max_batch=32, slowdown=0.25)
    costs.observe(1, 0.061)  # the tiny policy on 2 cores (bench notes in the module docstring)
    costs.observe(32, 0.160)
    cap = costs.shared_cap()
    assert cap == 5
    assert cost(costs, cap) <= 1.25 * cost(costs, 1) < cost(costs, cap + 1)


def test_where_a_batch_costs_about_one_query_a_shared_batch_is_full():
    costs = BatchCosts(max_batch=32, slowdown=0.25)
    for n, seconds in [(1, 0.040), (8, 0.041), (32, 0.048)]:
        costs.observe(n, seconds)
    assert costs.shared_cap() == 32


def test_a_cost_that_falls_with_size_is_read_as_flat():
    costs = BatchCosts(max_batch=16, slowdown=0.0)
    costs.observe(2, 0.09)
    costs.observe(16, 0.05)
    assert costs.line() == pytest.approx((0.07, 0.0)) and costs.shared_cap() == 16


def test_until_two_sizes_are_timed_a_shared_batch_takes_half_of_max_batch():
    costs = BatchCosts(max_batch=32, slowdown=0.25)
    assert costs.shared_cap() == 16
    costs.observe(32, 0.160)
    costs.observe(32, 0.170)
    assert costs.line() is None and costs.shared_cap() == 16


def test_each_size_keeps_a_moving_average_that_follows_a_change_of_load():
    costs = BatchCosts(max_batch=8, slowdown=0.25)
    costs.observe(1, 1.0)
    for _ in range(10):
        costs.observe(1, 0.1)
    costs.observe(8, 0.1 + 0.7)
    a, b = costs.line() or (0.0, 0.0)
    assert a + b == pytest.approx(0.1 + 0.9 * 0.8**10, rel=1e-6) and b > 0
