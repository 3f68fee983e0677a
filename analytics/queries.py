"""Every SQL query behind a dashboard panel or an analysis, by name, in one place.

`rlhf sql NAME [-p key=value]` runs one; the dashboard, `rlhf ab analyze`, the Grafana JSON
(docker/grafana/) and the benchmark use the same text. Parameters are ClickHouse server-side
placeholders (`{experiment:String}`), never string formatting; each query declares its defaults.
Event tables are read with FINAL so a redelivered event is counted once; the A/B analysis and the
positive rate read each answer's latest verdict (`_verdicts`), while volumes and the `variant_daily`
view count every verdict event (a user who changed their mind shows there as two).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import pandas as pd

from analytics.errors import AnalyticsError, UnknownQueryError
from analytics.tables import dead_letter_names_user


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    sql: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def bind(self, given: Mapping[str, str | int | float]) -> dict[str, Any]:
        """Defaults overridden by `given`, each cast to its default's type (CLI and URL values arrive as text)
        and checked against its bounds (`PARAMETER_BOUNDS`, `MAX_TEXT_PARAMETER`): AnalyticsError naming it."""
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise AnalyticsError(
                f"query {self.name!r} has no parameter {sorted(unknown)}; it takes {sorted(self.defaults) or 'none'}"
            )
        try:
            bound = {k: type(v)(given[k]) if k in given else v for k, v in self.defaults.items()}
        except ValueError as exc:
            raise AnalyticsError(f"query {self.name!r}: bad parameter value: {exc}") from None
        for key, value in bound.items():
            bounds = PARAMETER_BOUNDS.get(key)
            if isinstance(value, int) and bounds is not None and not bounds[0] <= value <= bounds[1]:
                raise AnalyticsError(f"query {self.name!r}: {key} must be between {bounds[0]} and {bounds[1]}, got {value}")
            if isinstance(value, str) and len(value) > MAX_TEXT_PARAMETER:
                raise AnalyticsError(f"query {self.name!r}: {key} has {len(value)} characters, at most {MAX_TEXT_PARAMETER}")
        return bound


# Integer parameters are UInt32 placeholders: a value outside these bounds is refused here, not
# wrapped by ClickHouse (bucket_s=99999999999 read as a 2008 date) or failed on by it (0, -1).
PARAMETER_BOUNDS: Mapping[str, tuple[int, int]] = MappingProxyType({"bucket_s": (1, 366 * 86_400), "limit": (1, 100_000)})
MAX_TEXT_PARAMETER = 1_000  # experiment ids and user ids are at most 128 characters


# `experiment = ''` selects every experiment.
_EXPERIMENT_FILTER = "({experiment:String} = '' OR experiment = {experiment:String})"


def _metric(*keys: str, column: str = "metrics") -> str:
    """The first of `keys` a Map column holds, else NULL (a missing key would read as 0)."""
    return f"coalesce({', '.join(f'if(mapContains({column}, {k!r}), {column}[{k!r}], NULL)' for k in keys)})"


# Trainers name the reward of their rollouts differently: PPO's progress reports `mean_score`,
# TRL's GRPO and RLOO log `reward`; all three report `kl`.
_REWARD = _metric("mean_score", "reward")
_KL = _metric("kl")


# The event ids of feedback rows a later event on the same answer replaces: per interaction and
# slot (a verdict, or a correction: schemas.events.FeedbackEvent.verdict_key) every row but the one
# with the greatest (ts, event_id). Only answers with more than one stored row are ranked, found by
# one hash aggregation over the interaction ids instead of a sort of the whole table (a hash
# collision, or a redelivered copy, only ranks an answer whose row is then its own latest).
_SUPERSEDED = (
    "(SELECT groupArray(event_id) FROM ("
    "SELECT event_id, row_number() OVER (PARTITION BY interaction_id, feedback_type = 'correction' "
    "ORDER BY ts DESC, event_id DESC) AS recency FROM feedback FINAL WHERE cityHash64(interaction_id) IN ("
    "SELECT cityHash64(interaction_id) AS answer FROM feedback GROUP BY answer HAVING count() > 1)"
    ") WHERE recency > 1)"
)


def _verdicts(where: str | None = None) -> str:
    """The feedback rows (matching `where`) that are each answer's latest verdict: a user who changed
    their mind (thumbs up, then down) counts once, with the later one; a correction is kept beside
    the verdict (schemas.events.FeedbackEvent.verdict_key, the trainers' rule). The rule sees all of
    an answer's events, before `where`, so any filter is sound. `superseded` is a scalar: ClickHouse
    computes it once per query, however often the query reads the verdicts."""
    condition = f"{where} AND " if where else ""
    return f"(WITH {_SUPERSEDED} AS superseded SELECT * FROM feedback FINAL WHERE {condition}event_id NOT IN superseded)"


_EXPERIMENT_VERDICTS = _verdicts("experiment = {experiment:String}")


def _decided(key: str) -> str:
    """A statistic (analytics.decision.Decision.statistics) of an experiment's decision; NULL while open."""
    return f"argMaxIf({_metric(key, column='statistics')}, ts, kind = 'decided') AS {key}"


_QUERIES = (
    NamedQuery(
        "ab_users",
        "Per variant of one experiment, summed over its users (the unit of randomisation): exposed users (SRM); users with "
        "feedback and the sums of each user's feedback, positives, thumbs-down, their squares and cross-products; the same "
        "for ratings over users who rated; and each user's pre-experiment positive rate (feedback before their first "
        "exposure) as the CUPED covariate: users with history, sum of rates, of squares, and their products with "
        "positives and feedback. Each answer counts its latest verdict (a changed mind once). "
        "analytics.decision reads these columns.",
        f"""
        WITH exposed AS (
            SELECT user_id, argMin(variant, ts) AS variant, min(ts) AS first_exposure, argMax(model_version, ts) AS model_version
            FROM exposures FINAL WHERE experiment = {{experiment:String}} GROUP BY user_id
        ), during AS (
            SELECT variant, user_id, count() AS f, sum(positive) AS p, countIf(feedback_type = 'thumbs_down') AS d,
                   countIf(rating IS NOT NULL) AS r, sum(ifNull(rating, 0)) AS s,
                   argMax(model_version, ts) AS model_version, argMax(policy, ts) AS policy
            FROM {_EXPERIMENT_VERDICTS} GROUP BY variant, user_id
        ), history AS (
            SELECT fb.user_id AS user_id, count() AS pre_f, sum(fb.positive) AS pre_p
            FROM {_verdicts()} AS fb INNER JOIN exposed ON fb.user_id = exposed.user_id
            WHERE fb.ts < exposed.first_exposure GROUP BY fb.user_id
        ), users AS (  -- one row per user and variant; without history h = x = 0
            SELECT during.*, toFloat64(pre_f > 0) AS h, if(pre_f > 0, pre_p / pre_f, 0) AS x
            FROM during LEFT JOIN history ON during.user_id = history.user_id
        ), per_variant AS (
            SELECT variant, count() AS users, sum(f) AS feedback, sum(f * f) AS feedback_sq,
                   sum(p) AS positives, sum(p * p) AS positives_sq, sum(p * f) AS positives_feedback,
                   sum(d) AS thumbs_down, sum(d * d) AS thumbs_down_sq, sum(d * f) AS thumbs_down_feedback,
                   countIf(r > 0) AS rating_users, sum(r) AS ratings, sum(r * r) AS ratings_sq,
                   sum(s) AS rating_sum, sum(s * s) AS rating_sum_sq, sum(s * r) AS rating_sum_ratings,
                   sum(h) AS history_users, sum(x) AS history_rate, sum(x * x) AS history_rate_sq,
                   sum(h * p) AS history_positives, sum(x * p) AS history_rate_positives,
                   sum(h * f) AS history_feedback, sum(x * f) AS history_rate_feedback,
                   argMax(model_version, f) AS feedback_model, argMax(policy, f) AS policy
            FROM users GROUP BY variant
        ), exposed_per_variant AS (
            SELECT variant, count() AS users_exposed, argMax(model_version, first_exposure) AS exposed_model
            FROM exposed GROUP BY variant
        )
        SELECT if(e.variant != '', e.variant, v.variant) AS variant,
               if(exposed_model != '', exposed_model, feedback_model) AS model_version, policy, users_exposed,
               users, feedback, feedback_sq, positives, positives_sq, positives_feedback,
               thumbs_down, thumbs_down_sq, thumbs_down_feedback, rating_users, ratings, ratings_sq,
               rating_sum, rating_sum_sq, rating_sum_ratings, history_users, history_rate, history_rate_sq,
               history_positives, history_rate_positives, history_feedback, history_rate_feedback
        FROM exposed_per_variant AS e FULL OUTER JOIN per_variant AS v ON e.variant = v.variant
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
        "experiment_lifecycle",
        "Experiments from the experiments topic, latest started first: versions compared, state (open, or the "
        "decision's outcome), what serves since, and the decision's lift with its interval and always-valid p-value.",
        f"""
        SELECT experiment_id, any(policy) AS policy, minIf(ts, kind = 'started') AS started,
               anyIf(control_version, kind = 'started') AS control_version,
               anyIf(treatment_version, kind = 'started') AS treatment_version,
               if(countIf(kind = 'decided') > 0, argMaxIf(outcome, ts, kind = 'decided'), 'open') AS state,
               if(countIf(kind = 'decided') > 0, maxIf(ts, kind = 'decided'), NULL) AS decided,
               argMaxIf(serving_version, ts, kind = 'decided') AS serving_version,
               {_decided("lift")}, {_decided("lift_low")}, {_decided("lift_high")}, {_decided("sequential_p")},
               {_decided("users_control")}, {_decided("users_treatment")}, argMaxIf(reason, ts, kind = 'decided') AS reason
        FROM experiments FINAL GROUP BY experiment_id ORDER BY started DESC LIMIT {{limit:UInt32}}
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
               sum(thumbs_down) / nullIf(sum(feedback), 0) AS thumbs_down_rate,
               sum(positives) / nullIf(sum(feedback), 0) AS positive_rate,
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
        "Share of positive feedback (thumbs up, or rating at or above feedback.min_rating; each answer's latest verdict) "
        "per time bucket and variant.",
        f"""
        SELECT toStartOfInterval(ts, toIntervalSecond({{bucket_s:UInt32}})) AS bucket, variant,
               count() AS feedback, avg(positive) AS positive_rate
        FROM {_verdicts(_EXPERIMENT_FILTER)}
        GROUP BY bucket, variant ORDER BY bucket, variant
        """,
        {"experiment": "", "bucket_s": 3600},
    ),
    NamedQuery(
        "positive_rate_by_turn",
        "Share of positive feedback (each answer's latest verdict) per model version and variant, first turns of a "
        "conversation (turn_index 0; every version 1 event) apart from follow-ups (turn_index > 0), with how many of each.",
        f"""
        SELECT model_version, variant,
               countIf(turn_index = 0) AS first_turn_feedback, avgIf(positive, turn_index = 0) AS first_turn_positive_rate,
               countIf(turn_index > 0) AS follow_up_feedback, avgIf(positive, turn_index > 0) AS follow_up_positive_rate
        FROM {_verdicts(_EXPERIMENT_FILTER)}
        GROUP BY model_version, variant ORDER BY model_version, variant
        """,
        {"experiment": ""},
    ),
    NamedQuery(
        "conversation",
        "One conversation as stored, turn by turn: its interactions and the feedback on them, each with the turns before "
        "it (context, JSON) and their size. A version 1 event's conversation is its interaction id.",
        """
        SELECT * FROM (
            SELECT 'interaction' AS row, turn_index, ts, interaction_id, '' AS event_id, model_version, variant,
                   '' AS feedback_type, query, response, context_turns, context_chars, context
            FROM interactions FINAL WHERE conversation_id = {conversation:String}
            UNION ALL
            SELECT 'feedback', turn_index, ts, interaction_id, event_id, model_version, variant,
                   feedback_type, query, response, context_turns, context_chars, context
            FROM feedback FINAL WHERE conversation_id = {conversation:String}
        ) ORDER BY turn_index, row DESC, ts LIMIT {limit:UInt32}
        """,
        {"conversation": "", "limit": 200},
    ),
    NamedQuery(
        "user_rows",
        "Rows each table holds for one user, dead letters naming them included: what `rlhf privacy forget` must bring to 0.",
        f"""
        SELECT 'interactions' AS table, count() AS rows FROM interactions WHERE user_id = {{user:String}}
        UNION ALL SELECT 'feedback', count() FROM feedback WHERE user_id = {{user:String}}
        UNION ALL SELECT 'exposures', count() FROM exposures WHERE user_id = {{user:String}}
        UNION ALL SELECT 'dead_letters', count() FROM dead_letters WHERE {dead_letter_names_user("{user:String}")}
        UNION ALL SELECT 'erasures', count() FROM erasures WHERE user_id = {{user:String}}
        """,
        {"user": ""},
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
        "pii_found",
        "PII found in feedback (and redacted, or dropped to the DLQ, per privacy.mode), per type and time bucket, "
        "from the stream app's windows.",
        """
        SELECT toStartOfInterval(window_start, toIntervalSecond({bucket_s:UInt32})) AS bucket, pii_type, sum(found) AS found
        FROM (SELECT window_start, pii FROM metrics FINAL) ARRAY JOIN mapKeys(pii) AS pii_type, mapValues(pii) AS found
        GROUP BY bucket, pii_type ORDER BY bucket, pii_type
        """,
        {"bucket_s": 3600},
    ),
    NamedQuery(
        "dead_letters_by_topic",
        "Dead letters per DLQ and origin topic: how many, the latest reason, when.",
        """
        SELECT dlq, origin_topic, count() AS letters, argMax(reason, ts) AS latest_reason, max(ts) AS latest
        FROM dead_letters FINAL GROUP BY dlq, origin_topic ORDER BY letters DESC
        """,
    ),
    NamedQuery(
        "consumer_lag",
        "Each consumer group's latest sampled lag per topic (records behind the end), as the sink last saw it.",
        """
        SELECT consumer_group, topic, argMax(lag, ts) AS lag, argMax(committed_offset, ts) AS committed,
               argMax(end_offset, ts) AS end, max(ts) AS sampled
        FROM consumer_lag GROUP BY consumer_group, topic ORDER BY consumer_group, topic
        """,
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
            UNION ALL SELECT 'experiments', count() FROM experiments FINAL
            UNION ALL SELECT 'dead_letters', count() FROM dead_letters FINAL
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
