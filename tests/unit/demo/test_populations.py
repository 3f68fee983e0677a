"""Named user populations: `kind` reacts exactly as the users did before populations had names (the
same verdicts from the same random draws), `realistic` and `hostile` give the shares they promise,
adversaries act against the preference, and no user ever asks a held-out question."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from demo.populations import CONTRARIAN, POPULATIONS, RANDOM, Behaviour, described
from demo.users import Population
from trainers.preferences import PREFERENCES
from trainers.synthetic import FOLLOW_UP_STYLES, STYLES, Asked, FollowUp, Question, answer, follow_ups_of, is_held_out, quality

MAIL = Question("Mail", "reset", "password", 0)
BLOCK = Question("Chat", "block", "contact", 1)


def code(verdict: dict | None) -> str:
    if verdict is None:
        return "-"
    return {"thumbs_up": "+", "thumbs_down": "x", "correction": "c"}.get(verdict["type"]) or str(verdict["rating"])


def test_kind_users_give_the_verdicts_they_gave_before_populations_had_names():
    rng = random.Random(7)
    pairs: list[tuple[Asked, str]] = [
        (q, answer(q, s, rng)) for q in (MAIL, BLOCK, Question("Drive", "share", "folder", 2)) for s in STYLES
    ]
    pairs += [(f := follow_ups_of(MAIL)[0], answer(f, s, rng)) for s in FOLLOW_UP_STYLES]
    population, draws = Population(10, seed=5, behaviour=POPULATIONS["kind"]), random.Random(11)
    verdicts = [population.reaction(q, a, draws, population.users[0]) for _ in range(3) for q, a in pairs]
    # Computed with demo/users.py as it was before named populations (git show 1878b8a:demo/users.py).
    assert "".join(map(code, verdicts)) == "+xcx+x2x42xx44xxc54x25x1x-31x+xxx-+31x5+-2+xxc++cxx"
    assert [v["correction"] for v in verdicts if v and v["type"] == "correction"] == [
        "In Mail open Storage, choose password and tap Reset.",
        "In Calendar open Security, choose password and tap Reset.",
        "Open Drive, go to Storage, select folder, then press Share.",
        "In Calendar open Security, choose password and tap Reset.",
    ]
    assert draws.random() == 0.685145955333698  # not one random number more or less
    assert population.cast.weights is None and not population.adversaries
    assert population.pick(random.Random(3)) == random.Random(3).choice(population.users)  # users drawn as before


def stub(q: Asked, rng: random.Random) -> str:
    """Half the answers helpful, the rest dodges, echoes and wrong answers: no model."""
    return answer(q, "helpful" if rng.random() < 0.5 else rng.choice(STYLES[1:]), rng)


def simulate(name: str, talks: int, seed: int = 0) -> tuple[Population, list[tuple[str, Asked, dict | None]]]:
    """`talks` users' one question each, answered by `stub`, and their reactions."""
    population, rng = Population(500, seed=seed, behaviour=POPULATIONS[name]), random.Random(seed + 1)
    out = []
    for _ in range(talks):
        user, q = population.pick(rng), population.dialogue(rng).asks[0]
        out.append((user, q, population.reaction(q, stub(q, rng), rng, user)))
    return population, out


@pytest.mark.parametrize(("name", "rate", "corrections"), [("kind", 0.9, 0.029), ("realistic", 0.1, 0.0087)])
def test_a_population_reacts_and_corrects_as_often_as_it_says(name: str, rate: float, corrections: float):
    _, reactions = simulate(name, 20_000)
    answered = len(reactions)
    assert sum(v is not None for *_, v in reactions) / answered == pytest.approx(rate, abs=0.01)
    # Of the answers: feedback x (1 - rating_share) x disliked (about half here) x correction_share.
    assert sum(v is not None and v["type"] == "correction" for *_, v in reactions) / answered == pytest.approx(
        corrections, rel=0.2
    )


