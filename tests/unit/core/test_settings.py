from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import load_settings


def test_plan_shaped_yaml_loads(tmp_path):
    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text("rlhf:\n  policy:\n    training:\n      batch_size: 8\n  continuous_learning:\n    train_threshold: 50\n")
    s = load_settings(cfg)
    assert s.policy.training.batch_size == 8 and s.policy.training.mini_batch_size == 8
    assert s.continuous_learning.train_threshold == 50


def test_environment_overrides_file(tmp_path, monkeypatch):
    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text("rlhf:\n  policy:\n    training:\n      batch_size: 8\n")
    monkeypatch.setenv("RLHF_POLICY__TRAINING__BATCH_SIZE", "12")
    assert load_settings(cfg).policy.training.batch_size == 12


def test_bad_value_names_key_and_reason(tmp_path):
    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text("rlhf:\n  feedback:\n    collection_rate: 1.5\n  bogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert "feedback.collection_rate: Input should be less than or equal to 1 (got 1.5)" in str(info.value)
    assert "bogus: unknown key" in str(info.value)


def test_cross_field_rule_and_missing_file(tmp_path):
    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text("rlhf:\n  continuous_learning:\n    buffer_size: 10\n    train_threshold: 20\n")
    with pytest.raises(ConfigError, match="train_threshold \\(20\\) must not exceed buffer_size"):
        load_settings(cfg)
    cfg.write_text("rlhf:\n  policy:\n    training:\n      batch_size: 4\n")  # the trainer's rules hold at load time
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert str(info.value).endswith("policy.training: Value error, mini_batch_size (8) must not exceed batch_size (4)")
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("rlhf: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(tmp_path / "broken.yaml")


FIRST_CONFIG = Path(__file__).with_name("first_config.yaml")  # the project's original configuration block, verbatim


def test_the_first_config_block_loads_verbatim(capsys):
    s = load_settings(FIRST_CONFIG)
    assert s.policy.base_model == "microsoft/phi-2" and s.policy.training.epochs == 100  # `ppo:` is the old name of `policy:`
    assert s.reward_model.training.learning_rate == 2e-5 and s.feedback.collection_rate == 0.3
    assert [(v.name, v.model, v.weight) for v in s.ab_testing.variants] == [
        ("control", "serving", 1.0),
        ("variant_a", "candidate", 1.0),
    ]
    assert "feedback.storage ('data/feedback.jsonl') ignored" in capsys.readouterr().err


def test_a_disabled_switch_is_refused_not_ignored(tmp_path):
    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text("rlhf:\n  continuous_learning:\n    enabled: false\n")
    with pytest.raises(ConfigError, match="continuous_learning.enabled: only `true` is supported"):
        load_settings(cfg)
    cfg.write_text("rlhf:\n  ppo: {algorithm: grpo}\n  policy: {algorithm: ppo}\n")
    with pytest.raises(ConfigError, match="'ppo' and 'policy' both given"):
        load_settings(cfg)


def test_replicas_need_one_shared_feedback_secret(monkeypatch):
    monkeypatch.setenv("RLHF_ASSISTANT__REPLICAS", "2")
    with pytest.raises(ConfigError, match="assistant.feedback_secret: required with replicas 2"):
        load_settings()
    monkeypatch.setenv("RLHF_ASSISTANT__FEEDBACK_SECRET", "shared")
    assert load_settings().assistant.replicas == 2
