"""A chat app's conversation, as OpenAI's `messages` list, read as the fields of an interaction
(`schemas.events.ConversationEvent`): the turns before the question (`context`), the question
(`query`), its place in the conversation (`turn_index`) and a stable `conversation_id`.

The assistant's `/v1/chat/completions` (assistant/openai_api.py) and the producer SDK's
`FeedbackClient.interaction(messages=...)` (sdk/client.py) both read a conversation here, so an
app that logs its own answers and the assistant that answers them log the same event.

    asked = QuestionInContext.of([{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "How do I reset my password in Mail?"},
                                  {"role": "assistant", "content": "Open Settings > Accounts."},
                                  {"role": "user", "content": "And how do I undo that?"}])
    asked.query, asked.turn_index            # "And how do I undo that?", 1
    asked.context                            # (Turn(system, "Be brief."), Turn(user, ...), Turn(assistant, ...))
    asked.conversation_id("u-42")            # the same for every turn of this conversation of u-42

How the list is read: `developer` is a system message (OpenAI's newer name for it); the leading
system messages are the app's system prompt, joined by a blank line into one system turn; the later
user and assistant messages are the earlier turns; the last message is the user's question. A
system message after the first user or assistant message is refused: an event keeps the system
prompt first and only there. Each refusal is an `EventValidationError` naming `messages.N.field`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from core.errors import EventValidationError
from core.hashing import stable_hash64
from schemas.events import MAX_QUERY_CHARS, Turn, describe_errors

SYSTEM_ROLES = frozenset({"system", "developer"})
SYSTEM_JOIN = "\n\n"


def text_of(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of content parts, of which only text parts are read."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise EventValidationError(f"{where}.content: a string or a list of text parts, not {type(content).__name__}")


@dataclass(frozen=True)
class QuestionInContext:
    """The user's question and the conversation before it; `system` and `history` read as an
    event's do, so `trainers.chat_format.Conversation.of` takes it."""

    context: tuple[Turn, ...]
    query: str

    @classmethod
    def of(cls, messages: Sequence[Mapping[str, Any]]) -> QuestionInContext:
        """Read OpenAI-style messages (`role`, `content`); see the module docstring."""
        if not messages:
            raise EventValidationError("messages: empty (the conversation needs the user's question)")
        roles = [str(m.get("role")) for m in messages]
        texts = [text_of(m.get("content"), f"messages.{n}") for n, m in enumerate(messages)]
        last = len(messages) - 1
        if roles[last] != "user":
            raise EventValidationError(
                f"messages.{last}.role: the last message must be the user's turn to answer, not {roles[last]!r}"
            )
        leading = next((n for n, role in enumerate(roles) if role not in SYSTEM_ROLES), last)
        system = [text.strip() for text in texts[:leading] if text.strip()]
        context = [Turn(role="system", content=SYSTEM_JOIN.join(system))] if system else []
        for n in range(leading, last):
            if roles[n] in SYSTEM_ROLES:
                raise EventValidationError(
                    f"messages.{n}.role: a system message may only come before the conversation's first user or assistant message"
                )
            try:
                context.append(Turn.model_validate({"role": roles[n], "content": texts[n]}))
            except ValidationError as exc:
                raise EventValidationError(f"messages.{n}.{describe_errors(exc)}") from None
        query = texts[last].strip()
        if not query:
            raise EventValidationError(f"messages.{last}.content: the question is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise EventValidationError(f"messages.{last}.content: {len(query)} characters, at most {MAX_QUERY_CHARS}")
        return cls(tuple(context), query)

    @property
    def system(self) -> str | None:
        return self.context[0].content if self.context and self.context[0].role == "system" else None

    @property
    def history(self) -> tuple[tuple[str, str], ...]:
        return tuple((t.role, t.content) for t in self.context if t.role != "system")

    @property
    def turn_index(self) -> int:
        """How many user questions came before this one."""
        return sum(t.role == "user" for t in self.context)

    def conversation_id(self, user_id: str) -> str:
        """A stable id for the conversation when the app sends none: the same for every turn a user
        has under one system prompt and first question (whitespace aside). Two conversations a user
        opens with the same question share it: an app that tells them apart sends its own id."""
        first = next((t.content for t in self.context if t.role == "user"), self.query)
        digest = stable_hash64("conversation", user_id, self.system or "", " ".join(first.split()))
        return f"conv-{digest:016x}"

    def event_fields(self, user_id: str, conversation_id: str | None = None) -> dict[str, Any]:
        """The conversation fields of an interaction or feedback event (version 2)."""
        return {
            "context": self.context,
            "query": self.query,
            "turn_index": self.turn_index,
            "conversation_id": conversation_id or self.conversation_id(user_id),
        }
