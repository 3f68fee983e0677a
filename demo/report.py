"""The demo's report: the success metrics per round (reward-model accuracy > 85%,
policy reward +15%, positive feedback +20%), in the terminal and as HTML with plots (demo/report_page.py).

Figures come from what the system itself recorded (the trainer's published metrics, the decider's
ExperimentDecided with the per-user statistics it rested on); the hidden user preference is used only for the "ground
truth" column, which the system never sees (demo/truth.py): on held-out questions no user asked ("held out
(never asked)") and on questions like the users' ("on traffic"), apart. After a run with conversations
(`rlhf demo --conversations`) also on follow-up turns (`synthetic.follow_up_quality`: held-out
two-question conversations, the version's own first answer in the context).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demo.report_page import write_html
from demo.round_figures import RoundFigures
from demo.truth import adversaries_down_weighted, answers_of, true_quality

if TYPE_CHECKING:
    from trainers.preferences import Preference

TARGETS = {"reward_accuracy": 0.85, "policy_reward_gain": 0.15, "positive_lift": 0.20}


def figures_of(
    result: dict,
    truth: dict[str, float],
    on_policy: dict[str, float] | None = None,
    follow_ups: dict[str, float] | None = None,
    on_traffic: dict[str, float] | None = None,
    caught: dict[str, int] | None = None,
) -> RoundFigures:
    """The round's figures: the trainer's published metrics and the decider's recorded statistics,
    beside the ground truth of its versions (`truth` held out, `on_traffic`, on follow-up turns `follow_ups`)
    and the adversaries among the users its reward model down-weighted (`caught`, by candidate)."""
    metrics = result.get("published", {}).get("metrics", {})
    stats = result.get("ab", {}).get("statistics", {})
    serving = result.get("serving") or {}
    return RoundFigures(
        candidate=result["candidate"],
        decision=result["decision"],
        reward_accuracy=metrics.get("rm_eval.pairwise_accuracy"),
        reward_before=metrics.get("mean_reward_before"),
        reward_after=metrics.get("mean_reward_after"),
        control_rate=stats.get("positive_rate_control"),
        treatment_rate=stats.get("positive_rate_treatment"),
        lift=stats.get("lift"),
        lift_low=stats.get("lift_low"),
        lift_high=stats.get("lift_high"),
        users_control=stats.get("users_control"),
        users_treatment=stats.get("users_treatment"),
        decision_reason=result.get("ab", {}).get("reason", ""),
        true_quality_parent=truth.get(result.get("parent") or ""),
        true_quality_candidate=truth.get(result["candidate"]),
        traffic_parent=(on_traffic or {}).get(result.get("parent") or ""),
        traffic_candidate=(on_traffic or {}).get(result["candidate"]),
        follow_up_parent=(follow_ups or {}).get(result.get("parent") or ""),
        follow_up_candidate=(follow_ups or {}).get(result["candidate"]),
        reward_accuracy_recent=metrics.get("rm_eval.accuracy_recent"),
        reward_accuracy_on_policy=(on_policy or {}).get(result["candidate"]),
        disagreement=metrics.get("rm_eval.disagreement"),
        disagreement_ppo=metrics.get("disagreement_last"),
        kl_parent=metrics.get("kl_parent"),
        kl_base=metrics.get("kl_base"),
        gate_before=metrics.get("gate_reward_before"),
        gate_after=metrics.get("gate_reward_after"),
        history_events=metrics.get("rm_data.events.accepted"),
        seconds=result.get("seconds"),
        serving_seconds=serving.get("seconds"),
        serving_answers=serving.get("answers"),
        serving_tokens=serving.get("tokens"),
        reward_model_seconds=metrics.get("rm_train.seconds"),
        policy_seconds=metrics.get("wall_seconds"),
        ppo_seconds=metrics.get("train_seconds"),
        down_weighted_users=metrics.get("rm_trust.users_down_weighted"),
        down_weighted_share=metrics.get("rm_trust.feedback_share_down_weighted"),
        adversaries_down_weighted=(caught or {}).get(result["candidate"]),
        corrections_learned=metrics.get("corrections_kept"),
        corrections_not_learned=metrics.get("corrections_dropped"),
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def terminal_summary(rounds: list[RoundFigures], dashboard_url: str, html_path: Path, users: str = "") -> str:
    """The summary; `users` a line on who the simulated users were (none: the default ones)."""
    lines = [
        "",
        "rlhf demo: results per round (targets: reward-model accuracy >= 85%, policy reward +15%, positive feedback +20%)",
        *([f"  users: {users}"] if users else []),
        "  ground truth held out (never asked): on (app, object) combinations no user asked about; "
        "on traffic: on as many questions like the users'",
    ]
    if any(r.follow_up_parent is not None for r in rounds):
        lines.append(
            "  hidden user preference on first turns (held-out questions asked alone) and, apart, on follow-up turns "
            "(held-out two-question conversations)"
        )
    for n, r in enumerate(rounds, 1):
        interval = "n/a" if r.lift_low is None else f"[{r.lift_low:+.1%}, {r.lift_high:+.1%}]"
        lines += [
            f"  round {n}: {r.candidate} -> {r.decision.upper()}",
            f"    reward model held-out pairwise accuracy  {_num(r.reward_accuracy, '.1%')}",
            f"    policy mean reward (reward model)        {_num(r.reward_before)} -> {_num(r.reward_after)}  "
            f"({_pct(r.policy_reward_gain)})",
            f"    positive-feedback rate control/treatment {_num(r.control_rate)} / {_num(r.treatment_rate)}  "
            f"lift {_pct(r.lift)} {interval}"
            f"  (per user; {_num(r.users_control, '.0f')} / {_num(r.users_treatment, '.0f')} users)",
            "    decision                                 "
            + (
                "the gate rejected it before any user saw it"
                if r.decision == "rejected"
                else f"the decider: {r.decision} ({r.decision_reason or 'no reason recorded'})"
            ),
            f"    hidden user preference (ground truth)    held out (never asked) {_num(r.true_quality_parent)} -> "
            f"{_num(r.true_quality_candidate)}  (serving after the round: {_num(r.serving_truth)})",
            f"                                             on traffic             {_num(r.traffic_parent)} -> "
            f"{_num(r.traffic_candidate)}  (serving after the round: {_num(r.serving_traffic)})",
            *(
                [
                    f"    ... on follow-up turns                   {_num(r.follow_up_parent)} -> "
                    f"{_num(r.follow_up_candidate)}  (serving after the round: {_num(r.serving_follow_up)})"
                ]
                if r.follow_up_parent is not None or r.follow_up_candidate is not None
                else []
            ),
            f"    reward model on the newest answers       held-out newest pairs {_num(r.reward_accuracy_recent, '.1%')}, "
            f"parent's own answers {_num(r.reward_accuracy_on_policy, '.1%')} (ground truth); "
            f"trained on {_num(r.history_events, '.0f')} events",
            f"    ensemble disagreement / gate reward      {_num(r.disagreement)} "
            f"(PPO's last rollout {_num(r.disagreement_ppo)}); "
            f"gate {_num(r.gate_before)} -> {_num(r.gate_after)}",
            f"    KL per token to parent / to base         {_num(r.kl_parent)} / {_num(r.kl_base)}      "
            f"wall time {_num(r.seconds and r.seconds / 60, '.1f')} min",
            f"    stages                                   serving {_num(r.serving_seconds, '.0f')} s "
            f"({_num(r.serving_answers, '.0f')} answers, "
            f"{_num(r.serving_tokens and r.serving_seconds and r.serving_tokens / r.serving_seconds, '.0f')} "
            "tokens/s through the API), "
            f"reward model {_num(r.reward_model_seconds, '.0f')} s, policy job {_num(r.policy_seconds, '.0f')} s "
            f"(PPO {_num(r.ppo_seconds, '.0f')} s)",
            f"    feedback trust                           {_num(r.down_weighted_users, '.0f')} users down-weighted "
            f"({_num(r.down_weighted_share, '.0%')} of the feedback"
            + (f", {r.adversaries_down_weighted} of them adversarial" if r.adversaries_down_weighted is not None else "")
            + f"); corrections learned {_num(r.corrections_learned, '.0f')}, "
            f"not learned {_num(r.corrections_not_learned, '.0f')}",
        ]
    lines += [f"  report: {html_path}", f"  dashboard (while running): {dashboard_url}", ""]
    return "\n".join(lines)


def on_policy_accuracy(
    reward: Callable[[list[str], list[str]], list[float]],
    answer: Callable[[list[str], int], list[str]],
    held_out: list,
    preference: Preference | None = None,
) -> float | None:
    """How often a reward model orders two of a policy's own answers to a held-out question as the
    hidden preference does (pairs whose true gap is over 0.2): its accuracy where the next PPO
    update will search. `answer(queries, seed)` samples the policy."""
    from trainers.preferences import DEFAULT_PREFERENCE
    from trainers.synthetic import quality

    def truth(q: Any, a: str) -> float:
        return quality(q, a, preference or DEFAULT_PREFERENCE)

    first, second = (answer([q.text for q in held_out], seed) for seed in (10, 11))
    pairs = [(q, a, b) for q, a, b in zip(held_out, first, second, strict=True) if abs(truth(q, a) - truth(q, b)) > 0.2]
    if not pairs:
        return None
    ra, rb = (reward([q.text for q, *_ in pairs], [p[i] for p in pairs]) for i in (1, 2))
    return sum((x > y) == (truth(q, a) > truth(q, b)) for (q, a, b), x, y in zip(pairs, ra, rb, strict=True)) / len(pairs)


def reward_models_on_policy(
    registry_root: Path, results: list[dict], max_new_tokens: int, preference: str = "default"
) -> dict[str, float]:
    """Per round (keyed by candidate), its reward model's `on_policy_accuracy` on the parent's answers."""
    from assistant.service import load_version
    from registry.store import ModelRegistry
    from trainers.preferences import PREFERENCES
    from trainers.reward_model import RewardModel
    from trainers.synthetic import split_questions

    registry = ModelRegistry(registry_root)
    _, held_out = split_questions()
    out = {}
    for r in results:
        rm_version, parent = r.get("published", {}).get("reward_model_version"), r.get("parent")
        if not rm_version or not parent or not registry.exists("reward_models", rm_version):
            continue
        accuracy = on_policy_accuracy(
            RewardModel.load(registry.path("reward_models", rm_version) / "model").predict,
            answers_of(load_version(registry, parent), max_new_tokens),
            held_out,
            PREFERENCES[preference],
        )
        if accuracy is not None:
            out[r["candidate"]] = accuracy
    return out


def write_report(
    run_dir: Path,
    results: list[Any],
    elapsed_s: float,
    max_new_tokens: int,
    follow_ups: bool = False,
    population: str = "kind",
    preference: str = "default",
) -> str:
    """RUN/report.html and the terminal summary (returned) of a finished demo run; with `follow_ups`
    (a run with conversations) the ground truth on follow-up turns too. The ground truth is the
    users' own `preference` (a `trainers.preferences.PREFERENCES` name); other than the default users, the
    summary names them and counts the adversaries (RUN/run.json lists them)."""
    from registry.store import ModelRegistry
    from trainers.base_models import is_model_dir

    # Every candidate with weights is measured: one the gate rejected shows what the gate turned
    # away. One a guardrail failed is a manifest alone (never saved).
    registry_root = run_dir / "state" / "registry"
    registry = ModelRegistry(registry_root)
    saved = {r.candidate for r in results if is_model_dir(registry.path("policies", r.candidate))}
    versions = saved | {r.parent for r in results if r.parent}
    truth = true_quality(registry_root, versions, max_new_tokens, follow_ups, preference)
    dumped = [asdict(r) for r in results]
    on_policy = reward_models_on_policy(registry_root, dumped, max_new_tokens, preference)
    run_file = run_dir / "run.json"
    adversaries = json.loads(run_file.read_text()).get("adversaries", []) if run_file.exists() else []
    caught = adversaries_down_weighted(registry_root, dumped, set(adversaries)) if adversaries else {}
    rounds = [figures_of(r, truth.held_out, on_policy, truth.follow_ups, truth.on_traffic, caught) for r in dumped]
    html_path = run_dir / "report.html"
    dashboard = f"rerun `RLHF_HOME={run_dir}/state rlhf sink run` to browse the dashboard again"
    users = (
        f"the {population} population ({len(adversaries)} adversarial, listed in run.json), hidden preference {preference}"
        if (population, preference) != ("kind", "default")
        else ""
    )
    summary = terminal_summary(rounds, dashboard, html_path, users) + f"  wall time: {elapsed_s / 60:.1f} min\n"
    timeline_file = run_dir / "timeline.json"
    write_html(html_path, rounds, json.loads(timeline_file.read_text()) if timeline_file.exists() else [], summary)
    return summary
