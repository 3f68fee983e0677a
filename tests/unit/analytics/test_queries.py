import re

import pytest

from analytics.errors import AnalyticsError, UnknownQueryError
from analytics.queries import QUERIES, get_query


def test_parameters_are_cast_to_their_default_types():
    q = get_query("positive_rate_over_time")
    assert q.bind({"bucket_s": "60"}) == {"experiment": "", "bucket_s": 60}
    with pytest.raises(AnalyticsError, match="no parameter"):
        q.bind({"bucket": "60"})
    with pytest.raises(AnalyticsError, match="bad parameter"):
        q.bind({"bucket_s": "minute"})


def test_unknown_query_lists_the_known_ones():
    with pytest.raises(UnknownQueryError, match="ab_users"):
        get_query("nope")


def test_every_placeholder_has_a_default():
    for q in QUERIES.values():
        placeholders = {p.split(":")[0] for p in re.findall(r"\{(\w+:[^}]+)\}", q.sql)}
        assert placeholders == set(q.defaults), q.name


@pytest.mark.parametrize(
    "name, given, expected",
    [
        ("feedback_volume", {"bucket_s": "0"}, "bucket_s must be between 1 and 31622400, got 0"),
        ("feedback_volume", {"bucket_s": "-1"}, "bucket_s must be between 1 and 31622400, got -1"),
        ("pii_found", {"bucket_s": "99999999999"}, "bucket_s must be between 1 and 31622400, got 99999999999"),
        ("training_runs", {"limit": "0"}, "limit must be between 1 and 100000, got 0"),
        ("variant_daily", {"experiment": "x" * 1001}, "experiment has 1001 characters, at most 1000"),
    ],
)
def test_a_parameter_out_of_bounds_is_refused_not_wrapped_or_failed_on(name, given, expected):
    """Issue 33, finding 3: bucket_s 0 or -1 was a ClickHouse error (a 500), 99999999999 a UInt32 wrapped to 2008."""
    with pytest.raises(AnalyticsError, match=re.escape(expected)):
        get_query(name).bind(given)
    assert get_query("feedback_volume").bind({"bucket_s": "31622400"}) == {"bucket_s": 31_622_400}
