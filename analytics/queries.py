"""Every SQL query behind a dashboard panel or an analysis, by name, in one place.

`rlhf sql NAME [-p key=value]` runs one; the dashboard, `rlhf ab analyze`, the Grafana JSON
(docker/grafana/) and the benchmark use the same text. Parameters are ClickHouse server-side
placeholders (`{experiment:String}`), never string formatting; each query declares its defaults.
Event tables are read with FINAL so a redelivered event is counted once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import pandas as pd

from analytics.errors import AnalyticsError, UnknownQueryError


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    sql: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def bind(self, given: Mapping[str, str | int | float]) -> dict[str, Any]:
        """Defaults overridden by `given`, each cast to its default's type (CLI and URL values arrive as text)."""
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise AnalyticsError(f"query {self.name!r} has no parameter {sorted(unknown)}; it takes {sorted(self.defaults) or 'none'}")
        try:
            return {k: type(v)(given[k]) if k in given else v for k, v in self.defaults.items()}
        except ValueError as exc:
            raise AnalyticsError(f"query {self.name!r}: bad parameter value: {exc}") from None


# `experiment = ''` selects every experiment.
_EXPERIMENT_FILTER = "({experiment:String} = '' OR experiment = {experiment:String})"


def _metric(*keys: str) -> str:
    """The first of `keys` a status's metrics map holds, else NULL (a missing key would read as 0)."""
    return f"coalesce({', '.join(f'if(mapContains(metrics, {k!r}), metrics[{k!r}], NULL)' for k in keys)})"


# Trainers name the reward of their rollouts differently: PPO's progress reports `mean_score`,
# TRL's GRPO and RLOO log `reward`; all three report `kl`.
_REWARD = _metric("mean_score", "reward")
_KL = _metric("kl")

