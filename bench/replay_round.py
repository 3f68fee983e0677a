"""Would a round of a finished `rlhf demo` run have trained a better candidate with another policy
setting? Replays each round's policy job offline, on that run's own data: the round's parent
version, its reward model, and the feedback the sink wrote to ClickHouse up to the round's
trigger, once per value of one `policy.training` setting; the project's default is the baseline.

    python -m bench.replay_round runs/demo-X --vary epochs 5 20
    python -m bench.replay_round runs/demo-X --rounds 1 5 --vary demo_coef 0.5 2

The figure is the held-out hidden preference of each replayed candidate (what `report.html` shows
per version), beside the default's in the same run (a ratio). The feedback is cut by time, at the
trigger's timestamp: the job itself reads exact Kafka offset ranges, so a replay may see a few
events more or fewer than the round did. Every other setting is this environment's: a run made with
another `--policy` profile is replayed with that profile's RLHF_* variables exported. Needs the
run's state (registry, ClickHouse), no services.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC
from pathlib import Path

import torch

from assistant.answering import LoadedPolicy, load_version
from bench.policy_gain import quiet
from core.errors import GuardrailRejection
from core.learning_settings import PolicyTrainingSettings
from core.settings import load_settings
from demo.truth import held_out_quality
from registry.store import ModelRegistry
from schemas import FeedbackEvent
from trainers.dataset import split_policy_queries
from trainers.ensemble import EnsembleReward
from trainers.history import load_history
from trainers.optimise import optimise_policy
from trainers.policy import load_policy
from trainers.reward_model import RewardModel

FEEDBACK_COLUMNS = "event_id, interaction_id, user_id, query, response, model_version, feedback_type, rating, correction, ts"


def feedback_until(run_dir: Path, until) -> list[FeedbackEvent]:
    """The run's feedback as the sink stored it, up to `until`, oldest first."""
    import clickhouse_connect  # chdb, as the sink wrote it (analytics.clickhouse would migrate the schema)

    client = clickhouse_connect.get_client(interface="chdb", path=str(run_dir / "state" / "clickhouse"))
    rows = client.query(
        f"SELECT {FEEDBACK_COLUMNS} FROM rlhf.feedback FINAL WHERE ts <= %(until)s ORDER BY ts", parameters={"until": until}
    ).result_rows
    return [
        FeedbackEvent(
            event_id=e,
            interaction_id=i,
            user_id=u,
            query=q,
            response=r,
            model_version=v,
            feedback_type=t,
            rating=rating,
            correction=c or None,
            timestamp=ts.replace(tzinfo=UTC),
        )
        for e, i, u, q, r, v, t, rating, c, ts in rows
    ]


def round_inputs(run_dir: Path, registry: ModelRegistry, candidate: str) -> tuple[str, RewardModel, list[FeedbackEvent]]:
    """What the policy job of `candidate`'s round had: its parent version, its reward model, and
    the feedback stored up to its trigger."""
    manifest = registry.manifest("policies", candidate)
    assert manifest.reward_model_version is not None and manifest.parent_version is not None  # a trained version names both
    rm_dir = registry.path("reward_models", manifest.reward_model_version)
    trigger = next(t for t in load_history(rm_dir)[0] if t.trigger_id == manifest.trigger_id)
    return manifest.parent_version, RewardModel.load(rm_dir / "model"), feedback_until(run_dir, trigger.timestamp)


def replay(
    registry: ModelRegistry,
    parent: str,
    rm: RewardModel,
    events: list[FeedbackEvent],
    config: PolicyTrainingSettings,
    max_new_tokens: int,
    min_rating: int,
) -> dict[str, float | str]:
    """One round's policy job trained again from `parent` with `config`; the candidate's figures
    (its answers `max_new_tokens` long, as every version's are measured). A candidate a guardrail
    rejects is an outcome, as in the loop: its row says why, with no hidden preference."""
    train_queries, eval_queries = split_policy_queries(events)
    with tempfile.TemporaryDirectory() as out:
        started = time.monotonic()
        try:
            metrics = optimise_policy(
                "ppo",
                str(registry.path("policies", parent)),
                EnsembleReward(rm, config.uncertainty_penalty),
                train_queries,
                eval_queries,
                config,
                Path(out) / "policy",
                feedback_events=events,
                min_rating=min_rating,
                gate_fn=rm.gate_reward if rm.config.training.gate_head else None,
                original_path=str(registry.path("policies", "base")),
            )
        except GuardrailRejection as rejection:
            return {
                "hidden": float("nan"),
                "events": len(events),
                "seconds": time.monotonic() - started,
                "rejected": str(rejection),
            }
        lm, tokenizer = load_policy(str(Path(out) / "policy"))
        hidden = held_out_quality(LoadedPolicy("replayed", lm.eval(), tokenizer), max_new_tokens)
    return {
        "hidden": hidden,
        "events": len(events),
        "seconds": time.monotonic() - started,
        **{k: v for k, v in metrics.items() if isinstance(v, float)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a finished `rlhf demo` run directory (its result.json and state/)")
    parser.add_argument(
        "--vary",
        nargs="+",
        required=True,
        metavar=("KEY", "VALUE"),
        help="a policy.training setting and the values to replay with",
    )
    parser.add_argument(
        "--rounds", nargs="+", type=int, help="rounds to replay (default: every round whose candidate was trained)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    key, values = args.vary[0], args.vary[1:]
    settings = load_settings()  # as the trainer reads them: rlhf.yaml (or $RLHF_CONFIG) under RLHF_* variables
    default = getattr(settings.policy.training, key, None)
    if default is None or not values:
        parser.error(f"--vary: {key!r} is not a policy.training setting with a value, or no values were given")
    values = [v.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(v) for v in values]
    configs = {
        value: settings.policy.training.updated(**{key: value}) for value in (values if default in values else [default, *values])
    }
    torch.set_num_threads(args.threads)
    quiet()
    results = json.loads((args.run_dir / "result.json").read_text())
    registry = ModelRegistry(args.run_dir / "state" / "registry")
    max_new_tokens = configs[default].max_new_tokens
    print(
        f"{'round':>5} {key + ' (default ' + str(default) + ')':>34} {'hidden':>8} {'/ default':>10} {'parent':>8} "
        f"{'events':>7} {'demos':>6} {'PPO it.':>8} {'s':>5}"
    )
    for n, result in enumerate(results, start=1):
        candidate = result["candidate"]
        if (args.rounds and n not in args.rounds) or not registry.exists("policies", candidate):
            continue
        parent, rm, events = round_inputs(args.run_dir, registry, candidate)
        parent_hidden = held_out_quality(load_version(registry, parent), max_new_tokens)
        rows = {
            value: replay(registry, parent, rm, events, config, max_new_tokens, settings.feedback.min_rating)
            for value, config in configs.items()
        }
        default_hidden = float(rows[default]["hidden"])  # "hidden" is always a float (NaN when rejected)
        for value, row in rows.items():
            print(
                f"{n:>5} {value!s:>34} {row['hidden']:>8.3f} {float(row['hidden']) / default_hidden:>10.3f} "
                f"{parent_hidden:>8.3f} {row['events']:>7} "
                f"{row.get('demonstrations', 0):>6.0f} {row.get('iterations', 0):>8.0f} {row['seconds']:>5.0f}"
                + (f"  rejected: {row['rejected']}" if "rejected" in row else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
