"""TRL's GRPO / RLOO / KTO / DPO behind `optimise_policy`, on the micro policy (a few steps each,
seconds): metrics and a loadable saved model for every algorithm, KTO and DPO both from feedback
events and from the policy's own samples, and the example builders with literal data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import TrainingError
from core.hashing import stable_fraction
from core.learning_settings import PolicyTrainingSettings
from schemas.events import FeedbackEvent, Turn
from tests.unit.trainers.fast import FAST
from trainers.alternatives import (
    _reward_for_trl,
    _self_labelled_dpo,
    _self_labelled_kto,
    dpo_pairs,
    kto_examples,
    kto_weights,
    train_alternative,
)
from trainers.base_models import resolve_base_model
from trainers.chat_format import Conversation, Prompt
from trainers.chat_format import format_prompt as chat_prompt
from trainers.optimise import optimise_policy
from trainers.policy import load_policy
from trainers.synthetic import feedback_events, quality_reward, split_questions
from trainers.tiny_policy import format_prompt

FAST = {**FAST, "offline_epochs": 1}

TRAIN_QS, HELD_OUT_QS = (qs[:8] for qs in split_questions())
TRAIN, HELD_OUT = [q.text for q in TRAIN_QS], [q.text for q in HELD_OUT_QS]


def varied_reward(queries: Sequence[Prompt], responses: list[str]) -> list[float]:
    """The micro policy's answers all score 0 under the hidden preference; this one spreads them
    over [0, 1) (a stable hash of the text) so self-labelling finds better and worse samples."""
    return [stable_fraction("test-reward", r) for r in responses]


def _event(i: int, query: str, response: str, feedback_type: str, **kw) -> FeedbackEvent:
    return FeedbackEvent(
        event_id=f"e{i}",
        interaction_id=f"i{i}",
        user_id="u",
        query=query,
        response=response,
        model_version="v0",
        feedback_type=feedback_type,
        **kw,
    )


# ----------------------------------------------------------------------------- examples, literal data


def test_kto_examples_and_dpo_pairs_from_feedback():
    events = [
        _event(1, "q1", "good", "thumbs_up"),
        _event(2, "q1", "bad", "thumbs_down"),
        _event(3, "q2", "fine", "rating", rating=4),
        _event(4, "q2", "meh", "rating", rating=3),
        _event(5, "q3", "wrong", "correction", correction="right"),
    ]
    kto = kto_examples(events, min_rating=4)
    assert [(r["completion"], r["label"]) for r in kto] == [
        (" good", True),
        (" bad", False),
        (" fine", True),
        (" meh", False),
        (" right", True),
        (" wrong", False),
    ]
    assert kto[0]["prompt"] == format_prompt("q1")
    pairs = dpo_pairs(events, min_rating=4)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        (format_prompt("q1"), " good", " bad"),
        (format_prompt("q2"), " fine", " meh"),
        (format_prompt("q3"), " right", " wrong"),
    ]


def test_with_a_chat_template_the_examples_are_in_the_policys_chat_format():
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    events = [_event(1, "q1", "good", "thumbs_up"), _event(2, "q1", "bad", "thumbs_down")]
    kto = kto_examples(events, min_rating=4, tokenizer=tokenizer)
    assert [(r["prompt"], r["completion"]) for r in kto] == [
        (chat_prompt(tokenizer, "q1"), "good"),
        (chat_prompt(tokenizer, "q1"), "bad"),
    ]
    assert kto[0]["prompt"].startswith("<system>") and kto[0]["prompt"].endswith("<user>q1</s><assistant>")
    assert dpo_pairs(events, min_rating=4, tokenizer=tokenizer) == [
        {"prompt": chat_prompt(tokenizer, "q1"), "chosen": "good", "rejected": "bad"}
    ]


def test_self_labelled_examples_split_at_the_median_and_pair_every_better_sample():
    scored: dict[Prompt, list[tuple[str, float]]] = {"q": [("a", 0.9), ("b", 0.5), ("c", 0.1), ("d", 0.5)]}
    assert [(r["completion"], r["label"]) for r in _self_labelled_kto(scored)] == [
        (" a", True),
        (" b", False),
        (" c", False),
        (" d", False),
    ]
    pairs = {(p["chosen"], p["rejected"]) for p in _self_labelled_dpo(scored)}
    assert pairs == {(" a", " b"), (" a", " c"), (" a", " d"), (" b", " c"), (" d", " c")}  # ties give no pair
    ties: dict[Prompt, list[tuple[str, float]]] = {"q": [("a", 0.5), ("b", 0.5)]}
    assert _self_labelled_dpo(ties) == []


def test_kto_weights_balance_the_two_sides():
    rows = [{"label": True}] + [{"label": False}] * 3
    assert kto_weights(rows) == {"desirable_weight": 3.0, "undesirable_weight": 1.0}
    assert kto_weights([{"label": True}] * 2 + [{"label": False}]) == {"desirable_weight": 1.0, "undesirable_weight": 2.0}


def test_trl_reward_function_scores_the_prompt_as_given_and_the_stripped_completion():
    seen: list[tuple[list, list[str]]] = []

    def scores(queries: list, responses: list[str]) -> list[float]:
        seen.append((queries, responses))
        return [1.0] * len(queries)

    follow_up = Conversation("And how do I undo that?", MAIL)
    reward = _reward_for_trl(scores, ["q", follow_up])
    scored = reward([format_prompt("q"), "..."], [" answer ", "b"], query=["q", "x"], index=[0, 1], completion_ids=[[1], [2]])
    assert scored == [1.0, 1.0]
    assert seen == [(["q", follow_up], ["answer", "b"])]  # the conversation itself, not its formatted text


MAIL = (("user", "How do I reset my password in Mail?"), ("assistant", "Open Mail, go to Security, then press Reset."))
DRIVE = (("user", "How do I share a folder in Drive?"), ("assistant", "Open Drive, go to Sharing, then press Share."))


def test_kto_and_dpo_prompts_hold_the_earlier_turns_and_pair_only_in_one_conversation():
    undo = "And how do I undo that?"
    context = lambda turns: tuple(Turn(role=r, content=t) for r, t in turns)  # noqa: E731
    events = [
        _event(1, undo, "Press Restore in Mail.", "thumbs_up", context=context(MAIL), turn_index=1),
        _event(2, undo, "Open Drive.", "thumbs_down", context=context(MAIL), turn_index=1),
        _event(3, undo, "Press Unshare in Drive.", "thumbs_up", context=context(DRIVE), turn_index=1),
        _event(4, undo, "Wrong.", "correction", correction="Press Unshare.", context=context(DRIVE), turn_index=1),
    ]
    kto = kto_examples(events, min_rating=4)
    in_mail = "Query: How do I reset my password in Mail?\nResponse: Open Mail, go to Security, then press Reset.\n"
    assert kto[0]["prompt"] == in_mail + format_prompt(undo) == chat_prompt(None, Conversation(undo, MAIL))
    assert [(r["prompt"].startswith(in_mail), r["completion"], r["label"]) for r in kto] == [
        (True, " Press Restore in Mail.", True),
        (True, " Open Drive.", False),
        (False, " Press Unshare in Drive.", True),
        (False, " Press Unshare.", True),
        (False, " Wrong.", False),
    ]
    pairs = [(p["prompt"].split("\n")[0], p["chosen"], p["rejected"]) for p in dpo_pairs(events, min_rating=4)]
    assert pairs == [  # the same last question, two conversations: never a pair across them
        ("Query: How do I reset my password in Mail?", " Press Restore in Mail.", " Open Drive."),
        ("Query: How do I share a folder in Drive?", " Press Unshare in Drive.", " Wrong."),
        ("Query: How do I share a folder in Drive?", " Press Unshare.", " Wrong."),
    ]


# ----------------------------------------------------------------------------- training on the micro policy


def _check(metrics: dict, out: Path, algorithm: str) -> None:
    for key in (
        "mean_reward_before",
        "mean_reward_after",
        "reward_gain",
        "kl",
        "mean_length",
        "train_seconds",
        "steps",
        "examples",
    ):
        assert isinstance(metrics[key], float), key
    assert metrics["algorithm"] == algorithm and metrics["guardrails_fired"] == [] and metrics["steps"] >= 1
    lm = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(lm).__name__ == "LlamaForCausalLM" and tok.eos_token == "<|endoftext|>"


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_online_alternatives_train_evaluate_and_save(micro_policy: str, tmp_path: Path, algorithm: str):
    states = []
    metrics = optimise_policy(
        algorithm,
        micro_policy,
        varied_reward,
        TRAIN,
        HELD_OUT,
        PolicyTrainingSettings(**FAST),
        tmp_path / "policy",
        on_status=lambda *a: states.append(a),
    )
    _check(metrics, tmp_path / "policy", algorithm)
    assert metrics["steps"] == FAST["epochs"] * FAST["ppo_epochs"] and metrics["examples"] == len(TRAIN)
    assert states[0][0] == "started" and states[-1][0] == "finished"
    assert any(s[1] == algorithm and s[2].startswith("step ") for s in states)  # TRL's logs reach on_status


@pytest.mark.parametrize("algorithm", ["kto", "dpo"])
def test_offline_alternatives_learn_from_feedback_events(micro_policy: str, tmp_path: Path, algorithm: str):
    events = feedback_events(TRAIN_QS, 40, seed=3)
    expected = len(kto_examples(events, 4)) if algorithm == "kto" else len(dpo_pairs(events, 4))
    metrics = optimise_policy(
        algorithm,
        micro_policy,
        quality_reward,
        TRAIN,
        HELD_OUT,
        PolicyTrainingSettings(**FAST),
        tmp_path / "policy",
        feedback_events=events,
    )
    _check(metrics, tmp_path / "policy", algorithm)
    assert metrics["examples"] == expected > 0


@pytest.mark.parametrize("algorithm", ["kto", "dpo"])
def test_offline_alternatives_label_the_policys_own_samples_without_feedback(micro_policy: str, tmp_path: Path, algorithm: str):
    metrics = optimise_policy(
        algorithm, micro_policy, varied_reward, TRAIN, HELD_OUT, PolicyTrainingSettings(**FAST), tmp_path / "policy"
    )
    _check(metrics, tmp_path / "policy", algorithm)
    budget = FAST["epochs"] * FAST["batch_size"]  # PPO's rollout budget: 2 queries x 4 samples here
    if algorithm == "kto":  # every sample, labelled against the median
        assert metrics["examples"] == budget
    else:  # at most 6 ordered pairs from 4 samples of a query
        assert 0 < metrics["examples"] <= budget // 4 * 6


def test_alternative_with_lora_returns_a_plain_model(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    before = torch.cat([p.detach().flatten() for p in lm.parameters()]).clone()
    trained, figures = train_alternative("grpo", lm, tok, varied_reward, TRAIN, PolicyTrainingSettings(**FAST, lora_r=4))
    assert type(trained).__name__ == "LlamaForCausalLM" and figures["steps"] == 2
    assert not torch.equal(before, torch.cat([p.detach().flatten() for p in trained.parameters()]))


def test_grpo_samples_and_scores_conversations(micro_policy: str):
    lm, tok = load_policy(micro_policy)
    prompts = [Conversation(q, MAIL, "Be brief.") for q in TRAIN[:4]]
    seen: list = []

    def reward(queries: list, responses: list[str]) -> list[float]:
        seen.extend(queries)
        return varied_reward(queries, responses)

    train_alternative("grpo", lm, tok, reward, prompts, PolicyTrainingSettings(**FAST))
    assert seen and set(seen) <= set(prompts)  # each completion scored with the conversation it answered


def test_offline_alternatives_refuse_one_sided_data(micro_policy: str, tmp_path: Path):
    liked = [_event(i, TRAIN[0], "Open Mail.", "thumbs_up") for i in range(3)]
    with pytest.raises(TrainingError, match="only desirable"):
        optimise_policy(
            "kto",
            micro_policy,
            quality_reward,
            TRAIN,
            HELD_OUT,
            PolicyTrainingSettings(**FAST),
            tmp_path / "k",
            feedback_events=liked,
        )
    with pytest.raises(TrainingError, match="no usable examples in the feedback"):
        optimise_policy(
            "dpo",
            micro_policy,
            quality_reward,
            TRAIN,
            HELD_OUT,
            PolicyTrainingSettings(**FAST),
            tmp_path / "d",
            feedback_events=liked,
        )
    constant = lambda q, r: [0.5] * len(q)  # noqa: E731 - every sample ties: nothing to prefer
    with pytest.raises(TrainingError, match="no usable examples in the self-labelled samples"):
        optimise_policy("dpo", micro_policy, constant, TRAIN, HELD_OUT, PolicyTrainingSettings(**FAST), tmp_path / "s")
    assert not any(tmp_path.iterdir())