_QUERIES = (
    NamedQuery(
        "ab_summary",
        "Per variant of one experiment: users exposed (SRM), feedback counts and the moments the statistics need.",
        """
        WITH exp AS (
            SELECT variant, uniqExact(user_id) AS users_exposed, count() AS exposures, argMax(model_version, ts) AS exposed_model
            FROM exposures FINAL WHERE experiment = {experiment:String} GROUP BY variant
        ), fb AS (
            SELECT variant, count() AS feedback, sum(positive) AS positives,
                   countIf(feedback_type = 'thumbs_up') AS thumbs_up, countIf(feedback_type = 'thumbs_down') AS thumbs_down,
                   countIf(rating IS NOT NULL) AS ratings, avgIf(rating, rating IS NOT NULL) AS rating_mean,
                   varSampIf(rating, rating IS NOT NULL) AS rating_var, avg(reward) AS reward_mean, varSamp(reward) AS reward_var,
                   argMax(model_version, ts) AS feedback_model, argMax(policy, ts) AS policy
            FROM feedback FINAL WHERE experiment = {experiment:String} GROUP BY variant
        )
        SELECT if(exp.variant != '', exp.variant, fb.variant) AS variant,
               if(exposed_model != '', exposed_model, feedback_model) AS model_version, policy,
               users_exposed, exposures, feedback, positives, thumbs_up, thumbs_down, ratings, rating_mean, rating_var,
               reward_mean, reward_var
        FROM exp FULL OUTER JOIN fb ON exp.variant = fb.variant
        ORDER BY variant
        """,
        {"experiment": "policy-ab"},
    ),
    NamedQuery(
        "experiments",
        "Experiments seen in the exposures, most recently active first (the assistant names one per candidate).",
        """
        SELECT experiment, min(ts) AS first_exposure, max(ts) AS last_exposure, uniqExact(user_id) AS users,
               groupUniqArray(variant) AS variants
        FROM exposures FINAL WHERE experiment != '' GROUP BY experiment ORDER BY last_exposure DESC LIMIT {limit:UInt32}
        """,
        {"limit": 50},
    ),
    NamedQuery(
        "variant_daily",
        "The materialized view: per experiment, variant, model version and day, users exposed, interactions and feedback rates.",
        f"""
        SELECT experiment, variant, model_version, day,
               uniqExactMerge(users_exposed) AS users_exposed, sum(exposures) AS exposures, sum(interactions) AS interactions,
               sum(feedback) AS feedback, sum(thumbs_up) / nullIf(sum(feedback), 0) AS thumbs_up_rate,
               sum(thumbs_down) / nullIf(sum(feedback), 0) AS thumbs_down_rate, sum(positives) / nullIf(sum(feedback), 0) AS positive_rate,
               sum(rating_sum) / nullIf(sum(ratings), 0) AS mean_rating, sum(corrections) AS corrections,
               sum(reward_sum) / nullIf(sum(feedback), 0) AS mean_reward
        FROM variant_daily WHERE {_EXPERIMENT_FILTER}
        GROUP BY experiment, variant, model_version, day
        ORDER BY day, experiment, variant, model_version
        SETTINGS prefer_column_name_to_alias = 1  -- `sum(feedback) AS feedback`: inner names mean the stored columns
        """,
        {"experiment": ""},
    ),
    NamedQuery(
        "feedback_volume",
        "Feedback events per time bucket and type.",
        """
        SELECT toStartOfInterval(ts, toIntervalSecond({bucket_s:UInt32})) AS bucket, feedback_type, count() AS events
        FROM feedback FINAL GROUP BY bucket, feedback_type ORDER BY bucket, feedback_type
        """,
        {"bucket_s": 3600},
    ),
    NamedQuery(
        "positive_rate_over_time",
        "Share of positive feedback (thumbs up, or rating at or above feedback.min_rating) per time bucket and variant.",
        f"""
        SELECT toStartOfInterval(ts, toIntervalSecond({{bucket_s:UInt32}})) AS bucket, variant,
               count() AS feedback, avg(positive) AS positive_rate
        FROM feedback FINAL WHERE {_EXPERIMENT_FILTER}
        GROUP BY bucket, variant ORDER BY bucket, variant
        """,
        {"experiment": "", "bucket_s": 3600},
    ),
    NamedQuery(
        "time_span",
        "First and last feedback timestamps (the dashboard sizes its time buckets from them).",
        "SELECT min(ts) AS first, max(ts) AS last, count() AS rows FROM feedback",
    ),
    NamedQuery(
        "training_runs",
        "Training jobs: latest state and stage, last reported reward and KL.",
        f"""
        SELECT trigger_id, policy, min(ts) AS started, max(ts) AS last_update, argMax(state, ts) AS state,
               argMax(stage, ts) AS stage, count() AS updates,
               argMaxIf({_REWARD}, ts, {_REWARD} IS NOT NULL) AS reward, argMaxIf({_KL}, ts, {_KL} IS NOT NULL) AS kl
        FROM training_status FINAL GROUP BY trigger_id, policy ORDER BY started DESC LIMIT {{limit:UInt32}}
        """,
        {"limit": 20},
    ),
    NamedQuery(
        "training_curve",
        "Reward and KL reported over time by each training job.",
        f"""
        SELECT trigger_id, ts, {_REWARD} AS reward, {_KL} AS kl
        FROM training_status FINAL WHERE reward IS NOT NULL OR kl IS NOT NULL ORDER BY trigger_id, ts
        """,
    ),
    NamedQuery(
        "model_versions",
        "Published model versions and registry decisions, newest first.",
        """
        SELECT ts, policy, version, decision, parent_version, trigger_id, reason
        FROM model_published FINAL ORDER BY ts DESC LIMIT {limit:UInt32}
        """,
        {"limit": 50},
    ),
    NamedQuery(
        "table_counts",
        "Distinct rows per table (FINAL: after redelivery dedupe).",
        """
        SELECT * FROM (
            SELECT 'interactions' AS table, count() AS rows FROM interactions FINAL
            UNION ALL SELECT 'feedback', count() FROM feedback FINAL
            UNION ALL SELECT 'exposures', count() FROM exposures FINAL
            UNION ALL SELECT 'metrics', count() FROM metrics FINAL
            UNION ALL SELECT 'training_status', count() FROM training_status FINAL
            UNION ALL SELECT 'model_published', count() FROM model_published FINAL
        ) ORDER BY table
        """,
    ),
)

QUERIES: Mapping[str, NamedQuery] = MappingProxyType({q.name: q for q in _QUERIES})


def get_query(name: str) -> NamedQuery:
    try:
        return QUERIES[name]
    except KeyError:
        raise UnknownQueryError(f"no query named {name!r}; known: {', '.join(QUERIES)}") from None


class QueryRunner(Protocol):
    def query_df(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pd.DataFrame: ...


def run_query(runner: QueryRunner, name: str, params: Mapping[str, str | int | float] | None = None) -> pd.DataFrame:
    """Run a named query on a Warehouse (or anything with query_df) and return its frame."""
    query = get_query(name)
    return runner.query_df(query.sql, query.bind(params or {}))