def test_realistic_corrections_are_sometimes_wrong_thumbs_sometimes_contradict_and_some_users_ask_much_more():
    population, reactions = simulate("realistic", 30_000)
    corrections = [quality(q, v["correction"]) for _, q, v in reactions if v and v["type"] == "correction"]
    assert len(corrections) > 150 and set(corrections) <= {0.75, 0.8, 1.0}  # the menu or the app wrong: one detail
    assert sum(c < 1 for c in corrections) / len(corrections) == pytest.approx(0.25, abs=0.08)
    asks = Counter(user for user, *_ in reactions)
    busiest, median = asks.most_common(1)[0][1], sorted(asks.values())[len(asks) // 2]
    assert busiest > 8 * median
    assert population.cast.weights is not None and not population.adversaries


def test_a_realistic_thumb_contradicts_the_users_liking_one_time_in_ten():
    population, rng = Population(50, seed=0, behaviour=POPULATIONS["realistic"]), random.Random(0)
    good = answer(MAIL, "helpful", rng)
    thumbs = [v["type"] for _ in range(40_000) if (v := population.reaction(MAIL, good, rng)) and v["type"].startswith("thumbs")]
    assert thumbs.count("thumbs_down") / len(thumbs) == pytest.approx(POPULATIONS["realistic"].thumb_flip_share, abs=0.02)


def test_hostile_adversaries_are_few_but_give_much_of_the_feedback():
    population, reactions = simulate("hostile", 20_000)
    assert len(population.adversaries) == round(0.08 * 500)
    feedback = [(user, v) for user, _, v in reactions if v is not None]
    by_user = Counter(user for user, _ in feedback)
    adversarial = sum(by_user[u] for u in population.adversaries) / len(feedback)
    heavy = sum(n for _, n in Counter({u: by_user[u] for u in population.adversaries}).most_common(3)) / len(feedback)
    assert 0.1 < heavy < 0.2 and 0.2 < adversarial < 0.35  # measured: 0.15 and 0.28
    asked = sum(1 for user, *_ in reactions if user in population.adversaries)
    assert sum(by_user[u] for u in population.adversaries) / asked == pytest.approx(0.3, abs=0.03)


def test_adversaries_act_against_the_preference():
    population = Population(500, seed=0, behaviour=POPULATIONS["hostile"])
    roles = Counter(population.cast.role(u) for u in population.adversaries)
    assert roles[CONTRARIAN] == roles[RANDOM] == 20
    contrarian = next(u for u in population.adversaries if population.cast.role(u) == CONTRARIAN)
    voter = next(u for u in population.adversaries if population.cast.role(u) == RANDOM)
    rng = random.Random(1)
    good, bad = answer(MAIL, "helpful", rng), "Try turning it off and on again."
    assert (quality(MAIL, good), quality(MAIL, bad)) == (1.0, 0.0)

    def reactions(response: str, user: str | None, n: int = 4000) -> list[dict]:
        out = [population.reaction(MAIL, response, rng, user) for _ in range(n)]
        if user is not None:  # an adversary reacts to its share of answers
            assert 1 - out.count(None) / n == pytest.approx(POPULATIONS["hostile"].adversary_feedback_rate, abs=0.03)
        return [v for v in out if v is not None]

    def up_share(verdicts: list[dict]) -> float:
        thumbs = [v["type"] for v in verdicts if v["type"].startswith("thumbs")]
        return thumbs.count("thumbs_up") / len(thumbs)

    on_good, on_bad = reactions(good, contrarian), reactions(bad, contrarian)
    assert up_share(on_good) == pytest.approx(0.1, abs=0.03) and up_share(on_bad) == pytest.approx(0.9, abs=0.03)  # 10%: slips
    honest = Counter(v["rating"] for v in reactions(good, None, 40_000) if v["type"] == "rating").most_common(1)[0][0]
    assert Counter(v["rating"] for v in on_good if v["type"] == "rating").most_common(1)[0][0] == 6 - honest == 1
    corrections = [quality(MAIL, v["correction"]) for v in on_good if v["type"] == "correction"]
    assert corrections and max(corrections) < 0.5  # a bad answer sent to "correct" a good one
    assert not any(v["type"] == "correction" for v in on_bad)  # ... and none to a bad one
    assert up_share(reactions(good, voter)) == pytest.approx(up_share(reactions(bad, voter)), abs=0.05)  # whatever the answer


def test_a_population_reacts_by_its_preference():
    long = (
        "Open Mail, then go to Storage, then select password, then look around for a while, read what it says, and press Reset."
    )
    kind = Population(10, seed=0)
    concise = Population(10, seed=0, preference=PREFERENCES["concise"])
    rng = random.Random(0)
    liked = [
        sum(v is not None and v["type"] == "thumbs_up" for v in (p.reaction(MAIL, long, rng) for _ in range(3000)))
        for p in (kind, concise)
    ]
    assert quality(MAIL, long) == 1.0 and quality(MAIL, long, PREFERENCES["concise"]) == pytest.approx(0.6)
    assert liked[0] > 1.4 * liked[1]


def test_users_never_ask_a_held_out_question():
    for name in POPULATIONS:
        population = Population(100, seed=1, behaviour=POPULATIONS[name], conversations=True)
        rng = random.Random(2)
        dialogues = [population.dialogue(rng) for _ in range(3000)]
        asked = [q for d in dialogues for q in d.asks]
        assert not any(is_held_out(q.target) for q in asked)
        assert sum(isinstance(q, FollowUp) for q in asked) > 2000  # follow-ups were asked, just not held-out ones
    singles, rng = Population(100, seed=1), random.Random(3)
    assert not any(is_held_out(singles.dialogue(rng).asks[0].target) for _ in range(3000))


def test_the_cast_is_the_seeds_and_help_lists_every_population():
    a, b = (Population(500, seed=4, behaviour=POPULATIONS["hostile"]) for _ in range(2))
    assert a.adversaries == b.adversaries and a.cast == b.cast
    assert a.adversaries != Population(500, seed=5, behaviour=POPULATIONS["hostile"]).adversaries
    lines = described()
    assert list(lines) == list(POPULATIONS) and lines["hostile"].startswith("realistic with adversary_share 0.08")
    assert POPULATIONS["kind"] == Behaviour()  # the default everywhere
