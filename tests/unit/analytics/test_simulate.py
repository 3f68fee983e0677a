"""The A/A and power harness: simulated experiments with heterogeneous, heavy-tailed users through the
project's own decision code. Seeded, so the figures are the same on every run."""

from analytics.simulate import simulate, smallest_lift
from core.learning_settings import ABTestingSettings

AB = ABTestingSettings(min_users_per_variant=100)


def test_aa_false_decisions_stay_below_alpha_per_user_at_one_look_and_when_peeking():
    result = simulate(experiments=2000, users=500, lift=0.0, peeks=10, ab=AB, seed=20240611)
    print(
        f"A/A, {result.experiments} experiments x {result.peeks} looks: per user {result.per_user}, per event {result.per_event}"
    )
    assert result.per_user.one_look <= AB.alpha and result.per_user.peeking <= AB.alpha
    assert result.per_user.one_look <= result.per_user.peeking  # the last look is one of the looks
    # The same data counted per event: heavy users' correlated events pass for independent evidence.
    assert result.per_event.peeking > 2 * AB.alpha


def test_power_grows_with_the_lift_and_the_smallest_lift_reaches_it():
    small, large = (simulate(experiments=500, users=500, lift=lift, peeks=10, ab=AB, seed=1) for lift in (0.05, 0.4))
    assert small.promoted.peeking < large.promoted.peeking and large.promoted.peeking > 0.8
    assert abs(small.realised_lift - 0.05) < 0.02 and large.realised_lift < 0.4  # propensities are capped at 1
    found = smallest_lift(users=500, peeks=10, ab=AB, seed=1, experiments=500, steps=4)
    assert found.promoted.peeking >= 0.8 and 0 < found.lift <= 0.5
