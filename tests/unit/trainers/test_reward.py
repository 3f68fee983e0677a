"""Reward model: losses and helpers on literal tensors, a smoke train on a tiny local encoder,
atomic versions, and clear errors for missing or corrupt model directories."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from core.errors import ConfigError, ModelLoadError, TrainingError
from core.settings import Settings
from trainers.base_models import resolve_base_model
from trainers.batching import length_batches, pad_batch
from trainers.reward import (
    RewardModel,
    VersionExistsError,
    example_weights,
    format_input,
    keep_response,
    pairwise_loss,
    pointwise_loss,
    roc_auc,
    train_reward_model,
)
from trainers.reward_config import RewardConfig
from trainers.synthetic import feedback_events, split_questions


def test_pairwise_loss_is_bradley_terry():
    loss = pairwise_loss(torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0]))
    expected = (math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.exp(2))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_pointwise_loss_is_bce_on_the_reward_as_logit():
    loss = pointwise_loss(torch.tensor([0.0, 2.0, -3.0]), torch.tensor([1.0, 0.0, 0.0]))
    expected = (math.log(2) + math.log1p(math.exp(2)) + math.log1p(math.exp(-3))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_roc_auc_counts_ordered_pairs_and_ties_half():
    assert roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 1], [0.1, 0.2]) is None


def test_pad_batch_pads_to_the_batch_longest_only():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_length_batches_cover_every_example_once_with_similar_lengths():
    lengths = [random.Random(i).randrange(5, 100) for i in range(1000)]
    batches = length_batches(lengths, 16, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches of 16 would spread ~80 tokens


def test_input_format_and_offline_encoder_name():
    assert format_input("q?", "a.") == "Query: q?\nResponse: a."
    assert (Path(resolve_base_model("minilm")) / "config.json").is_file()


def test_config_defaults_follow_settings():
    s = Settings(
        reward_model={"base_model": "some/hub-id", "training": {"epochs": 7, "eval_fraction": 0.3}}, feedback={"min_rating": 3}
    )
    cfg = RewardConfig.from_settings(s, batch_size=4)
    assert (cfg.base_model, cfg.epochs, cfg.eval_fraction, cfg.min_rating, cfg.batch_size) == ("some/hub-id", 7, 0.3, 3, 4)
    assert RewardConfig().epochs == Settings().reward_model.training.epochs


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-wide BERT with MiniLM's vocabulary, saved locally: a "local path" base model."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def trained(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[RewardModel, dict, Path, list]:
    train_questions, _ = split_questions()
    events = feedback_events(train_questions, 80, seed=3)
    calls: list[tuple[int, int]] = []
    cfg = RewardConfig(base_model=tiny_base, epochs=2, batch_size=8, learning_rate=1e-3, eval_fraction=0.3, num_threads=1)
    out = tmp_path_factory.mktemp("versions") / "rm-1"
    rm, metrics = train_reward_model(
        events,
        cfg,
        out,
        lineage={"trigger_id": "t-1", "ranges": [{"partition": 0, "start": 0, "end": 80}]},
        progress=lambda done, total, m: calls.append((done, total)),
    )
    return rm, metrics, out, calls


def test_smoke_train_writes_a_complete_version(trained):
    rm, metrics, out, calls = trained
    assert {p.name for p in out.iterdir()} >= {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "reward_config.json",
        "metrics.json",
        "lineage.json",
    }
    assert [p.name for p in out.parent.iterdir()] == ["rm-1"]  # no temporary directory left behind
    assert calls[-1][0] == calls[-1][1] == metrics["train"]["steps"] > 0
    assert [done for done, _ in calls] == list(range(1, len(calls) + 1))
    assert math.isfinite(metrics["train"]["mean_loss"])
    assert metrics["data"]["events"]["accepted"] == 80
    ev = metrics["eval"]
    assert 0.0 <= ev["pairwise_accuracy"] <= 1.0 and ev["pairs"] == metrics["data"]["splits"]["eval_pairs"]
    assert set(ev["accuracy_by_source"]) <= {"thumbs", "rating", "correction"} and ev["accuracy_by_source"]
    assert set(ev["reward_by_kind"]) <= {
        "thumbs_up",
        "thumbs_down",
        "correction",
        "corrected",
        *(f"rating_{r}" for r in range(1, 6)),
    }


def test_saved_version_loads_and_predicts_the_same(trained):
    rm, metrics, out, _ = trained
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


def test_each_head_fits_its_own_bootstrap_resample_and_the_newest_data_weighs_more():
    assert example_weights([True, False, False], heads=1, recent_weight=2.0, seed=0).tolist() == [
        [2.0],
        [1.0],
        [1.0],
    ]  # one head: no resampling
    weights = example_weights([True] * 1000 + [False] * 3000, heads=5, recent_weight=2.0, seed=0)
    assert weights.shape == (4000, 5) and torch.equal(
        weights, example_weights([True] * 1000 + [False] * 3000, heads=5, recent_weight=2.0, seed=0)
    )
    assert weights[:1000].mean().item() == pytest.approx(2.0, abs=0.1) and weights[1000:].mean().item() == pytest.approx(
        1.0, abs=0.05
    )
    assert (weights[1000:] == 0).float().mean().item() == pytest.approx(
        math.exp(-1), abs=0.02
    )  # Poisson(1): each head leaves ~37% out
    assert not torch.equal(weights[:, 0], weights[:, 1])


def test_the_heads_are_ensemble_members_then_a_gate_head(trained):
    rm, metrics = trained[0], trained[1]
    queries, responses = (
        ["How do I clear my cache in Maps?", "q"],
        ["Open Maps, go to Storage, select cache, then press Clear.", "x"],
    )
    heads = rm.head_scores(queries, responses)
    assert heads.shape == (2, rm.config.ensemble_members + 1) == (2, 5)
    assert rm.predict(queries, responses) == pytest.approx(heads[:, :4].mean(dim=1).tolist(), abs=1e-6)
    assert rm.gate_reward(queries, responses) == pytest.approx(torch.sigmoid(heads[:, 4].double()).tolist(), abs=1e-6)
    assert 0.0 <= metrics["eval"]["gate_accuracy"] <= 1.0 and metrics["eval"]["disagreement"] > 0


def test_a_round_continues_from_the_previous_reward_model_when_it_fits(trained, tmp_path):
    rm, _, previous, _ = trained
    events = feedback_events(split_questions()[0], 40, seed=4)
    newest = frozenset(e.event_id for e in events[:20])
    config = rm.config.model_copy(update={"epochs": 2, "warm_epochs": 1})
    warm, metrics = train_reward_model(events, config, tmp_path / "rm-2", warm_start=previous, recent_ids=newest)
    assert warm.lineage["warm_start"] == str(previous) and metrics["data"]["recent"]["events"] == 20
    assert metrics["train"]["epochs"] == warm.config.epochs == 1  # a continued model takes warm_epochs passes
    fresh, fresh_metrics = train_reward_model(
        events, config.model_copy(update={"ensemble_members": 2}), tmp_path / "rm-3", warm_start=previous
    )
    assert (
        fresh.lineage["warm_start"] is None and fresh_metrics["train"]["epochs"] == 2
    )  # other heads: a fresh model, `epochs` passes


def test_reward_is_the_sigmoid_of_the_score(trained):
    rm = trained[0]
    queries, responses = (
        ["How do I clear my cache in Maps?", "q", "q"],
        ["Open Maps, go to Storage, select cache, then press Clear.", "", "x"],
    )
    rewards = rm.reward(queries, responses)
    assert rewards == pytest.approx([1 / (1 + math.exp(-x)) for x in rm.predict(queries, responses)], abs=1e-12)
    assert all(0.0 < r < 1.0 for r in rewards) and rm.reward([], []) == []


def test_versions_are_never_overwritten(trained):
    rm, _, out, _ = trained
    with pytest.raises(VersionExistsError, match="rm-1"):
        rm.save(out)


def test_a_crash_while_saving_leaves_no_version(trained, tmp_path, monkeypatch):
    rm = trained[0]

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


def test_incomplete_model_directory_names_the_path_and_the_missing_files(trained, tmp_path):
    broken = _copy(trained[2], tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    (broken / "metrics.json").unlink()
    with pytest.raises(ModelLoadError, match=f"{broken}: .*missing metrics.json, model.safetensors"):
        RewardModel.load(broken)


@pytest.mark.parametrize("damage", ["truncated weights", "garbage config", "garbage reward config"])
def test_corrupt_model_directory_names_the_path(trained, tmp_path, damage):
    broken = _copy(trained[2], tmp_path / "broken")
    if damage == "truncated weights":
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage config":
        (broken / "config.json").write_text("{not json")
    else:
        (broken / "reward_config.json").write_text('{"epochs": -1}')
    with pytest.raises(ModelLoadError, match=f"{broken}: corrupt reward model"):
        RewardModel.load(broken)


def test_missing_or_corrupt_base_model_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match=f"{tmp_path / 'nope'}: no base model here"):
        RewardModel.create(RewardConfig(base_model=str(tmp_path / "nope")))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=f"{corrupt}: cannot load base model"):
        RewardModel.create(RewardConfig(base_model=str(corrupt)))


def test_keep_response_cuts_the_prompt_from_the_left():
    prompt, response = [1, 2, 3, 4, 5, 6], [7, 8]
    assert keep_response(prompt, response, 10) == prompt + response  # fits: untouched
    assert keep_response(prompt, response, 5) == [4, 5, 6, 7, 8]  # the prompt's end and the whole response
    # A response too long for the budget keeps its start, and the prompt keeps a quarter of the budget.
    assert keep_response(prompt, list(range(10, 30)), 8) == [5, 6, 10, 11, 12, 13, 14, 15]
    assert keep_response([], list(range(10, 30)), 4) == [10, 11, 12, 13]


def test_truncation_keeps_the_response_or_cuts_the_end(tiny_base):
    long_query, answer = "please help me with this " * 40, "press the reset button"
    keep = RewardModel.create(RewardConfig(base_model=tiny_base, max_length=24, truncation="keep_response"))
    right = RewardModel.create(RewardConfig(base_model=tiny_base, max_length=24))  # the default
    kept, cut = keep.encode([long_query], [answer])[0], right.encode([long_query], [answer])[0]
    assert len(kept) == len(cut) == 24
    assert keep.tokenizer.decode(kept, skip_special_tokens=True).endswith("response : press the reset button")
    assert "press" not in right.tokenizer.decode(cut) and kept[0] == cut[0] and kept[-1] == cut[-1]  # [CLS] ... [SEP] both
    assert keep.encode(["q?"], ["a."]) == right.encode(["q?"], ["a."])  # short texts: the same ids either way


def test_max_length_past_the_backbone_limit_is_a_config_error(tiny_base):
    with pytest.raises(ConfigError, match="max_length 4096 is past .* limit of 512 tokens"):
        RewardModel.create(RewardConfig(base_model=tiny_base, max_length=4096))


def test_versions_saved_before_the_truncation_option_keep_cutting_the_end(trained, tmp_path):
    old = _copy(trained[2], tmp_path / "old")
    saved = json.loads((old / "reward_config.json").read_text())
    del saved["truncation"]
    (old / "reward_config.json").write_text(json.dumps(saved))
    assert RewardModel.load(old).config.truncation == "right"
    kept = _copy(trained[2], tmp_path / "kept")
    (kept / "reward_config.json").write_text(json.dumps({**saved, "truncation": "keep_response"}))
    assert RewardModel.load(kept).config.truncation == "keep_response"  # a saved choice is kept


def test_no_usable_events_is_a_training_error(tiny_base, tmp_path):
    with pytest.raises(TrainingError, match="no training examples"):
        train_reward_model([{"bad": "event"}], RewardConfig(base_model=tiny_base), tmp_path / "rm")
    assert not (tmp_path / "rm").exists()
