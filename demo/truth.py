"""The ground truth of a demo run: the hidden preference (`trainers.synthetic.quality`, which the
system never sees) of each version's answers, on held-out questions, "held out (never asked)": no
simulated user asks their (app, object) combinations, so no feedback concerned them, and, apart, on
as many questions like the users' ("on traffic", `synthetic.on_traffic_questions`). The gap between
the two is what a version learnt of the questions it was told about and failed to carry over.
After a run with conversations, also on follow-up turns (`synthetic.follow_up_quality`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the assistant's model code loads when a report is written
    from assistant.answering import LoadedPolicy
    from trainers.chat_format import Prompt
    from trainers.preferences import Preference
    from trainers.synthetic import Question


@dataclass(frozen=True)
class Truth:
    """Each version's hidden preference, by version."""

    held_out: dict[str, float]
    on_traffic: dict[str, float]
    follow_ups: dict[str, float]  # empty after a run without conversations


def true_quality(
    registry_root: Path, versions: set[str], max_new_tokens: int, follow_ups: bool = False, preference: str = "default"
) -> Truth:
    """`held_out_quality` and `on_traffic_quality` of each registry version and, with `follow_ups`,
    its hidden preference on follow-up turns, all by the named `trainers.preferences.PREFERENCES` entry."""
    from assistant.service import load_version
    from registry.store import ModelRegistry
    from trainers.preferences import PREFERENCES
    from trainers.synthetic import follow_up_quality

    registry = ModelRegistry(registry_root)
    taste = PREFERENCES[preference]
    truth = Truth({}, {}, {})
    for version in sorted(versions):
        policy = load_version(registry, version)
        truth.held_out[version] = held_out_quality(policy, max_new_tokens, preference=taste)
        truth.on_traffic[version] = on_traffic_quality(policy, max_new_tokens, preference=taste)
        if follow_ups:
            truth.follow_ups[version] = follow_up_quality(answers_of(policy, max_new_tokens), preference=taste)
    return truth


def held_out_quality(policy: LoadedPolicy, max_new_tokens: int, samples: int = 2, preference: Preference | None = None) -> float:
    """Mean hidden preference of a loaded policy's answers to the held-out questions (ground truth),
    `samples` seeded answers to each."""
    from trainers.synthetic import split_questions

    return mean_quality(policy, split_questions()[1], max_new_tokens, samples, preference)


def on_traffic_quality(
    policy: LoadedPolicy, max_new_tokens: int, samples: int = 2, preference: Preference | None = None
) -> float:
    """... to as many questions of the kind the users ask (`synthetic.on_traffic_questions`)."""
    from trainers.synthetic import on_traffic_questions

    return mean_quality(policy, on_traffic_questions(), max_new_tokens, samples, preference)


def mean_quality(
    policy: LoadedPolicy, questions: list[Question], max_new_tokens: int, samples: int, preference: Preference | None
) -> float:
    from assistant.service import answer
    from trainers.preferences import DEFAULT_PREFERENCE
    from trainers.synthetic import quality

    scores = []
    for s in range(samples):
        answers = answer(policy, [q.text for q in questions], max_new_tokens, seed=s)
        scores += [quality(q, a, preference or DEFAULT_PREFERENCE) for q, a in zip(questions, answers, strict=True)]
    return sum(scores) / len(scores)


def answers_of(policy: Any, max_new_tokens: int) -> Callable[[Sequence[Prompt], int], list[str]]:
    """A loaded policy's answers to some questions (or conversations), sampled with a seed."""
    from assistant.service import answer

    return lambda queries, seed: answer(policy, queries, max_new_tokens, seed=seed)


def adversaries_down_weighted(registry_root: Path, results: Sequence[dict], adversaries: set[str]) -> dict[str, int]:
    """By candidate: how many of the users its round's reward model down-weighted (`trainers.trust`,
    the weights saved beside it) the population made adversarial."""
    from registry.store import ModelRegistry
    from trainers.trust import DOWN_WEIGHTED, load_trust

    registry = ModelRegistry(registry_root)
    out = {}
    for result in results:
        rm_version = result.get("published", {}).get("reward_model_version")
        if rm_version and registry.exists("reward_models", rm_version):
            trust = load_trust(registry.path("reward_models", rm_version))
            out[result["candidate"]] = sum(w < DOWN_WEIGHTED for u, w in trust.weights.items() if u in adversaries)
    return out
