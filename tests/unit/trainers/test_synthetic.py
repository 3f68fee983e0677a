"""The simulated world's conversations: a follow-up resolves against the turn before it, its answer
is judged against what it resolves to (answering the earlier question again is bad), the judge
reads a conversation from its text alone, and the warm-up corpus and the held-out conversations
keep to their side of the train / held-out split. Named preferences: the default scores as the one
preference before them did, the others as they say."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from trainers.chat_format import Conversation
from trainers.preferences import DEFAULT_PREFERENCE, PREFERENCES
from trainers.synthetic import (
    APPS,
    FOLLOW_UP_STYLES,
    INVERSES,
    STYLES,
    SYSTEM_PROMPTS,
    Asked,
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
    on_traffic_questions,
    quality,
    quality_reward,
    resolve,
    split_questions,
    warmup_corpus,
)

MAIL = Question("Mail", "reset", "password", 0)
BLOCK = Question("Chat", "block", "contact", 1)
ACCOUNT = Question("Mail", "delete", "account", 0)  # "account" is also a menu, and "email" names Mail


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


def old_quality(q: Asked, response: str) -> float:
    """`quality` as it was before named preferences (git show 1878b8a:trainers/synthetic.py), verbatim."""
    if isinstance(q, FollowUp):
        again = re.search(rf"\b{re.escape(q.replaced.lower())}\b", response.lower()) is not None
        return max(0.0, old_quality(q.target, response) - (0.5 if again else 0.0))
    text = response.lower()
    names_object = q.obj in text
    names_app = q.app.lower() in text
    names_menu = q.menu.lower() in text
    gives_step = q.verb in text and any(w in text for w in ("press", "tap", "choose", "select"))
    echoes = text.startswith(("you want", "so you need")) or q.text.lower() in text
    score = 0.3 * names_object + 0.2 * names_app + 0.25 * names_menu + 0.25 * gives_step
    return max(0.0, score - (0.5 if echoes else 0.0))


def test_the_default_preference_scores_every_answer_as_before():
    rng = random.Random(4)
    scored = 0
    for _ in range(1500):
        dialogue = draw_dialogue(all_questions(), rng)
        for q in dialogue.asks:
            styles = FOLLOW_UP_STYLES if isinstance(q, FollowUp) else STYLES
            for response in (answer(q, rng.choice((*styles, "flawed")), rng), answer(dialogue.asks[0], "helpful", rng)):
                assert quality(q, response) == quality(q, response, PREFERENCES["default"]) == old_quality(q, response)
                scored += 1
    assert scored > 3000
    prompts = [Conversation(q.text) for q in all_questions()[:50]]
    responses = [answer(q, "helpful", rng) for q in all_questions()[:50]]
    assert quality_reward(prompts, responses) == quality_reward(prompts, responses, DEFAULT_PREFERENCE)


def test_concise_users_mark_long_answers_down_and_steps_first_users_want_the_way():
    concise = PREFERENCES["concise"]
    short = answer(MAIL, "helpful", random.Random(0))
    assert quality(MAIL, short, concise) == quality(MAIL, short) == 1.0  # a dozen words or fewer: no cost
    padded = short + " Then wait." * 8
    padded = " ".join(padded.split()[:16])  # 4 words over a dozen
    assert quality(MAIL, padded) == 1.0 and quality(MAIL, padded, concise) == pytest.approx(1.0 - 4 * 0.05)
    rambling = short + " That is all there is to it." * 10
    assert quality(MAIL, rambling, concise) == pytest.approx(0.6)  # at most 0.4 off
    way = f"Go to {MAIL.menu} and press {MAIL.verb.capitalize()}."  # no app, no object
    assert quality(MAIL, way, PREFERENCES["steps-first"]) > 0.7 > quality(MAIL, way) == 0.5
    assert all(sum((p.obj, p.app, p.menu, p.step)) == pytest.approx(1.0) for p in PREFERENCES.values())


def test_a_flawed_answer_gets_one_detail_wrong():
    rng = random.Random(5)
    scores = Counter(quality(q, answer(q, "flawed", rng)) for q in all_questions())
    assert set(scores) == {0.75, 0.8} and min(scores.values()) > 60  # another menu, or another app: about evenly
    assert quality(MAIL, answer(MAIL, "flawed", rng)) < 1 and quality(ACCOUNT, answer(ACCOUNT, "flawed", rng)) < 1


def test_follow_up_quality_judges_by_the_preference_asked_for():
    def rambler(prompts: list[Conversation], seed: int) -> list[str]:
        return [answer(resolve(p), "helpful", random.Random(seed)) + " Then wait." * 6 for p in prompts]  # type: ignore[arg-type]

    assert follow_up_quality(rambler, samples=1) == 1.0 > follow_up_quality(rambler, samples=1, preference=PREFERENCES["concise"])


def test_users_asking_train_questions_never_ask_a_held_out_one_even_in_follow_ups():
    train, held_out = split_questions()
    rng = random.Random(6)
    dialogues = [draw_dialogue(train, rng, allowed=lambda q: not is_held_out(q)) for _ in range(3000)]
    asked = [q for d in dialogues for q in d.asks]
    assert not any(is_held_out(q.target) for q in asked)
    assert sum(isinstance(q, FollowUp) for q in asked) > 2000
    # Unrestricted, the same conversations would have asked held-out questions in follow-ups.
    assert any(is_held_out(q.target) for d in (draw_dialogue(train, rng) for _ in range(300)) for q in d.asks)


def test_the_on_traffic_questions_are_a_fixed_sample_of_train_questions_as_many_as_the_held_out_ones():
    train, held_out = split_questions()
    questions = on_traffic_questions()
    assert questions == on_traffic_questions() and len(questions) == len(held_out) == len(set(questions))
    assert set(questions) <= set(train)
    assert len({q.app for q in questions}) == len(APPS)  # spread over the apps, not the first ones listed
