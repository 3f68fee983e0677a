"""Corrections as demonstrations: which corrections stand, how they are encoded, and that the
supervised term teaches the policy the corrected answer."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import torch

from schemas import FeedbackEvent
from schemas.events import Turn
from trainers import chat_format
from trainers.chat_format import Conversation
from trainers.demonstrations import corrections, demonstration_loss, encode_demonstrations, fit_demonstrations
from trainers.policy import load_policy, sample
from trainers.tiny_policy import format_prompt

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(
    n: int, kind: str, interaction: str, correction: str | None = None, query: str = "How do I reset my password in Mail?"
) -> FeedbackEvent:
    return FeedbackEvent(
        event_id=f"e{n}",
        interaction_id=interaction,
        user_id="u",
        query=query,
        response="Sorry.",
        model_version="base",
        feedback_type=kind,
        correction=correction,
        timestamp=T0 + timedelta(seconds=n),
    )


def test_corrections_standing_are_the_demonstrations_once_each():
    events = [
        event(1, "correction", "i1", "Open Mail, go to Security."),
        event(2, "thumbs_down", "i1"),  # a correction stays beside a thumb
        event(3, "correction", "i2", "Open Mail, go to Security."),
        event(4, "correction", "i3", "Open Mail, go to Account."),
        event(5, "correction", "i3", "Open Mail, go to Sync."),
    ]  # a changed correction: the latest counts
    assert corrections(events) == [
        (Conversation("How do I reset my password in Mail?"), "Open Mail, go to Security."),
        (Conversation("How do I reset my password in Mail?"), "Open Mail, go to Sync."),
    ]


def test_a_correction_is_learned_in_its_conversation(micro_policy: str):
    _, tok = load_policy(micro_policy)
    earlier = (("user", "How do I reset my password in Mail?"), ("assistant", "Open Mail, go to Security, then press Reset."))
    followed = event(1, "correction", "i1", "Open Mail, go to Security, then press Restore.", query="And how do I undo that?")
    followed = followed.model_copy(update={"context": tuple(Turn(role=r, content=t) for r, t in earlier), "turn_index": 1})
    (demo,) = corrections([followed])
    assert demo == (Conversation("And how do I undo that?", earlier), "Open Mail, go to Security, then press Restore.")
    batch = encode_demonstrations(tok, [demo])
    prompt = batch.input_ids[0][: int(batch.target_mask[0].nonzero()[0]) + 1]
    assert tok.decode(prompt) == chat_format.format_prompt(tok, demo[0])  # the earlier turns, then the question
    # Too long: the oldest turn goes, the question and the answer stay whole.
    last = chat_format.format_prompt(tok, demo[0].query) + chat_format.format_completion(tok, demo[1])
    cut = encode_demonstrations(tok, [demo], max_tokens=len(tok(last)["input_ids"]) + 1 + 4)
    text = str(tok.decode(cut.input_ids[0]))
    assert "password" not in text and text.endswith("Query: And how do I undo that?\nResponse: " + demo[1] + tok.eos_token)


def test_only_the_correction_and_its_eos_are_targets():
    _, tok = load_policy("tiny")
    batch = encode_demonstrations(
        tok, [("Where?", "Open Mail."), ("How do I rename my device in Maps?", "Go to Maps > Settings.")]
    )
    for row, target, mask in zip(batch.input_ids, batch.target_mask, batch.attention_mask, strict=True):
        prompt = len(
            tok(format_prompt("Where?" if mask.sum() < batch.input_ids.shape[1] else "How do I rename my device in Maps?"))[
                "input_ids"
            ]
        )
        predicted = row[1:][target.bool()].tolist()  # the tokens the loss asks the policy to produce
        assert predicted[-1] == tok.eos_token_id
        answer = tok.decode(predicted[:-1])
        assert isinstance(answer, str) and answer.strip() in ("Open Mail.", "Go to Maps > Settings.")
        assert target[: prompt - 1].sum() == 0


def test_the_supervised_term_teaches_the_corrected_answer():
    lm, tok = load_policy("tiny")
    torch.manual_seed(0)
    demo = [("How do I reset my password in Mail?", "Open Mail, go to Security, select password, then press Reset.")]
    batch = encode_demonstrations(tok, demo)
    before = demonstration_loss(lm, batch).item()
    assert math.isnan(fit_demonstrations(lm, tok, [], epochs=3, batch_size=8, learning_rate=3e-3))  # nothing to learn: untouched
    assert demonstration_loss(lm, batch).item() == before
    fit_demonstrations(lm, tok, demo, epochs=30, batch_size=8, learning_rate=3e-3)
    assert demonstration_loss(lm, batch).item() < before / 4
    answer = sample(lm, tok, [demo[0][0]], max_new_tokens=32, temperature=1.0, top_p=1.0, greedy=True).responses[0]
    assert answer == demo[0][1]


def test_the_supervised_passes_stop_at_max_steps(monkeypatch):
    import trainers.demonstrations as demonstrations

    lm, tok = load_policy("tiny")
    seen: list[int] = []  # demonstrations in each step's batch
    real_loss = demonstrations.demonstration_loss

    def counting_loss(lm, batch):
        seen.append(len(batch.input_ids))
        return real_loss(lm, batch)

    monkeypatch.setattr(demonstrations, "demonstration_loss", counting_loss)
    demos = [(f"How do I open item {n} in Mail?", f"Open Mail, then item {n}.") for n in range(5)]
    fit_demonstrations(lm, tok, demos, epochs=4, batch_size=2, learning_rate=1e-4)
    passes = [sorted(seen[i : i + 3]) for i in range(0, len(seen), 3)]
    assert passes == [[1, 2, 2]] * 4  # 4 passes of 3 batches, in a shuffled order
    seen.clear()
    fit_demonstrations(lm, tok, demos, epochs=4, batch_size=2, learning_rate=1e-4, max_steps=7)
    assert len(seen) == 7 and sorted(seen[:3]) == sorted(seen[3:6]) == [1, 2, 2]  # two whole passes, then the cap


def test_a_batch_holds_demonstrations_of_similar_length(monkeypatch):
    import trainers.demonstrations as demonstrations

    lm, tok = load_policy("tiny")
    lengths: list[list[int]] = []  # the tokens of each demonstration of each step's batch
    real_loss = demonstrations.demonstration_loss

    def recording_loss(lm, batch):
        lengths.append(batch.attention_mask.sum(dim=1).tolist())
        return real_loss(lm, batch)

    monkeypatch.setattr(demonstrations, "demonstration_loss", recording_loss)
    short = [(Conversation(f"Open item {n}?"), "Open it.") for n in range(4)]
    context = "How do I open the settings of my account in Mail and then change its password?"
    long = [(Conversation(f"And item {n}?", (("user", context), ("assistant", context))), "Open it.") for n in range(4)]
    fit_demonstrations(lm, tok, short + long, epochs=3, batch_size=4, learning_rate=1e-4, seed=1)
    assert len(lengths) == 6
    for batch in lengths:  # a batch pads to its longest: short and long ones are not mixed
        assert max(batch) - min(batch) < 10, lengths
