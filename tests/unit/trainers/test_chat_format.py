"""One prompt format for serving, rollouts, the TRL alternatives and the reward model: the
tokenizer's chat template when it has one, the plain `Query: ...\\nResponse:` template otherwise."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from trainers.base_models import resolve_base_model
from trainers.chat_format import (
    SYSTEM_PROMPT,
    Conversation,
    format_completion,
    format_prompt,
    has_chat_template,
    reward_parts,
    reward_text,
)
from trainers.reward_model import format_input
from trainers.tiny_policy import format_prompt as plain_prompt

# ChatML, as SmolLM2 writes it (with its default system turn when none is given).
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are SmolLM<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def plain():
    return AutoTokenizer.from_pretrained(resolve_base_model("minilm"))


@pytest.fixture(scope="module")
def chat():
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    tokenizer.chat_template = CHATML
    return tokenizer


def test_without_a_template_the_plain_format_stays(plain):
    assert not has_chat_template(plain) and not has_chat_template(None)
    assert format_prompt(plain, "q?") == plain_prompt("q?") == "Query: q?\nResponse:"
    assert format_completion(plain, "a.") == " a."
    assert reward_text(plain, "q?", "a.") == format_input("q?", "a.") == "Query: q?\nResponse: a."


def test_with_a_template_system_and_user_turns_then_the_assistant_turn(chat):
    prompt = format_prompt(chat, "How do I reset my password?")
    assert prompt == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nHow do I reset my password?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert format_completion(chat, "Open Settings.") == "Open Settings."
    history = [("user", "Hi"), ("assistant", "Hello!")]
    assert "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nq?" in format_prompt(
        chat, Conversation("q?", tuple(history))
    )


def test_the_reward_models_input_is_the_prompt_then_the_answer_turn(chat):
    head, tail = reward_parts(chat, "q?", "Open Settings.")
    assert head == format_prompt(chat, "q?")
    assert tail == "Open Settings.<|im_end|>\n"
    assert reward_text(chat, "q?", "Open Settings.") == head + tail


def test_sampling_prompts_the_policy_in_its_chat_format(micro_policy: str):
    from trainers.policy import load_policy, sample

    lm, tokenizer = load_policy(micro_policy)
    tokenizer.chat_template = CHATML
    s = sample(lm, tokenizer, ["q one?", "a longer question two?"], max_new_tokens=3, temperature=1.0, top_p=1.0, greedy=True)
    prompt_ids = s.input_ids[1, : s.input_ids.shape[1] - s.response_len]
    assert tokenizer.decode(prompt_ids) == format_prompt(tokenizer, "a longer question two?")


def test_sampling_answers_a_conversation_and_cuts_its_oldest_turns_to_fit(micro_policy: str):
    from trainers.policy import load_policy, sample

    lm, tokenizer = load_policy(micro_policy)
    earlier = (("user", "How do I reset my password in Mail?"), ("assistant", "Open Mail, go to Security, then press Reset."))
    follow_up = Conversation("And how do I undo that?", earlier, "Be brief.")
    s = sample(lm, tokenizer, ["q?", follow_up], max_new_tokens=3, temperature=1.0, top_p=1.0, greedy=True)
    assert s.queries == ["q?", follow_up]
    prompt_ids = s.input_ids[1, : s.input_ids.shape[1] - s.response_len]
    assert tokenizer.decode(prompt_ids) == format_prompt(tokenizer, follow_up)  # the whole conversation, in order
    assert format_prompt(tokenizer, follow_up).startswith("System: Be brief.\nQuery: How do I reset my password in Mail?")

    long = Conversation("And how do I undo that?", earlier * 20)  # past the policy's 256 positions
    room = lm.config.max_position_embeddings - 3
    s = sample(lm, tokenizer, [long, "q?"], max_new_tokens=3, temperature=1.0, top_p=1.0, greedy=True)
    assert s.input_ids.shape[1] - s.response_len == room  # the oldest turns went
    kept = str(tokenizer.decode(s.input_ids[0, :room]))
    assert kept.endswith("Response: Open Mail, go to Security, then press Reset.\nQuery: And how do I undo that?\nResponse:")
