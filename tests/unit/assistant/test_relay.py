"""A relayed answer read from an engine's chunks as in-process generation writes its own: whitespace
stripped at both ends, the streamed pieces joining to exactly the answer, usage and finish reason
from the engine."""

from __future__ import annotations

from assistant.generation import Answer, Ask
from assistant.relay import RelayedText


class Pieces:
    abandoned = False

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.answer: Answer | None = None

    def put(self, delta: str) -> None:
        self.pieces.append(delta)

    def done(self, answer: Answer) -> None:
        self.answer = answer


def chunk(content: str | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if content is None and finish is None else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    return {"choices": choices, **({"usage": usage} if usage else {})}


def test_pieces_join_to_the_stripped_answer_with_the_engines_usage_and_finish() -> None:
    sink = Pieces()
    text = RelayedText(Ask("q", sink=sink))
    for c in (chunk(""), chunk(" Open"), chunk(" Settings. "), chunk("\n"), chunk("Then", "length")):
        text.add(c)
        assert "".join(sink.pieces) == text.text.rstrip()  # trailing whitespace held back until decided
    text.add(chunk(usage={"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}))
    answer = text.end()
    assert answer == Answer("Open Settings. \nThen", "length", 7, 5) and sink.answer == answer
    assert "".join(sink.pieces) == answer.text and sink.pieces[0] == "Open"


def test_an_answer_that_ends_in_whitespace_never_sends_it() -> None:
    sink = Pieces()
    text = RelayedText(Ask("q", sink=sink))
    text.add(chunk("Yes.  ", "stop"))
    assert text.end().text == "Yes." and sink.pieces == ["Yes."]
