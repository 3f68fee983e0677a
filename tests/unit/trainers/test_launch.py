"""The trainer job's data-parallel policy optimisation (trainers.launch): torchrun starts two gloo
processes of PPO on the micro policy; rank 0 forwards the progress, writes the version and
returns the metrics, as `optimise_policy` in the job's own process would."""

from __future__ import annotations

from pathlib import Path

from core.learning_settings import PolicyTrainingSettings
from tests.unit.trainers.fast import FAST
from tests.unit.trainers.test_distributed import _base, _train
from trainers.chat_format import Conversation, Prompt
from trainers.launch import RewardSpec, optimise_in_processes
from trainers.policy import load_policy
from trainers.synthetic import split_questions


def test_two_processes_train_and_save_one_version(micro_policy: str, tmp_path: Path):
    _train(_base(tmp_path / "tiny-bert"), tmp_path / "rm")
    train_questions, held_out = ([q.text for q in qs[:8]] for qs in split_questions())
    # a question in its conversation too: prompts travel to the processes whole
    train: list[Prompt] = [
        Conversation("And in Calendar?", (("user", "How do I share a list?"), ("assistant", "Open Lists."))),
        *train_questions[1:],
    ]
    seen: list[tuple] = []
    metrics = optimise_in_processes(
        2,
        "ppo",
        micro_policy,
        RewardSpec(str(tmp_path / "rm"), uncertainty_penalty=1.0, gate=True),
        train,
        held_out[:4],
        PolicyTrainingSettings(**FAST),
        tmp_path / "version",
        on_status=lambda *status: seen.append(status),
        min_rating=4,
    )
    assert metrics["iterations"] == FAST["epochs"] and metrics["algorithm"] == "ppo"
    assert {"mean_reward_before", "mean_reward_after", "gate_reward_after"} <= set(metrics)
    assert [s[1] for s in seen if s[0] == "progress"].count("ppo") == FAST["epochs"]  # once, from rank 0
    assert seen[-1][0] == "finished"
    model, _ = load_policy(str(tmp_path / "version"))  # written once, whole
    assert model is not None and not list(tmp_path.glob(".version*"))
