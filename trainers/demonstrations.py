"""Corrections as demonstrations: a user's correction is the answer they wanted, so PPO also
learns it directly (a supervised term beside the RL objective, `policy.training.demo_coef`), not
only through the reward model's (correction > original) pair.

    demos = corrections(events)                          # [(conversation, correction)], the latest per answer
    batch = encode_demonstrations(tokenizer, demos[:8])  # prompt + correction + EOS, right-padded
    loss = demonstration_loss(lm, batch)                 # mean NLL of the correction's tokens
    fit_demonstrations(lm, tokenizer, demos, epochs=2, batch_size=8, learning_rate=2e-4)   # a supervised pass before RL

Two uses, both in `policy.training`: `demo_epochs` supervised passes over the corrections before
PPO starts (SFT then RL, as InstructGPT; the KL reference is then the fine-tuned start), and
`demo_coef`, the same loss as an anchor term inside every PPO update.

A correction is learned in its conversation: the prompt is the whole context the corrected answer
replied to (the app's system prompt, the earlier turns, the question), in the policy's chat format.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from schemas.events import FeedbackEvent, latest_verdicts
from trainers import distributed
from trainers.batching import length_batches, pad_batch
from trainers.chat_format import Conversation, Prompt, format_completion, format_prompt


def corrections(events: Iterable[FeedbackEvent]) -> list[tuple[Conversation, str]]:
    """(conversation, correction) of every correction still standing (`latest_verdicts`), one per
    distinct pair, in the order given."""
    out = {(Conversation.of(e), e.correction): None for e in latest_verdicts(events) if e.correction}
    return list(out)


@dataclass(frozen=True)
class DemoBatch:
    input_ids: torch.Tensor  # (B, T), right-padded
    attention_mask: torch.Tensor  # (B, T)
    target_mask: torch.Tensor  # (B, T - 1): 1 where the next token is part of the correction (or its EOS)


def demonstration_rows(
    tokenizer: PreTrainedTokenizerBase, demos: Sequence[tuple[Prompt, str]], max_tokens: int = 256
) -> list[tuple[list[int], list[int]]]:
    """(token ids, target flags) per demonstration: prompt (the conversation in the policy's own chat
    format) + correction + EOS, flag 1 where the next token is the correction's; the prompt is cut
    from the left (the oldest turns first) when the whole would pass `max_tokens`."""
    rows = []
    for conversation, correction in demos:
        prompt = tokenizer(format_prompt(tokenizer, conversation), add_special_tokens=False)["input_ids"]
        answer = tokenizer(format_completion(tokenizer, correction), add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        answer = answer[:max_tokens]
        prompt = prompt[max(0, len(prompt) + len(answer) - max_tokens) :]
        rows.append((prompt + answer, [0] * max(0, len(prompt) - 1) + [1] * len(answer)))
    return rows


def pad_demonstrations(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: torch.device | str = "cpu") -> DemoBatch:
    """`demonstration_rows` right-padded to the longest of them (`trainers.batching.pad_batch`)."""
    input_ids, attention_mask = pad_batch([ids for ids, _ in rows], pad_id, torch.device(device))
    target_mask = torch.zeros((len(rows), input_ids.shape[1] - 1))
    for i, (_, target) in enumerate(rows):
        target_mask[i, : len(target)] = torch.tensor(target, dtype=torch.float)
    return DemoBatch(input_ids, attention_mask, target_mask.to(device))


def encode_demonstrations(
    tokenizer: PreTrainedTokenizerBase,
    demos: Sequence[tuple[Prompt, str]],
    max_tokens: int = 256,
    device: torch.device | str = "cpu",
) -> DemoBatch:
    """One batch of demonstrations (`demonstration_rows`), right-padded."""
    return pad_demonstrations(demonstration_rows(tokenizer, demos, max_tokens), tokenizer.pad_token_id, device)


def demonstration_loss(lm: nn.Module, batch: DemoBatch) -> torch.Tensor:
    """Mean negative log-likelihood of the corrections' tokens (prompt tokens are context only)."""
    logits = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    nll = F.cross_entropy(logits.transpose(1, 2), batch.input_ids[:, 1:], reduction="none")
    return (nll * batch.target_mask).sum() / batch.target_mask.sum().clamp(min=1)


def demonstration_passes(
    rows: Sequence[tuple[list[int], list[int]]], batch_size: int, rng: random.Random
) -> Iterator[tuple[int, list[int]]]:
    """Endless (pass, row indices) mini-batches: each pass, length-sorted windows of a shuffled order
    (trainers.batching, as the reward model's), the batches then shuffled. Earlier turns make rows
    of very different lengths, and a batch pads to its longest."""
    lengths = [len(ids) for ids, _ in rows]
    for epoch in itertools.count():
        batches = length_batches(lengths, batch_size, rng)
        rng.shuffle(batches)
        yield from ((epoch, batch) for batch in batches)


def fit_demonstrations(
    lm: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    demos: Sequence[tuple[Prompt, str]],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
    max_steps: int | None = None,
) -> float:
    """Supervised passes over `demos` (AdamW, shuffled mini-batches), in place, ending early after
    `max_steps` optimiser steps if given; returns the last (possibly partial) epoch's mean loss
    (nan without demonstrations).

    Data-parallel under torchrun (`trainers.distributed`): every process draws the same mini-batch,
    computes the loss of its rows as their share of the mini-batch's target tokens, and the
    gradients are added up before the step: the one-process update."""
    if not demos or epochs < 1:
        return float("nan")
    device = next(lm.parameters()).device
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=learning_rate)
    rng = random.Random(seed)
    rows = demonstration_rows(tokenizer, demos)
    was_training = lm.training
    lm.train()
    losses: list[float] = []
    trainable = [p for p in lm.parameters() if p.requires_grad]
    last_epoch = 0
    for step, (epoch, indices) in enumerate(demonstration_passes(rows, batch_size, rng)):
        if epoch == epochs or step == max_steps:
            break
        if epoch != last_epoch:  # a new pass
            losses, last_epoch = [], epoch
        batch = pad_demonstrations([rows[i] for i in indices], tokenizer.pad_token_id, device)
        mine_rows = torch.tensor(
            distributed.shard(range(len(batch.input_ids)), distributed.rank(), distributed.world()), dtype=torch.long
        )
        optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=device)
        if len(mine_rows):  # a batch smaller than the processes leaves some without a row: they add nothing
            mine = DemoBatch(batch.input_ids[mine_rows], batch.attention_mask[mine_rows], batch.target_mask[mine_rows])
            loss = mine.target_mask.sum() / batch.target_mask.sum().clamp(min=1) * demonstration_loss(lm, mine)
            loss.backward()
        distributed.sum_gradients(trainable)
        nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        losses.append(distributed.total(loss.detach()).item())
    lm.train(was_training)
    return sum(losses) / len(losses)
