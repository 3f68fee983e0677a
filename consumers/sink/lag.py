"""Consumer lag of every group of the loop, sampled by the sink into ClickHouse (`consumer_lag`),
so the dashboard shows who is behind without a Kafka client of its own.

Which group reads which topic comes from the topic registry (schemas/topics.py): a process's group
is `CONSUMER_GROUPS[process]`, its topics those whose `consumers` name it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.settings import Settings
from schemas.topics import CONSUMER_GROUPS, TOPICS, group_id
from sdk.admin import group_progress

SAMPLE_EVERY_S = 15.0  # often enough for a dashboard, rare enough to cost nothing next to the batches


def lag_rows(settings: Settings) -> list[dict[str, Any]]:
    """One row per (group, topic): committed offsets, end offsets and their difference, summed over partitions."""
    k, now, rows = settings.kafka, datetime.now(UTC), []
    for process, group in CONSUMER_GROUPS.items():
        for name in (spec.name for spec in TOPICS.values() if process in spec.consumers):
            progress = group_progress(k, group_id(k.topic_prefix, group), [name])
            rows.append(
                {
                    "consumer_group": group,
                    "topic": name,
                    "committed_offset": progress.committed,
                    "end_offset": progress.end,
                    "lag": progress.lag,
                    "ts": now,
                }
            )
    return rows
