"""`rlhf policy train / eval` at micro size: the synthetic task and a reward model + JSONL file,
the printed summary, the saved policy, and one clear message (exit 2) for every bad path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel

from core.learning_settings import RewardTrainingSettings
from rlhf.cli import main
from trainers.base_models import resolve_base_model
from trainers.reward import train_reward_model
from trainers.reward_config import RewardConfig
from trainers.synthetic import feedback_events, split_questions

SMALL = {
    "EPOCHS": "2",
    "BATCH_SIZE": "4",
    "MINI_BATCH_SIZE": "2",
    "PPO_EPOCHS": "1",
    "MAX_NEW_TOKENS": "6",
    "LEARNING_RATE": "0.001",
}


@pytest.fixture(scope="module")
def feedback(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A JSONL file of simulated feedback and a micro reward model (2-layer BERT) trained on it."""
    root = tmp_path_factory.mktemp("rm")
    events = feedback_events(split_questions()[0], 40, seed=3)
    data = root / "feedback.jsonl"
    data.write_text("".join(e.model_dump_json() + "\n" for e in events) + "not json\n")
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    train_reward_model(
        events,
        RewardConfig(base_model=str(root / "bert"), training=RewardTrainingSettings(epochs=1, batch_size=8), num_threads=1),
        root / "model",
    )
    return root / "model", data


@pytest.fixture(autouse=True)
def small_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLHF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RLHF_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./rlhf.yaml
    for key, value in SMALL.items():
        monkeypatch.setenv(f"RLHF_POLICY__TRAINING__{key}", value)


def test_train_synthetic_prints_the_summary_and_saves_a_loadable_policy(
    micro_policy: str, tmp_path: Path, capsys: pytest.CaptureFixture
):
    out = tmp_path / "ppo"
    assert main(["policy", "train", "--algorithm", "ppo", "--synthetic", "--base-model", micro_policy, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    for line in ("mean reward", "gain", "KL to start", "length", "guardrails  none"):
        assert line in printed.out, line
    assert "465 training / 135 held-out queries" in printed.out
    assert "ppo" in printed.err  # the progress bar
    AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)

    assert main(["policy", "eval", "--model", str(out), "--reference", micro_policy, "--synthetic"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["eval"]["samples"] == 2 * 135 and report["eval"]["kl"] >= 0 and 0 <= report["eval"]["mean_reward"] <= 1


def test_train_kto_from_a_reward_model_and_feedback_file(
    micro_policy: str, feedback: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
):
    rm, data = feedback
    out = tmp_path / "kto"
    argv = [
        "policy",
        "train",
        "--algorithm",
        "kto",
        "--reward-model",
        str(rm),
        "--data",
        str(data),
        "--base-model",
        micro_policy,
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "skipped 1 invalid line" in printed.err and "reward model" in printed.out and "gain" in printed.out
    assert (out / "config.json").is_file()
    assert main(["policy", "eval", "--model", str(out), "--reward-model", str(rm), "--data", str(data)]) == 0
    assert "kl" not in json.loads(capsys.readouterr().out)["eval"]  # no --reference: no KL


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["policy", "train", "--synthetic", "--base-model", "/no/such/policy"], "/no/such/policy: base policy not found"),
        (["policy", "train", "--synthetic", "--base-model", "runs/missing"], "runs/missing: base policy not found"),
        (["policy", "train", "--reward-model", "/no/such/rm", "--data", "x.jsonl"], "/no/such/rm: reward model not found"),
        (["policy", "train", "--reward-model", "{rm}", "--data", "/no/such.jsonl"], "/no/such.jsonl: feedback file not found"),
        (["policy", "train", "--reward-model", "{rm}"], "give --synthetic, or both --reward-model DIR and --data FILE"),
        (["policy", "train"], "give --synthetic, or both"),
        (["policy", "train", "--synthetic", "--out", "{taken}"], "already exists and is not an empty directory"),
        (["policy", "eval", "--model", "/no/such/policy", "--synthetic"], "/no/such/policy: policy not found"),
    ],
)
def test_bad_paths_are_one_clear_error(
    argv: list[str], message: str, micro_policy: str, feedback: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
):
    (tmp_path / "runs").mkdir()  # so `runs/missing` is a missing path here, not a Hub id
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    argv = [a.format(rm=feedback[0], taken=taken) for a in argv]
    if "--base-model" not in argv and argv[1] == "train":
        argv += ["--base-model", micro_policy]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "home" / "policies").exists()


def test_chat_prints_one_answer_from_a_path_or_a_registry_version(
    micro_policy: str, tmp_path: Path, capsys: pytest.CaptureFixture
):
    from registry.store import ModelRegistry

    assert (
        main(
            [
                "policy",
                "chat",
                "--model",
                micro_policy,
                "--temperature",
                "0",
                "--max-new-tokens",
                "8",
                "How do I reset my password?",
            ]
        )
        == 0
    )
    answer = capsys.readouterr().out.strip()
    assert answer and "\n" not in answer
    registry = ModelRegistry(tmp_path / "home" / "registry")
    registry.register_base("assistant", "base-v1", lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True))
    assert (
        main(
            ["policy", "chat", "--model", "base-v1", "--temperature", "0", "--max-new-tokens", "8", "How do I reset my password?"]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == answer  # the same weights, greedy: the same answer


@pytest.mark.parametrize(
    ("model", "message"),
    [("/no/such/policy", "/no/such/policy: policy not found"), ("/no/such.gguf", "/no/such.gguf: policy not found")],
)
def test_chat_with_a_missing_model_is_one_clear_error(model: str, message: str, capsys: pytest.CaptureFixture):
    assert main(["policy", "chat", "--model", model, "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf: error: ") and message in err and "Traceback" not in err


def test_an_empty_data_file_is_an_error(feedback: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "empty.jsonl").write_text("\n")
    assert (
        main(["policy", "eval", "--model", "tiny", "--reward-model", str(feedback[0]), "--data", str(tmp_path / "empty.jsonl")])
        == 2
    )
    assert "no valid FeedbackEvent lines" in capsys.readouterr().err
