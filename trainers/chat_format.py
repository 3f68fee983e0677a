"""The one place prompts are built: for serving (`assistant.answering` through `trainers.policy.sample`),
PPO rollouts, the TRL alternatives (`trainers.alternatives`) and the reward model's input
(`trainers.reward_model`).

A tokenizer with a chat template (SmolLM2, any instruct model) gets the conversation in its own
format: a system turn (`SYSTEM_PROMPT`), the user's turns, and the assistant's turn to come (or,
for the reward model, the answer as that turn). A tokenizer without one (the tiny policy, MiniLM)
keeps the plain template of `trainers.tiny_policy`: `Query: {query}\\nResponse: {response}`.

    prompt = format_prompt(tokenizer, "How do I reset my password?")        # what the policy continues
    completion = format_completion(tokenizer, "Open Settings, ...")         # what it writes after the prompt
    head, tail = reward_parts(tokenizer, query, response)                  # the reward model's text, in two parts
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from trainers import tiny_policy

SYSTEM_PROMPT = "You are the product's support assistant. Answer the user's question briefly and precisely."

# Earlier turns of a conversation as (role, text), role `user` or `assistant`; the query is the last user turn.
History = Sequence[tuple[str, str]]


def has_chat_template(tokenizer: PreTrainedTokenizerBase | None) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def messages(query: str, history: History = (), system: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The conversation up to the user's `query`: the system turn, any earlier turns, the query."""
    turns = [{"role": "system", "content": system}] if system else []
    turns += [{"role": role, "content": text} for role, text in history]
    return turns + [{"role": "user", "content": query}]


def format_prompt(
    tokenizer: PreTrainedTokenizerBase | None, query: str, history: History = (), system: str | None = SYSTEM_PROMPT
) -> str:
    """The text the policy continues with its answer; tokenise it with `add_special_tokens=False`
    (a chat template writes its own special tokens)."""
    if tokenizer is None or not has_chat_template(tokenizer):
        return tiny_policy.format_prompt(query)
    return str(tokenizer.apply_chat_template(messages(query, history, system), tokenize=False, add_generation_prompt=True))


def format_prompts(tokenizer: PreTrainedTokenizerBase | None, queries: Sequence[str]) -> list[str]:
    return [format_prompt(tokenizer, q) for q in queries]


def format_completion(tokenizer: PreTrainedTokenizerBase | None, response: str) -> str:
    """A response as the policy writes it after its prompt: the plain template starts it with a
    space (see `trainers.tiny_policy`); a chat template's assistant turn starts on a fresh line,
    and the trainers append the end-of-turn (EOS) token themselves."""
    return response if has_chat_template(tokenizer) else tiny_policy.format_completion(response)


def reward_parts(tokenizer: PreTrainedTokenizerBase | None, query: str, response: str) -> tuple[str, str]:
    """The reward model's input as (prompt part, response part), to be tokenised apart so that
    truncation can cut the prompt and keep the response; joined they are the whole conversation
    (with a chat template: the assistant turn closed by its end-of-turn marker)."""
    if tokenizer is None or not has_chat_template(tokenizer):
        return tiny_policy.format_prompt(query), tiny_policy.format_completion(response)
    head = format_prompt(tokenizer, query)
    whole = str(tokenizer.apply_chat_template([*messages(query), {"role": "assistant", "content": response}], tokenize=False))
    if not whole.startswith(head):  # a template that renders the last turn differently: score the turn as plain text
        return head, response
    return head, whole[len(head) :]


def reward_text(tokenizer: PreTrainedTokenizerBase | None, query: str, response: str) -> str:
    """The reward model's input as one string (`Query: ...\\nResponse: ...` without a chat template)."""
    return "".join(reward_parts(tokenizer, query, response))
