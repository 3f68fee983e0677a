"""The demo report: ground truth for every version that has weights (on held-out questions no user
asked, and on questions like theirs, apart), plots and summary on disk."""

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from demo.driver import RoundResult
from demo.report import figures_of, terminal_summary, write_report
from demo.truth import adversaries_down_weighted
from registry.store import Manifest, ModelRegistry
from trainers.trust import UserTrust, save_trust


def test_a_round_the_gate_rejected_is_reported_without_loading_its_weights(tmp_path: Path, micro_policy: str):
    registry = ModelRegistry(tmp_path / "state" / "registry")
    registry.register_base("assistant", "base", lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True))
    rejected = RoundResult(
        "assistant-trg-1", "base", "rejected", {"metrics": {"mean_reward_before": 0.3, "mean_reward_after": 0.3}}
    )

    summary = write_report(tmp_path, [rejected], elapsed_s=60.0, max_new_tokens=8)

    assert "assistant-trg-1" in summary and "rejected" in summary
    assert "users:" not in summary  # the default users go without saying
    assert (tmp_path / "report.html").read_text().count("<svg") == 4  # rounds, A/B, rewards, timeline


def test_a_candidate_the_gate_rejected_with_its_weights_saved_gets_its_hidden_preference_measured(
    tmp_path: Path, micro_policy: str
):
    registry = ModelRegistry(tmp_path / "state" / "registry")
    registry.register_base("assistant", "base", lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True))
    registry.publish(
        "policies",
        "v1",
        lambda d: (
            shutil.copytree(micro_policy, d, dirs_exist_ok=True),
            Manifest(version="v1", kind="policies", policy="assistant", status="rejected"),
        )[1],
    )
    rejected = RoundResult("v1", "base", "rejected", {"metrics": {"mean_reward_before": 0.3, "mean_reward_after": 0.2}})

    summary = write_report(tmp_path, [rejected], elapsed_s=60.0, max_new_tokens=8)

    line = next(x for x in summary.splitlines() if "hidden user preference" in x)
    parent, _measured, serving = re.search(r"(\d\.\d+) -> (\d\.\d+) +\(serving after the round: (\d\.\d+)\)", line).groups()  # type: ignore[union-attr]
    assert serving == parent  # the rejected candidate never served
    assert "held out (never asked)" in line
    traffic = next(x for x in summary.splitlines() if "on traffic" in x and "->" in x)
    assert re.search(r"on traffic +(\d\.\d+) -> (\d\.\d+) +\(serving after the round: \1\)", traffic)


def test_other_users_are_named_with_their_adversaries_counted(tmp_path: Path, micro_policy: str):
    registry = ModelRegistry(tmp_path / "state" / "registry")
    registry.register_base("assistant", "base", lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True))
    (tmp_path / "run.json").write_text(json.dumps({"adversaries": ["user-0-00007", "user-0-00042"]}))
    rejected = RoundResult("v1", "base", "rejected", {"metrics": {}})

    summary = write_report(tmp_path, [rejected], 60.0, 8, population="hostile", preference="concise")

    assert "users: the hostile population (2 adversarial, listed in run.json), hidden preference concise" in summary


def test_the_summary_says_whom_the_reward_model_down_weighted_and_how_many_were_adversaries(tmp_path: Path):
    registry = ModelRegistry(tmp_path)
    weights = {"user-0-00007": 0.0, "user-0-00042": 0.9, "user-0-00001": 0.1, "user-0-00002": 1.0}
    trust = UserTrust(weights, dict.fromkeys(weights, 5), {}, 0.7)  # one adversary and one other user caught
    manifest = Manifest(version="rm-1", kind="reward_models", policy="assistant", status="candidate")

    def build(directory: Path) -> Manifest:
        save_trust(directory, trust)
        return manifest

    registry.publish("reward_models", "rm-1", build)
    trusted = {"rm_trust.users_down_weighted": 2.0, "rm_trust.feedback_share_down_weighted": 0.5}
    metrics = {**trusted, "corrections_kept": 5.0, "corrections_dropped": 2.0}
    result = asdict(RoundResult("v1", "base", "rejected", {"metrics": metrics, "reward_model_version": "rm-1"}))

    caught = adversaries_down_weighted(tmp_path, [result], {"user-0-00007", "user-0-00042"})
    summary = terminal_summary([figures_of(result, {}, caught=caught)], "", tmp_path / "report.html")

    assert caught == {"v1": 1}
    assert "2 users down-weighted (50% of the feedback, 1 of them adversarial); corrections learned 5, not learned 2" in summary


def test_a_decided_round_reports_the_deciders_statistics(tmp_path: Path, micro_policy: str):
    registry = ModelRegistry(tmp_path / "state" / "registry")
    registry.register_base("assistant", "base", lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True))
    registry.publish(
        "policies",
        "v1",
        lambda d: (
            shutil.copytree(micro_policy, d, dirs_exist_ok=True),
            Manifest(version="v1", kind="policies", policy="assistant", status="candidate"),
        )[1],
    )
    ab = {
        "outcome": "promote",
        "reason": "positive rate up",
        "statistics": {
            "positive_rate_control": 0.4,
            "positive_rate_treatment": 0.5,
            "lift": 0.25,
            "lift_low": 0.1,
            "lift_high": 0.4,
            "users_control": 120,
            "users_treatment": 118,
        },
    }
    promoted = RoundResult("v1", "base", "promote", {"metrics": {"mean_reward_before": 0.3, "mean_reward_after": 0.5}}, ab)

    summary = write_report(tmp_path, [promoted], elapsed_s=60.0, max_new_tokens=8)

    assert "lift +25.0% [+10.0%, +40.0%]" in summary and "120 / 118 users" in summary
    assert "the decider: promote (positive rate up)" in summary
    assert "serving after the round: " in summary and "KL per token to parent / to base" in summary


def test_after_a_run_with_conversations_follow_up_turns_are_reported_apart(tmp_path: Path, micro_policy: str):
    registry = ModelRegistry(tmp_path / "state" / "registry")
    registry.register_base("assistant", "base", lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True))
    rejected = RoundResult("v1", "base", "rejected", {"metrics": {"mean_reward_before": 0.3, "mean_reward_after": 0.2}})
    (tmp_path / "timeline.json").write_text(
        '[{"t": 0, "feedback": 10, "positive": 4, "n": 10, "follow_up_positive": 1, "follow_up_n": 4},'
        ' {"t": 60, "feedback": 20, "positive": 5, "n": 10, "follow_up_positive": 2, "follow_up_n": 5}]'
    )

    summary = write_report(tmp_path, [rejected], elapsed_s=60.0, max_new_tokens=8, follow_ups=True)

    line = next(x for x in summary.splitlines() if "on follow-up turns" in x and "->" in x)
    assert re.search(r"(\d\.\d+) -> n/a +\(serving after the round: (\d\.\d+)\)", line)  # the base's, measured
    assert "first turns" in summary
    without = write_report(tmp_path, [rejected], elapsed_s=60.0, max_new_tokens=8)
    assert "follow-up" not in without  # the single-turn demo's report is as before
