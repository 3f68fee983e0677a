"""The one place prompts are built: for serving (`assistant.answering` through `trainers.policy.sample`),
PPO rollouts, the TRL alternatives (`trainers.alternatives`) and the reward model's input
(`trainers.reward_model`).

What a policy answers is a `Conversation`: the app's system prompt (or none), the earlier turns,
and the user's question. A bare string is a one-turn conversation without a system prompt, which
is what every version 1 event (`schemas.events`) is read as.

A tokenizer with a chat template (SmolLM2, any instruct model) gets the conversation in its own
format: a system turn (the app's, else `SYSTEM_PROMPT`), the earlier turns, the question, and the
assistant's turn to come (or, for the reward model, the answer as that turn). A tokenizer without
one (the tiny policy, MiniLM) gets the plain multi-turn format, one line per turn, which for a
one-turn conversation is `Query: {query}\nResponse:`, the template the tiny policy was built on:

    System: {the app's system prompt, when it sent one}
    Query: {an earlier question}
    Response: {the answer it got}
    Query: {the question}
    Response: {the answer to come}

    prompt = format_prompt(tokenizer, Conversation("And how do I undo that?", history))  # what the policy continues
    completion = format_completion(tokenizer, "Open Settings, ...")         # what it writes after the prompt
    head, tail = reward_parts(tokenizer, conversation, response)           # the reward model's text, in two parts
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from transformers import PreTrainedTokenizerBase

SYSTEM_PROMPT = "You are the product's support assistant. Answer the user's question briefly and precisely."
PLAIN_LABELS = {"system": "System:", "user": "Query:", "assistant": "Response:"}
# The plain prompt ends at the colon and the completion starts with the space, GPT-2 style: byte-level
# BPE merges a space into the word after it, so only this split makes the tokens of the prompt a
# prefix of the tokens of prompt + completion. Generation sees the prompt alone while TRL's KTO/DPO
# tokenise the two joined; both must train the same context. The text as a whole is
# `Query: {query}\nResponse: {response}`, what the reward model scores.
PLAIN_PROMPT = "Query: {query}\nResponse:"

# Earlier turns of a conversation as (role, text), role `user` or `assistant`; the query is the last user turn.
History = Sequence[tuple[str, str]]


class ConversationFields(Protocol):
    """What a conversation is read from: an interaction or feedback event (`schemas.events.ConversationEvent`)."""

    @property
    def query(self) -> str: ...
    @property
    def system(self) -> str | None: ...
    @property
    def history(self) -> tuple[tuple[str, str], ...]: ...


@dataclass(frozen=True)
class Conversation:
    """A question in its conversation: what a policy answers and a reward model scores an answer to."""

    query: str
    history: tuple[tuple[str, str], ...] = ()  # earlier (role, text) turns, oldest first, role user or assistant
    system: str | None = None  # the app's system prompt; None: the project's (`SYSTEM_PROMPT`) where a template wants one

    @classmethod
    def of(cls, event: ConversationFields) -> Conversation:
        return cls(event.query, tuple(event.history), event.system)

    @property
    def key(self) -> str:
        """What makes two questions "the same": the same system prompt, earlier turns and question,
        whitespace and case aside. Answers are compared (paired, grouped) only under the same key."""
        turns = [("system", self.system or ""), *self.history, ("user", self.query)]
        return "\n".join(f"{role}:{' '.join(text.split()).casefold()}" for role, text in turns)

    @property
    def turns(self) -> int:
        """How many questions the user asked in it so far, this one included."""
        return 1 + sum(role == "user" for role, _ in self.history)

    def to_json(self) -> str:
        """The conversation as one string (a dataset column); `from_json` reads it back."""
        return json.dumps({"query": self.query, "history": self.history, "system": self.system})

    @classmethod
    def from_json(cls, text: str) -> Conversation:
        data = json.loads(text)
        return cls(data["query"], tuple((role, content) for role, content in data["history"]), data["system"])


Prompt = str | Conversation  # a bare question is a conversation of one turn


def as_conversation(prompt: Prompt) -> Conversation:
    return prompt if isinstance(prompt, Conversation) else Conversation(prompt)


def has_chat_template(tokenizer: PreTrainedTokenizerBase | None) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def messages(prompt: Prompt) -> list[dict[str, str]]:
    """The conversation up to the user's question in OpenAI's shape: the system turn (the app's, else
    `SYSTEM_PROMPT`), the earlier turns, the question."""
    conversation = as_conversation(prompt)
    turns = [{"role": "system", "content": conversation.system or SYSTEM_PROMPT}]
    turns += [{"role": role, "content": text} for role, text in conversation.history]
    return turns + [{"role": "user", "content": conversation.query}]


def plain_prompt(prompt: Prompt) -> str:
    """The plain multi-turn format (module docstring): one labelled line per turn, ending where the answer starts."""
    conversation = as_conversation(prompt)
    lines = [f"{PLAIN_LABELS['system']} {conversation.system}"] if conversation.system else []
    lines += [f"{PLAIN_LABELS[role]} {' '.join(text.split())}" for role, text in conversation.history]
    return "\n".join([*lines, PLAIN_PROMPT.format(query=conversation.query)])


def plain_completion(response: str) -> str:
    """A response as a policy without a chat template writes it after the plain prompt (decoded completions are stripped)."""
    return " " + response


def format_prompt(tokenizer: PreTrainedTokenizerBase | None, prompt: Prompt) -> str:
    """The text the policy continues with its answer; tokenise it with `add_special_tokens=False`
    (a chat template writes its own special tokens)."""
    if tokenizer is None or not has_chat_template(tokenizer):
        return plain_prompt(prompt)
    return str(tokenizer.apply_chat_template(messages(prompt), tokenize=False, add_generation_prompt=True))


def format_prompts(tokenizer: PreTrainedTokenizerBase | None, prompts: Sequence[Prompt]) -> list[str]:
    return [format_prompt(tokenizer, p) for p in prompts]


def format_completion(tokenizer: PreTrainedTokenizerBase | None, response: str) -> str:
    """A response as the policy writes it after its prompt: the plain template starts it with a
    space (`PLAIN_PROMPT`); a chat template's assistant turn starts on a fresh line,
    and the trainers append the end-of-turn (EOS) token themselves."""
    return response if has_chat_template(tokenizer) else plain_completion(response)


def reward_parts(tokenizer: PreTrainedTokenizerBase | None, prompt: Prompt, response: str) -> tuple[str, str]:
    """The reward model's input as (conversation part, response part), to be tokenised apart so that
    truncation can cut the conversation from its oldest end and keep the response; joined they are the
    whole conversation (with a chat template: the assistant turn closed by its end-of-turn marker)."""
    if tokenizer is None or not has_chat_template(tokenizer):
        return plain_prompt(prompt), plain_completion(response)
    head = format_prompt(tokenizer, prompt)
    whole = str(tokenizer.apply_chat_template([*messages(prompt), {"role": "assistant", "content": response}], tokenize=False))
    if not whole.startswith(head):  # a template that renders the last turn differently: score the turn as plain text
        return head, response
    return head, whole[len(head) :]


def reward_text(tokenizer: PreTrainedTokenizerBase | None, prompt: Prompt, response: str) -> str:
    """The reward model's input as one string (`Query: ...\nResponse: ...` without a chat template)."""
    return "".join(reward_parts(tokenizer, prompt, response))
