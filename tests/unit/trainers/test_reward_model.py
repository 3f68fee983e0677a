"""The reward model: its input and truncation, heads and rewards, atomic versions, and clear
errors for missing or corrupt model directories. The trained version comes from conftest.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from core.errors import ConfigError, ModelLoadError
from core.learning_settings import RewardTrainingSettings
from trainers.base_models import resolve_base_model
from trainers.chat_format import Conversation
from trainers.reward_config import RewardConfig
from trainers.reward_model import RewardModel, VersionExistsError, format_input, keep_response


def test_input_format_and_offline_encoder_name():
    assert format_input("q?", "a.") == "Query: q?\nResponse: a."
    assert (Path(resolve_base_model("minilm")) / "config.json").is_file()


def test_keep_response_cuts_the_prompt_from_the_left():
    prompt, response = [1, 2, 3, 4, 5, 6], [7, 8]
    assert keep_response(prompt, response, 10) == prompt + response  # fits: untouched
    assert keep_response(prompt, response, 5) == [4, 5, 6, 7, 8]  # the prompt's end and the whole response
    # A response too long for the budget keeps its start, and the prompt keeps a quarter of the budget.
    assert keep_response(prompt, list(range(10, 30)), 8) == [5, 6, 10, 11, 12, 13, 14, 15]
    assert keep_response([], list(range(10, 30)), 4) == [10, 11, 12, 13]


def test_truncation_keeps_the_response_or_cuts_the_end(tiny_base):
    long_query, answer = "please help me with this " * 40, "press the reset button"
    keep = RewardModel.create(
        RewardConfig(base_model=tiny_base, training=RewardTrainingSettings(max_length=24, truncation="keep_response"))
    )
    right = RewardModel.create(
        RewardConfig(base_model=tiny_base, training=RewardTrainingSettings(max_length=24, truncation="right"))
    )
    kept, cut = keep.encode([long_query], [answer])[0], right.encode([long_query], [answer])[0]
    assert len(kept) == len(cut) == 24
    assert str(keep.tokenizer.decode(kept, skip_special_tokens=True)).endswith("response : press the reset button")
    assert "press" not in right.tokenizer.decode(cut) and kept[0] == cut[0] and kept[-1] == cut[-1]  # [CLS] ... [SEP] both
    assert keep.encode(["q?"], ["a."]) == right.encode(["q?"], ["a."])  # short texts: the same ids either way


def test_truncation_drops_the_oldest_turns_and_keeps_the_newest_turn_and_the_response(tiny_base):
    conversation = Conversation(
        "And how do I undo that?",
        (
            ("user", "How do I archive an album in Photos?"),
            ("assistant", "Open Photos, go to Storage, select the album, then press Archive. " * 3),
            ("user", "How do I reset my password in Mail?"),
            ("assistant", "Open Mail, go to Security, then press Reset."),
        ),
        system="You are the support assistant of the Example suite.",
    )
    rm = RewardModel.create(RewardConfig(base_model=tiny_base, training=RewardTrainingSettings(max_length=48)))  # the default
    assert rm.config.training.truncation == "keep_response"
    ids = rm.encode([conversation], ["Press Restore in Mail's Security page."])[0]
    text = str(rm.tokenizer.decode(ids, skip_special_tokens=True))
    assert len(ids) == 48 and len(rm.encode([conversation.query], ["x"])[0]) < 48  # only the context made it long
    assert text.endswith(
        "response : open mail, go to security, then press reset. query : and how do i undo that? "
        "response : press restore in mail ' s security page."
    )  # the newest turn, the question and the whole response
    assert "photos" not in text and "example suite" not in text  # the oldest turn and the system prompt went first


def test_max_length_past_the_backbone_limit_is_a_config_error(tiny_base):
    with pytest.raises(ConfigError, match="max_length 4096 is past .* limit of 512 tokens"):
        RewardModel.create(RewardConfig(base_model=tiny_base, training=RewardTrainingSettings(max_length=4096)))


def test_saved_version_loads_and_predicts_the_same(trained_reward):
    rm, metrics, out = trained_reward.model, trained_reward.metrics, trained_reward.version_dir
    loaded = RewardModel.load(out)
    queries, responses = (
        ["How do I clear my cache in Maps?", "q"],
        ["Open Maps, go to Storage, select cache, then press Clear.", ""],
    )
    assert loaded.predict(queries, responses) == pytest.approx(rm.predict(queries, responses), abs=1e-5)
    assert loaded.predict_reward(queries[0], responses[0]) == pytest.approx(loaded.predict(queries, responses)[0], abs=1e-6)
    assert loaded.lineage["trigger_id"] == "t-1" and loaded.lineage["ranges"][0]["end"] == 80
    assert loaded.metrics["eval"] == metrics["eval"]
    assert loaded.config == rm.config
    assert loaded.predict([], []) == []


def test_the_heads_are_ensemble_members_then_a_gate_head(trained_reward):
    rm = trained_reward.model
    queries, responses = (
        ["How do I clear my cache in Maps?", "q"],
        ["Open Maps, go to Storage, select cache, then press Clear.", "x"],
    )
    heads = rm.head_scores(queries, responses)
    assert heads.shape == (2, rm.config.training.ensemble_members + 1) == (2, 5)
    assert rm.predict(queries, responses) == pytest.approx(heads[:, :4].mean(dim=1).tolist(), abs=1e-6)
    assert rm.gate_reward(queries, responses) == pytest.approx(torch.sigmoid(heads[:, 4].double()).tolist(), abs=1e-6)


def test_reward_is_the_sigmoid_of_the_score(trained_reward):
    rm = trained_reward.model
    queries, responses = (
        ["How do I clear my cache in Maps?", "q", "q"],
        ["Open Maps, go to Storage, select cache, then press Clear.", "", "x"],
    )
    rewards = rm.reward(queries, responses)
    assert rewards == pytest.approx([1 / (1 + math.exp(-x)) for x in rm.predict(queries, responses)], abs=1e-12)
    assert all(0.0 < r < 1.0 for r in rewards) and rm.reward([], []) == []


def test_versions_are_never_overwritten(trained_reward):
    rm, out = trained_reward.model, trained_reward.version_dir
    with pytest.raises(VersionExistsError, match="rm-1"):
        rm.save(out)


def test_a_crash_while_saving_leaves_no_version(trained_reward, tmp_path, monkeypatch):
    rm = trained_reward.model

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rm.tokenizer, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        rm.save(tmp_path / "rm-2")
    assert list(tmp_path.iterdir()) == []


def test_missing_model_directory_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match=f"{tmp_path / 'nope'}.*not found"):
        RewardModel.load(tmp_path / "nope")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_incomplete_model_directory_names_the_path_and_the_missing_files(trained_reward, tmp_path):
    broken = _copy(trained_reward.version_dir, tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    (broken / "metrics.json").unlink()
    with pytest.raises(ModelLoadError, match=f"{broken}: .*missing metrics.json, model.safetensors"):
        RewardModel.load(broken)


@pytest.mark.parametrize("damage", ["truncated weights", "garbage config", "garbage reward config"])
def test_corrupt_model_directory_names_the_path(trained_reward, tmp_path, damage):
    broken = _copy(trained_reward.version_dir, tmp_path / "broken")
    if damage == "truncated weights":
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage config":
        (broken / "config.json").write_text("{not json")
    else:
        (broken / "reward_config.json").write_text('{"epochs": -1}')
    with pytest.raises(ModelLoadError, match=f"{broken}: corrupt reward model"):
        RewardModel.load(broken)


def test_versions_saved_before_the_truncation_option_keep_cutting_the_end(trained_reward, tmp_path):
    old = _copy(trained_reward.version_dir, tmp_path / "old")
    saved = json.loads((old / "reward_config.json").read_text())
    flat = {**{k: v for k, v in saved.items() if k != "training"}, **saved["training"]}  # as 0.1.0 saved it
    del flat["truncation"]
    (old / "reward_config.json").write_text(json.dumps(flat))
    assert RewardModel.load(old).config.training.truncation == "right"
    kept = _copy(trained_reward.version_dir, tmp_path / "kept")
    (kept / "reward_config.json").write_text(json.dumps({**flat, "truncation": "keep_response"}))
    assert RewardModel.load(kept).config.training.truncation == "keep_response"  # a saved choice is kept


def test_missing_or_corrupt_base_model_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match=f"{tmp_path / 'nope'}: no base model here"):
        RewardModel.create(RewardConfig(base_model=str(tmp_path / "nope")))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=f"{corrupt}: cannot load base model"):
        RewardModel.create(RewardConfig(base_model=str(corrupt)))
