"""Bytes on the wire per answered turn: conversation events with the context inline (what version 2
does) against the context stored once by its content hash (the alternative), and against version 1
(the last turn alone), by the length of the conversation.

    python -m bench.event_sizes                  # a table; docs/decisions/0004-conversation-events.md has the figures

Inline, every event repeats the turns before it, so a conversation of T turns writes O(T^2) bytes;
by hash, each event carries a 64-hex-digit reference and a store that every reader joins gets each
turn once, chained to the context before it (O(T)). The figure is the ratio inline / by-hash for the interaction and
feedback events of one answered turn, raw and lz4-compressed one event at a time (the producer's
`compression.type`; turns of one conversation are seconds to minutes apart, so they rarely share a
batch and compress only within themselves).
"""

from __future__ import annotations

import argparse
import hashlib
import random

import lz4.frame

from schemas.events import FeedbackEvent, InteractionEvent, Turn
from trainers.synthetic import Question, all_questions, answer

SYSTEM_PROMPT_CHARS = 1_200  # a product's system prompt: persona, rules, a few examples
HASH_REF_CHARS = 64  # a sha256 in hex


def system_prompt(rng: random.Random) -> str:
    sentences = [
        f"When asked about {q.app}, name the {q.menu} menu and the exact steps." for q in rng.sample(all_questions(), 40)
    ]
    return " ".join(sentences)[:SYSTEM_PROMPT_CHARS]


def conversation(rng: random.Random, turns: int) -> list[tuple[Question, str]]:
    return [(q, " ".join(answer(q, "helpful", rng) for _ in range(3))) for q in rng.sample(all_questions(), turns)]


def turn_events(system: str, talk: list[tuple[Question, str]], how: str) -> tuple[bytes, bytes, bytes]:
    """The interaction and feedback events of the last turn of `talk`, and what a by-hash store gets
    for it: `inline` (the context in the events), `by-hash` (a reference to the context in the
    events; the store gets the turns new since the previous turn's context, chained to it) or `v1`."""
    context = [Turn(role="system", content=system)]
    for q, said in talk[:-1]:
        context += [Turn(role="user", content=q.text), Turn(role="assistant", content=said)]
    new_turns = context[-2:] if len(talk) > 1 else context
    stored = "".join(t.model_dump_json() for t in new_turns).encode() + b"0" * HASH_REF_CHARS  # + the parent's ref
    q, said = talk[-1]
    common: dict = {"user_id": "user-00042", "query": q.text, "response": said, "model_version": "policy-v0007"}
    if how == "v1":
        common["schema_version"], stored = 1, b""
    else:
        common |= {"conversation_id": "c" * 32, "turn_index": len(talk) - 1}
    if how == "inline":
        common["context"], stored = context, b""
    elif how == "by-hash":
        common["conversation_id"] = hashlib.sha256(stored).hexdigest()  # stands for a context ref of the same size
    interaction = InteractionEvent(latency_ms=120.0, **common)
    feedback = FeedbackEvent(interaction_id=interaction.interaction_id, feedback_type="thumbs_up", **common)
    return interaction.to_bytes(), feedback.to_bytes(), stored


def sizes(events: tuple[bytes, bytes, bytes]) -> tuple[int, int]:
    """(raw, lz4) bytes of one turn's events and store write, each compressed on its own."""
    return sum(map(len, events)), sum(len(lz4.frame.compress(e)) for e in events if e)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    system = system_prompt(rng)
    print("bytes of one answered turn (interaction + feedback event, + the by-hash store's write), raw / lz4")
    print("turn | v1 (no context) | inline      | by-hash     | inline / by-hash (lz4)")
    for turns in (1, 2, 3, 5, 10, 20, 32):
        talk = conversation(rng, turns)
        (v1, v1z), (inl, inlz), (hsh, hshz) = (sizes(turn_events(system, talk, how)) for how in ("v1", "inline", "by-hash"))
        print(f"{turns:4d} | {v1:6d} / {v1z:6d} | {inl:5d} / {inlz:5d} | {hsh:5d} / {hshz:5d} | {inlz / hshz:.2f}")


if __name__ == "__main__":
    main()
