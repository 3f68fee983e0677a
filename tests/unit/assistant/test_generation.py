"""Streaming generation (assistant/generation.py): a row's text as its tokens arrive (literal tokens),
and one generate call of the micro policy: the same answers as `trainers.policy.sample`, usage as
the tokenizer counts it, pieces out while the call still runs, stop sequences, an abandoned row
stopped, and the prompt the policy saw logged at DEBUG."""

from __future__ import annotations

import logging

import pytest

from assistant.answering import LoadedPolicy, Sampling
from assistant.generation import Answer, Ask, RowText, generate
from trainers.chat_format import Conversation, format_prompt
from trainers.policy import load_policy, sample

GREEDY = Sampling(max_new_tokens=24, temperature=0, top_p=1.0)
FOLLOW_UP = Conversation(
    "And how do I undo that?", (("user", "How do I export my data?"), ("assistant", "Open Settings.")), "Be brief."
)
QUESTIONS = [Conversation("How do I reset my password?"), FOLLOW_UP]


class Pieces:
    """A sink that keeps what it is given; `leave_after` pieces, it reports its reader gone."""

    def __init__(self, leave_after: int | None = None, clock: list[int] | None = None):
        self.pieces: list[str] = []
        self.answers: list[Answer] = []
        self.at: list[int] = []  # the decoding step (forward passes so far) of each piece
        self.leave_after = leave_after
        self.clock = clock

    @property
    def abandoned(self) -> bool:
        return self.leave_after is not None and len(self.pieces) >= self.leave_after

    def put(self, delta: str) -> None:
        self.pieces.append(delta)
        self.at.append(self.clock[0] if self.clock else 0)

    def done(self, answer: Answer) -> None:
        self.answers.append(answer)
        self.at.append(self.clock[0] if self.clock else 0)


class Vocabulary:
    """A tokenizer over a literal vocabulary: a token id is its index, 0 is EOS."""

    eos_token_id = 0

    def __init__(self, *tokens: str):
        self.tokens = ["<eos>", *tokens]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.tokens[i] for i in ids if i)

    def ids(self, *tokens: str) -> list[int]:
        return [self.tokens.index(t) for t in tokens]


def written(vocabulary: Vocabulary, tokens: list[str], stop: tuple[str, ...] = ()) -> tuple[RowText, Pieces, list[str]]:
    """Feed `tokens` one at a time; what was sent after each."""
    sink = Pieces()
    row = RowText(vocabulary, Ask(Conversation("q"), stop, sink), prompt_tokens=9)  # type: ignore[arg-type]
    sent = []
    for token in vocabulary.ids(*tokens):
        row.add(token)
        sent.append("".join(sink.pieces))
    return row, sink, sent


def test_a_row_holds_back_what_may_begin_a_stop_sequence_and_cuts_before_it():
    vocab = Vocabulary(" Open", " Settings", ".", "\n", "E", "ND", " more")
    row, sink, sent = written(vocab, [" Open", " Settings", "E", "ND", " more"], stop=("END",))
    assert sent == ["Open", "Open Settings", "Open Settings", "Open Settings", "Open Settings"]  # "E" held: it may begin END
    assert row.text == "Open Settings" and row.finish == "stop" and row.generated == 4
    assert "".join(sink.pieces) == row.text and sink.answers == [Answer("Open Settings", "stop", 9, 4)]


def test_a_row_releases_a_held_prefix_that_was_not_a_stop_and_strips_trailing_whitespace():
    vocab = Vocabulary(" Open", "E", "asy", "\n", "<eos>")
    row, sink, sent = written(vocab, [" Open", "E", "asy", "\n"], stop=("END",))
    assert sent == ["Open", "Open", "OpenEasy", "OpenEasy"]  # the newline waits: it would be stripped at the end
    row.add(vocab.eos_token_id)
    assert row.finish == "stop" and row.text == "OpenEasy" and row.generated == 5
    row.end("length")  # a row that is over stays over
    assert row.finish == "stop" and "".join(sink.pieces) == "OpenEasy"


def test_an_incomplete_character_waits_for_the_rest_of_it():
    vocab = Vocabulary("caf", "\ufffd", "é")
    row, _, sent = written(vocab, ["caf", "\ufffd"])
    assert sent == ["caf", "caf"]
    row.end("length")
    assert row.text == "caf\ufffd" and row.finish == "length"


@pytest.fixture(scope="module")
def micro(micro_policy: str) -> LoadedPolicy:
    lm, tokenizer = load_policy(micro_policy)
    return LoadedPolicy("micro", lm.eval(), tokenizer)


