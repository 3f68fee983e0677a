"""One demo round's success metrics (demo/report.py extracts them; demo/report_page.py plots them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoundFigures:
    """One round's success metrics, extracted from its RoundResult."""

    candidate: str
    decision: str
    reward_accuracy: float | None
    reward_before: float | None
    reward_after: float | None
    control_rate: float | None
    treatment_rate: float | None
    lift: float | None
    lift_low: float | None
    lift_high: float | None
    users_control: float | None = None
    users_treatment: float | None = None
    decision_reason: str = ""
    true_quality_parent: float | None = None  # on held-out questions, never asked
    true_quality_candidate: float | None = None
    traffic_parent: float | None = None  # the same ground truth on questions like the users'
    traffic_candidate: float | None = None
    follow_up_parent: float | None = None  # the same ground truth on follow-up turns, after a run with conversations
    follow_up_candidate: float | None = None
    # Issue 14's per-round figures: how the reward model fares on the newest answers, how far the policy moved.
    reward_accuracy_recent: float | None = None  # held-out feedback pairs of the newest trigger (the newest policies' answers)
    reward_accuracy_on_policy: float | None = None  # pairs of the parent's own answers, judged by the hidden preference
    disagreement: float | None = None  # the reward ensemble's spread on held-out feedback
    disagreement_ppo: float | None = None  # ... on PPO's last rollout
    kl_parent: float | None = None
    kl_base: float | None = None
    gate_before: float | None = None
    gate_after: float | None = None
    history_events: float | None = None
    seconds: float | None = None  # wall time of the round, from the previous round's end to this one's
    # Issue 15's per-stage figures: the users' side (asking through the HTTP API) and the trainer's.
    serving_seconds: float | None = None
    serving_answers: float | None = None
    serving_tokens: float | None = None
    reward_model_seconds: float | None = None
    policy_seconds: float | None = None  # the whole policy job: corrections' SFT, evaluations, PPO, saving
    ppo_seconds: float | None = None
    # Issue 36's feedback trust (`trainers.trust`): whom the round's reward model down-weighted, and
    # how many of them the simulated population made adversarial (the report knows; the trainer does not).
    down_weighted_users: float | None = None
    down_weighted_share: float | None = None  # of the round's feedback
    adversaries_down_weighted: int | None = None
    corrections_learned: float | None = None
    corrections_not_learned: float | None = None

    @property
    def serving_truth(self) -> float | None:
        """The hidden preference of the version serving once the round is decided."""
        return self.true_quality_candidate if self.decision == "promote" else self.true_quality_parent

    @property
    def serving_traffic(self) -> float | None:
        """... on questions like the users'."""
        return self.traffic_candidate if self.decision == "promote" else self.traffic_parent

    @property
    def serving_follow_up(self) -> float | None:
        """... on follow-up turns."""
        return self.follow_up_candidate if self.decision == "promote" else self.follow_up_parent

    @property
    def policy_reward_gain(self) -> float | None:
        if self.reward_before is None or self.reward_after is None or self.reward_before <= 0:
            return None
        return self.reward_after / self.reward_before - 1
