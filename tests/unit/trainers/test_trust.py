import itertools
import math

import pytest

from core.learning_settings import FeedbackTrustSettings
from schemas import FeedbackEvent
from trainers.dataset import build_dataset
from trainers.trust import load_trust, save_trust, trusted_corrections, user_trust

GOOD, BAD = "Open Mail, go to Settings, select password, then press Reset.", "Sorry, I cannot help with Mail right now."
counter = itertools.count()


def verdict(user: str, liked: bool, query: str = "How do I reset my password in Mail?", response: str | None = None):
    n = next(counter)
    return FeedbackEvent(
        event_id=f"e{n}",
        interaction_id=f"i{n}",
        user_id=user,
        query=query,
        response=response or (GOOD if liked else BAD),
        model_version="v1",
        feedback_type="thumbs_up" if liked else "thumbs_down",
    )


def correction(user: str, fix: str, response: str = BAD, query: str = "How do I reset my password in Mail?"):
    n = next(counter)
    return FeedbackEvent(
        event_id=f"c{n}",
        interaction_id=f"i{n}",
        user_id=user,
        query=query,
        response=response,
        model_version="v1",
        feedback_type="correction",
        correction=fix,
    )


def honest_crowd(users: int = 40, per_user: int = 4) -> list[FeedbackEvent]:
    """Honest users judging the same two answers to a few questions: good liked, bad not."""
    events = []
    for u, k in itertools.product(range(users), range(per_user)):
        good = k % 2 == 0
        events.append(verdict(f"u{u}", good, query=f"q{k % 3}", response=GOOD if good else BAD))
    return events


# The defences are off by default (docs/decisions/0008): each test switches on what it checks.
ON = FeedbackTrustSettings(max_user_share=0.02, agreement_weighting=True, correction_filter=True)
NO_CAP = ON.model_copy(update={"max_user_share": None})


def test_a_heavy_user_is_capped_to_its_share_and_the_others_keep_weight_one():
    events = [verdict(f"u{n}", n % 2 == 0) for n in range(100)] + [verdict("heavy", True) for _ in range(100)]
    trust = user_trust(events, FeedbackTrustSettings(max_user_share=0.05, agreement_weighting=False), min_rating=4)
    assert trust.weight("heavy") == pytest.approx(10 / 100)  # 5% of 200 events = 10, of its 100
    assert trust.weight("u3") == 1.0
    assert trust.weight("never-seen") == 1.0
    assert trust.summary()["heaviest_user_share"] == pytest.approx(0.5)


def test_users_who_vote_against_or_at_random_on_the_same_answers_are_down_weighted():
    events = honest_crowd()
    events += [
        verdict("against", not good, query=f"q{n % 3}", response=GOOD if good else BAD)
        for n, good in enumerate([True, False] * 15)
    ]
    events += [
        verdict("coin", flip, query=f"q{n % 3}", response=GOOD) for n, flip in enumerate([True, False] * 15)
    ]  # liked at random
    trust = user_trust(events, NO_CAP, min_rating=4)
    assert trust.weight("against") == 0.0
    assert trust.weight("coin") < 0.5
    assert min(trust.weight(f"u{u}") for u in range(40)) > 0.9
    assert trust.summary()["users_down_weighted"] == 2


def test_the_previous_reward_model_is_the_consensus_where_no_two_users_judged_the_same_answer():
    answers = [(f"answer {n} good", True) for n in range(30)] + [(f"answer {n} bad", False) for n in range(30)]
    events = [verdict(f"u{n}", liked, response=text) for n, (text, liked) in enumerate(answers)]
    events += [verdict("against", not liked, response=text + " again") for text, liked in answers]

    def score(prompts, responses):
        return [1.0 if "good" in r else -1.0 for r in responses]

    assert user_trust(events, NO_CAP, min_rating=4).weight("against") == 1.0  # nothing to compare with
    trust = user_trust(events, NO_CAP, min_rating=4, score=score)
    assert trust.weight("against") == 0.0
    assert trust.weight("u3") == 1.0


def test_a_user_with_few_verdicts_keeps_most_of_its_weight_even_against_the_consensus():
    events = honest_crowd() + [verdict("newcomer", False, query="q0", response=GOOD)]
    trust = user_trust(events, NO_CAP, min_rating=4)
    assert 0.7 < trust.weight("newcomer") < 1.0


def test_without_agreement_weighting_or_a_cap_everyone_weighs_one():
    events = honest_crowd() + [verdict("against", False, response=GOOD) for _ in range(30)]
    trust = user_trust(events, FeedbackTrustSettings(max_user_share=None, agreement_weighting=False), min_rating=4)
    assert set(trust.weights.values()) == {1.0}
    assert math.isnan(trust.population_agreement)


def test_corrections_from_untrusted_users_beyond_a_users_share_or_not_preferred_are_not_learned():
    events = honest_crowd()
    events += [
        verdict("against", not good, query=f"q{n % 3}", response=GOOD if good else BAD)
        for n, good in enumerate([True, False] * 15)
    ]
    fixes = [correction(f"u{n}", GOOD) for n in range(20)]
    fixes += [correction("against", BAD, response=GOOD)]  # a "correction" worse than the answer
    fixes += [correction("u0", GOOD + f" ({n})") for n in range(5)]  # one user's many corrections
    fixes += [correction("u1", "Maybe later.")]  # a correction the reward model does not prefer
    trust = user_trust(events, NO_CAP, min_rating=4)

    def score(prompts, responses):
        return [1.0 if r.startswith("Open") else -1.0 for r in responses]

    settings = ON.model_copy(update={"max_user_share": 0.1})
    kept, report = trusted_corrections(events + fixes, trust, settings, score=score)
    learned = [e for e in kept if e.correction is not None]
    assert not [e for e in learned if e.user_id == "against" or e.correction == "Maybe later."]
    assert max(sum(e.user_id == u for e in learned) for u in ("u0", "u1")) <= math.ceil(0.1 * len(fixes))
    assert report["corrections_dropped_untrusted_user"] == 1
    assert report["corrections_dropped_not_preferred"] == 1
    assert report["corrections_dropped_user_share"] == 3  # u0's 6 corrections, 3 allowed
    assert len(kept) == len(events) + len(fixes) - 5  # every other event passes
    all_kept, _ = trusted_corrections(events + fixes, trust, FeedbackTrustSettings(), score=score)  # the default: off
    assert len(all_kept) == len(events + fixes)


def test_the_dataset_weighs_pairs_by_both_users_and_points_by_their_user():
    up, down = verdict("trusted", True), verdict("doubted", False)
    lone = verdict("doubted", True, query="Where can I clear the cache in Notes?")
    fix = correction("doubted", GOOD, query="How do I block a contact in Chat?")
    weights = {"trusted": 1.0, "doubted": 0.25}
    data = build_dataset([up, down, lone, fix], eval_fraction=0.0, user_weight=weights.__getitem__)
    by_source = dict(zip(data.train_pairs["source"], data.train_pairs["weight"], strict=True))
    assert by_source == {"thumbs": 0.25, "correction": 0.25}
    assert data.train_points["weight"] == [0.25]


def test_weights_saved_beside_a_reward_model_load_back_and_a_version_without_them_trusts_everyone(tmp_path):
    events = honest_crowd() + [verdict("heavy", True) for _ in range(50)]
    trust = user_trust(events, ON, min_rating=4)
    save_trust(tmp_path, trust)
    assert load_trust(tmp_path) == trust
    (tmp_path / "trust.json").unlink()
    assert load_trust(tmp_path).weight("heavy") == 1.0
