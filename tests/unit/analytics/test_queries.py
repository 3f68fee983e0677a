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
