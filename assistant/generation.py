"""One generate call for a micro-batch of questions (assistant/batcher.py), each row streamed as it
is written: the text of every row is decoded token by token and handed to its `Sink` (the HTTP
handler of a `stream: true` request) while the batch is still generating.

    answers = generate(policy, [Ask(Conversation("How do I undo that?", history, system), stop=("\\n\\n",), sink=sink)], sampling)
    answers[0].text, answers[0].finish_reason, answers[0].prompt_tokens, answers[0].completion_tokens

A row ends at the policy's end-of-turn (EOS) token or at one of its stop sequences (finish "stop":
the text is cut before the stop sequence), at `max_new_tokens` (finish "length"), or when its sink
is abandoned (the client went away): the stopping criteria tell `generate` which rows are done,
and once every row is, the call ends. A streamed row's answer goes to its sink as soon as the row
ends (`Sink.done`), so its reader need not wait for the longest answer of the batch.

A row's text is what `trainers.policy.sample` answers: special tokens skipped, whitespace stripped
at both ends. Text that may still turn out to be the start of a stop sequence, trailing whitespace
and an incomplete UTF-8 character are held back until the next tokens decide them, so the streamed
pieces always join to exactly the final text.

`usage`: `prompt_tokens` is the length of the formatted prompt (trainers/chat_format.py, tokenised
without added special tokens, as the policy sees it); `completion_tokens` counts the tokens the
row generated, its EOS included, up to the token that completed a stop sequence.

The prompt each row is given is logged at DEBUG on `rlhf.serve` (how to see what the policy saw).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from trainers.chat_format import Prompt, format_prompts
from trainers.device import use_bf16

log = logging.getLogger("rlhf.serve")
FinishReason = Literal["stop", "length"]


class Sink(Protocol):
    """Where a streamed row's text goes as it is written, and its answer once the row is over (before
    the batch's other rows may be); called from the generating thread."""

    @property
    def abandoned(self) -> bool:
        """The reader went away: stop generating the row."""
        ...

    def put(self, delta: str) -> None: ...
    def done(self, answer: Answer) -> None: ...


@dataclass(frozen=True)
class Ask:
    """One row of a generate call: the conversation to answer, where to stop, and (streamed) where its text goes."""

    prompt: Prompt
    stop: tuple[str, ...] = ()
    sink: Sink | None = None


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class GenerationSettings(Protocol):
    """What a generate call is asked for (assistant.answering.Sampling): temperature 0 is greedy."""

    @property
    def max_new_tokens(self) -> int: ...
    @property
    def min_new_tokens(self) -> int: ...
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...


class RowText:
    """One row's text as its tokens arrive: what may be sent so far, and where it ends."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, ask: Ask, prompt_tokens: int):
        self.tokenizer = tokenizer
        self.stop = ask.stop
        self.sink = ask.sink
        self.prompt_tokens = prompt_tokens
        self.ids: list[int] = []
        self.generated = 0  # tokens generated for the row, EOS included
        self.text = ""  # decoded so far, leading whitespace stripped; cut before a stop sequence once one is met
        self.sent = 0  # characters of `text` handed to the sink
        self.finish: FinishReason | None = None
        self.abandoned = False

    @property
    def done(self) -> bool:
        return self.finish is not None or self.abandoned

    def add(self, token: int) -> None:
        if self.done:
            return
        if self.sink is not None and self.sink.abandoned:
            self.abandoned = True
            return
        self.generated += 1
        if token == self.tokenizer.eos_token_id:
            self.end("stop")
            return
        self.ids.append(token)
        self.text = str(self.tokenizer.decode(self.ids, skip_special_tokens=True)).lstrip()
        cut = min((at for at in (self.text.find(s) for s in self.stop) if at >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.end("stop")
            return
        self._send(len(self.text) - self._undecided())

    def end(self, reason: FinishReason) -> None:
        """The row is over: the rest of its text goes out."""
        if self.done:
            return
        self.finish = reason
        self.text = self.text.rstrip()
        self._send(len(self.text))
        if self.sink is not None:
            self.sink.done(self.answer())

    def answer(self) -> Answer:
        return Answer(self.text, self.finish or "length", self.prompt_tokens, self.generated)

    def _undecided(self) -> int:
        """How many trailing characters the next tokens may still change: the longest end of the text
        that begins a stop sequence, trailing whitespace (stripped if the answer ends there), a
        replacement character (an incomplete UTF-8 sequence)."""
        text = self.text
        held = len(text) - len(text.rstrip().rstrip("\ufffd"))
        for stop in self.stop:
            held = max(held, next((n for n in range(min(len(stop) - 1, len(text)), 0, -1) if text.endswith(stop[:n])), 0))
        return held

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            delta, self.sent = self.text[self.sent : upto], upto
            if self.sink is not None:
                self.sink.put(delta)


class Rows(BaseStreamer):
    """The streamer `generate` hands each step's new tokens (one per row; its first call, the prompts)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, asks: Sequence[Ask], prompt_tokens: Sequence[int]):
        self.rows = [RowText(tokenizer, ask, n) for ask, n in zip(asks, prompt_tokens, strict=True)]
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            row.add(int(token))

    def end(self) -> None:
        for row in self.rows:
            row.end("length")  # a row still open ran out of tokens


class RowsDone(StoppingCriteria):
    """Which rows are done (stop sequence, abandoned), as `generate` asks after each step. It is asked
    before the step's tokens reach the streamer, so a row stops one token late: that token is dropped."""

    def __init__(self, rows: Rows):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = [row.done for row in self.rows.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


@torch.no_grad()
def generate(policy: Any, asks: Sequence[Ask], sampling: GenerationSettings) -> list[Answer]:
    """Answer every row of `asks` in one generate call of `policy` (a LoadedPolicy), streaming each row to its sink."""
    lm, tokenizer = policy.model, policy.tokenizer
    prompts = format_prompts(tokenizer, [ask.prompt for ask in asks])
    for prompt in prompts:
        log.debug("prompt of %s: %s", policy.version, prompt)
    device = next(lm.parameters()).device
    tokenizer.padding_side = "left"  # generation continues from the right edge of every prompt
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    rows = Rows(tokenizer, asks, [int(n) for n in enc["attention_mask"].sum(dim=1).tolist()])
    greedy = sampling.temperature == 0
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device)):
        lm.generate(
            **enc,
            streamer=rows,
            stopping_criteria=StoppingCriteriaList([RowsDone(rows)]),
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else 0,
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.min_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return [row.answer() for row in rows.rows]
