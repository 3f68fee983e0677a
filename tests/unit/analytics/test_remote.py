"""Reaching the warehouse's owner: with embedded chdb the A/B report comes from the sink's dashboard,
and a missing sink is a clear project error, never an attempt to open the sink's path."""

import pytest

from analytics.errors import OwnerUnreachableError
from analytics.remote import ab_path, ab_report
from core.errors import RlhfError
from core.settings import load_settings
from devtools.kafka_local import free_port


def test_ab_report_without_a_sink_says_what_to_start(tmp_path):
    settings = load_settings(None, home=tmp_path, clickhouse={"dashboard_port": free_port()})
    with pytest.raises(OwnerUnreachableError, match="rlhf sink run") as info:
        ab_report(settings, "policy-ab:v2")
    assert isinstance(info.value, RlhfError) and not settings.clickhouse_path.exists()


def test_ab_path_quotes_the_experiment():
    assert ab_path("policy-ab:v 2") == "/api/ab?experiment=policy-ab%3Av+2" and ab_path(None) == "/api/ab"
