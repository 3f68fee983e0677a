"""The simulated world's conversations: a follow-up resolves against the turn before it, its answer
is judged against what it resolves to (answering the earlier question again is bad), the judge
reads a conversation from its text alone, and the warm-up corpus and the held-out conversations
keep to their side of the train / held-out split."""

from __future__ import annotations

import random
from collections import Counter

from trainers.chat_format import Conversation
from trainers.synthetic import (
    FOLLOW_UP_STYLES,
    INVERSES,
    SYSTEM_PROMPTS,
    Dialogue,
    FollowUp,
    Question,
    all_questions,
    answer,
    draw_dialogue,
    follow_up_quality,
    follow_ups_of,
    held_out_follow_ups,
    is_held_out,
    quality,
    quality_reward,
    resolve,
    warmup_corpus,
)

MAIL = Question("Mail", "reset", "password", 0)
BLOCK = Question("Chat", "block", "contact", 1)


def find(earlier: Question, text: str) -> FollowUp:
    return next(f for f in follow_ups_of(earlier) if f.text == text)


def test_a_follow_up_resolves_against_the_earlier_question():
    assert find(MAIL, "And in Calendar?").target == Question("Calendar", "reset", "password", 0)
    assert find(BLOCK, "How do I undo that?").target == Question("Chat", "unblock", "contact", 0)
    assert find(MAIL, "What about the cache?").target == Question("Mail", "clear", "cache", 0)
    assert not any(f.kind == "undo" for f in follow_ups_of(MAIL))  # a password reset has no inverse here
    assert all(INVERSES[INVERSES[action]] == action for action in INVERSES)  # undoing an undo is the action again


def test_a_follow_up_answer_is_judged_against_the_conversation():
    rng = random.Random(0)
    for f in (find(MAIL, "And in Calendar?"), find(BLOCK, "Can I reverse that later?"), find(MAIL, "How about my cache?")):
        assert quality(f, answer(f, "helpful", rng)) == 1.0
        # The earlier question answered again, however well: it names what the follow-up replaced.
        assert quality(f, answer(f, "earlier", rng)) < 0.3 < quality(f.earlier, answer(f, "earlier", rng))
        assert max(quality(f, answer(f, style, rng)) for style in FOLLOW_UP_STYLES[1:]) < 0.6


def test_the_judge_reads_a_conversation_from_its_text_alone():
    rng = random.Random(1)
    for _ in range(50):
        dialogue = draw_dialogue(all_questions(), rng)
        answers = [answer(q, rng.choice(FOLLOW_UP_STYLES[:-1]), rng) for q in dialogue.asks]
        for turn, asked in enumerate(dialogue.asks):
            prompt = dialogue.prompt(turn, answers[:turn])
            assert resolve(prompt) == asked
            assert quality_reward([prompt], [answers[turn]]) == [quality(asked, answers[turn])]
    assert resolve(MAIL.text) == MAIL  # a bare question is a one-turn conversation
    assert resolve(Conversation("And in Calendar?")) is None  # a follow-up on nothing
    assert resolve(Conversation("And in Calendar?", (("user", "Hello?"), ("assistant", "Hi.")))) is None


def test_users_hold_conversations_of_one_to_three_questions_each_on_the_one_before():
    rng = random.Random(2)
    dialogues = [draw_dialogue(all_questions(), rng) for _ in range(2000)]
    turns = Counter(len(d.asks) for d in dialogues)
    assert set(turns) == {1, 2, 3} and turns[1] > turns[3]
    assert 0.2 < sum(d.system is not None for d in dialogues) / len(dialogues) < 0.4
    for d in dialogues:
        assert isinstance(d.asks[0], Question)
        assert all(isinstance(f, FollowUp) and f.earlier == prev.target for prev, f in zip(d.asks, d.asks[1:], strict=False))
    kinds = Counter(f.kind for d in dialogues for f in d.asks[1:] if isinstance(f, FollowUp))
    assert set(kinds) == {"app", "undo", "object"}


def test_a_dialogue_prompts_each_turn_with_the_earlier_answers():
    f = find(MAIL, "And in Calendar?")
    prompt = Dialogue((MAIL, f), SYSTEM_PROMPTS[0]).prompt(1, ["Open Mail."])
    assert prompt == Conversation("And in Calendar?", (("user", MAIL.text), ("assistant", "Open Mail.")), SYSTEM_PROMPTS[0])


def test_the_warm_up_corpus_answers_follow_ups_poorly_and_asks_only_train_questions():
    corpus = warmup_corpus(400, seed=0, conversations=600)
    single, multi = corpus[:400], corpus[400:]
    assert all(not p.history and p.system is None for p, _ in single)
    follow_ups = [(resolve(p), r) for p, r in multi if p.history]
    assert len(follow_ups) > 600 and all(isinstance(q, FollowUp) for q, _ in follow_ups)
    assert not any(is_held_out(q.target) for q, _ in follow_ups)  # type: ignore[union-attr]
    good = sum(quality(q, r) == 1.0 for q, r in follow_ups) / len(follow_ups)  # type: ignore[arg-type]
    assert 0.2 < good < 0.4  # like the first turns: about 30% helpful
    assert any(p.system for p, _ in multi)


def test_held_out_follow_ups_resolve_to_held_out_questions():
    dialogues = held_out_follow_ups()
    assert dialogues == held_out_follow_ups()  # a fixed set
    assert all(len(d.asks) == 2 and is_held_out(d.asks[1].target) for d in dialogues)
    assert {d.asks[1].kind for d in dialogues} == {"app", "undo", "object"}  # type: ignore[union-attr]
    assert sum(d.system is not None for d in dialogues) == len(dialogues) // 2


def test_follow_up_quality_rolls_each_conversation_out_with_the_policys_own_first_answer():
    seen: list[list[Conversation]] = []

    def oracle(prompts: list[Conversation], seed: int) -> list[str]:
        seen.append(prompts)
        return [answer(resolve(p), "helpful", random.Random(seed)) for p in prompts]  # type: ignore[arg-type]

    def forgetful(prompts: list[Conversation], seed: int) -> list[str]:  # answers the first question, always
        return [answer(resolve(p.history[0][1] if p.history else p.query), "helpful", random.Random(seed)) for p in prompts]  # type: ignore[arg-type]

    assert follow_up_quality(oracle, samples=1) == 1.0
    first, second = seen
    assert [p.history[-1][1] for p in second] == oracle(first, 0)  # the first answers, in the follow-up's context
    assert follow_up_quality(forgetful, samples=1) < 0.2