def test_the_answers_are_samples_answers_and_usage_is_the_tokenizers_count(micro: LoadedPolicy):
    answers = generate(micro, [Ask(q) for q in QUESTIONS], GREEDY)
    samples = sample(micro.model, micro.tokenizer, QUESTIONS, max_new_tokens=24, temperature=1.0, top_p=1.0, greedy=True)
    assert [a.text for a in answers] == samples.responses
    assert [a.completion_tokens for a in answers] == [int(n) for n in samples.lengths()]
    for question, answer in zip(QUESTIONS, answers, strict=True):
        prompt = format_prompt(micro.tokenizer, question)
        assert answer.prompt_tokens == len(micro.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert answer.finish_reason == ("length" if answer.completion_tokens == 24 else "stop")


def test_pieces_come_out_step_by_step_while_the_call_runs(micro: LoadedPolicy):
    clock = [0]
    hook = micro.model.register_forward_pre_hook(lambda module, args: clock.__setitem__(0, clock[0] + 1))
    try:
        sinks = [Pieces(clock=clock) for _ in QUESTIONS]
        answers = generate(micro, [Ask(q, sink=s) for q, s in zip(QUESTIONS, sinks, strict=True)], GREEDY)
    finally:
        hook.remove()
    for sink, answer in zip(sinks, answers, strict=True):
        assert "".join(sink.pieces) == answer.text and len(sink.pieces) > 1 and sink.answers == [answer]
        assert sink.at[0] < clock[0]  # the first piece was out before the last forward pass


def test_a_row_that_ends_early_hands_over_its_answer_before_the_batch_ends(micro: LoadedPolicy):
    clock = [0]
    hook = micro.model.register_forward_pre_hook(lambda module, args: clock.__setitem__(0, clock[0] + 1))
    try:
        short, long = Pieces(clock=clock), Pieces(clock=clock)
        text = generate(micro, [Ask(QUESTIONS[0])], GREEDY)[0].text
        generate(micro, [Ask(QUESTIONS[0], stop=(text.split()[1],), sink=short), Ask(QUESTIONS[1], sink=long)], GREEDY)
    finally:
        hook.remove()
    assert short.answers[0].finish_reason == "stop" and short.at[-1] < long.at[-1] <= clock[0]


def test_min_new_tokens_holds_the_end_of_turn_back(micro: LoadedPolicy):
    answers = generate(micro, [Ask(q) for q in QUESTIONS], Sampling(24, 0.8, 0.95, min_new_tokens=24))
    assert [(a.completion_tokens, a.finish_reason) for a in answers] == [(24, "length")] * 2


def test_a_stop_sequence_cuts_the_answer_and_ends_the_row(micro: LoadedPolicy):
    whole = generate(micro, [Ask(q) for q in QUESTIONS], GREEDY)
    text = whole[0].text
    stop = text.split()[2]  # a word the answer writes: it ends before its first occurrence
    sink = Pieces()
    cut = generate(micro, [Ask(QUESTIONS[0], stop=(stop,), sink=sink), Ask(QUESTIONS[1])], GREEDY)
    assert cut[0].text == text[: text.index(stop)].rstrip() and cut[0].finish_reason == "stop"
    assert cut[0].completion_tokens < whole[0].completion_tokens and "".join(sink.pieces) == cut[0].text
    assert cut[1] == whole[1]  # the other row of the batch is untouched


def test_an_abandoned_row_stops_and_the_call_ends_once_every_row_has(micro: LoadedPolicy):
    clock = [0]
    hook = micro.model.register_forward_pre_hook(lambda module, args: clock.__setitem__(0, clock[0] + 1))
    try:
        gone, stays = Pieces(leave_after=1), Pieces()
        answers = generate(micro, [Ask(QUESTIONS[0], sink=gone), Ask(QUESTIONS[1], sink=stays)], GREEDY)
        assert len(gone.pieces) == 1 and answers[0].completion_tokens <= 2 < answers[1].completion_tokens
        clock[0] = 0
        generate(micro, [Ask(q, sink=Pieces(leave_after=1)) for q in QUESTIONS], GREEDY)
        assert clock[0] < GREEDY.max_new_tokens  # nobody reads on: the call ends early
    finally:
        hook.remove()


def test_the_prompt_the_policy_saw_is_logged_at_debug(micro: LoadedPolicy, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.DEBUG, logger="rlhf.serve"):
        generate(micro, [Ask(FOLLOW_UP)], Sampling(2, 0, 1.0))
    prompts = [r.getMessage() for r in caplog.records if r.name == "rlhf.serve"]
    assert prompts == [
        "prompt of micro: System: Be brief.\nQuery: How do I export my data?\nResponse: Open Settings.\n"
        "Query: And how do I undo that?\nResponse:"
    ]
