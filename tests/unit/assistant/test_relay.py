"""A relayed answer read from an engine's chunks as in-process generation writes its own: whitespace
stripped at both ends, the streamed pieces joining to exactly the answer, usage and finish reason
from the engine."""

from __future__ import annotations

import httpx

from assistant.generation import Answer, Ask
from assistant.relay import Relay, RelayedText
from core.serving_settings import GatewaySettings


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


def test_an_engines_refusal_becomes_the_status_its_reason_calls_for() -> None:
    relay = Relay(GatewaySettings(retry_after_s=7))
    try:
        answers = {
            status: relay._refusal("http://e", "v1", httpx.Response(status, json={"error": {"message": "why"}}))
            for status in (400, 404, 422, 429, 500, 503)
        }
    finally:
        relay.close()
    assert {s: a.status_code for s, a in answers.items()} == {400: 400, 404: 503, 422: 400, 429: 503, 500: 502, 503: 503}
    assert answers[404].headers == {"Retry-After": "7"} and "rlhf engine deploy v1" in answers[404].detail
    assert all("why" in a.detail for a in answers.values())
