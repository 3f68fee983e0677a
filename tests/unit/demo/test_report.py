"""The demo report: ground truth for every version that has weights, plots and summary on disk."""

import shutil
from pathlib import Path

from registry.store import ModelRegistry
from demo.driver import RoundResult
from demo.report import write_report


def test_a_round_the_gate_rejected_is_reported_without_loading_its_weights(tmp_path: Path, micro_policy: str):
    registry = ModelRegistry(tmp_path / "state" / "registry")
    registry.register_base("assistant", "base", lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True))
    rejected = RoundResult("assistant-trg-1", "base", "rejected", {"metrics": {"mean_reward_before": 0.3, "mean_reward_after": 0.3}})

    summary = write_report(tmp_path, [rejected], elapsed_s=60.0, max_new_tokens=8)

    assert "assistant-trg-1" in summary and "rejected" in summary
    assert (tmp_path / "report.html").read_text().count("<img") == 3
