"""The demo's wiring of its processes: `--policy` profiles, who wins over whom, and the driver's
own settings, loaded from the same environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.settings import load_settings
from demo.driver import DemoPlan, demo_environment, profile_of


def environment(plan: DemoPlan) -> dict[str, str]:
    return demo_environment(plan)


def test_a_policy_profile_sets_its_model_settings_and_ab_horizon():
    env = environment(DemoPlan(policy="smollm2"))
    assert env["RLHF_POLICY__BASE_MODEL"] == "smollm2" and env["RLHF_POLICY__TRAINING__LORA_R"] == "16"
    assert float(env["RLHF_AB_TESTING__HORIZON_S"]) == profile_of("smollm2").ab_horizon_s > profile_of("tiny").ab_horizon_s
    tiny = environment(DemoPlan())
    assert tiny["RLHF_POLICY__BASE_MODEL"] == "tiny" and "RLHF_POLICY__TRAINING__LORA_R" not in tiny


def test_the_buffer_holds_two_triggers_worth_of_feedback():
    env = environment(DemoPlan(train_threshold=300))
    assert (env["RLHF_CONTINUOUS_LEARNING__TRAIN_THRESHOLD"], env["RLHF_CONTINUOUS_LEARNING__BUFFER_SIZE"]) == ("300", "600")


def test_the_users_variables_beat_the_profile_and_the_demos_wiring_beats_both(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RLHF_POLICY__TRAINING__LORA_R", "4")
    monkeypatch.setenv("RLHF_POLICY__BASE_MODEL", "some/hub-model")
    env = environment(DemoPlan(policy="smollm2", ab_horizon_s=90))
    assert env["RLHF_POLICY__TRAINING__LORA_R"] == "4" and env["RLHF_POLICY__BASE_MODEL"] == "smollm2"
    assert env["RLHF_AB_TESTING__HORIZON_S"] == "90"


def test_a_model_without_a_profile_gets_the_tiny_ones_budget():
    assert profile_of("/models/my-policy") == profile_of("tiny")
    assert environment(DemoPlan(policy="/models/my-policy"))["RLHF_POLICY__BASE_MODEL"] == "/models/my-policy"


def test_the_driver_loads_what_its_services_load_and_leaves_its_own_environment_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.chdir(tmp_path)  # no ./rlhf.yaml
    monkeypatch.delenv("RLHF_CONFIG", raising=False)
    monkeypatch.setenv("RLHF_POLICY__BASE_MODEL", "some/hub-model")
    before = dict(os.environ)
    settings = load_settings(None, environ=environment(DemoPlan(policy="smollm2")))
    assert (settings.policy.base_model, settings.policy.training.lora_r) == ("smollm2", 16)
    assert settings.kafka.topic_prefix == "demo."
    assert dict(os.environ) == before


def test_the_config_file_reaches_every_process():
    assert environment(DemoPlan(config=Path("/etc/rlhf.yaml")))["RLHF_CONFIG"] == "/etc/rlhf.yaml"


def test_the_demo_command_takes_a_population_and_a_preference_by_name():
    from rlhf.cli import build_parser

    args = build_parser().parse_args(["demo", "--population", "hostile", "--preference", "steps-first"])
    assert (args.population, args.preference) == ("hostile", "steps-first")
    assert (DemoPlan().population, DemoPlan().preference) == ("kind", "default")  # today's users, today's taste
    default = build_parser().parse_args(["demo"])
    assert (default.population, default.preference) == (None, None)  # DemoPlan's, then
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--population", "saints"])
