"""PPO for models larger than memory allows at full size, on the micro policy (seconds): LoRA as
configured in YAML (one definition for PPO and the TRL algorithms; PPO's reference is the model
with its adapters off), gradient accumulation (the same step as without), and checkpoints a run
resumes from (the same result as an uninterrupted run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.errors import TrainingError
from core.learning_settings import PolicyTrainingSettings
from core.settings import load_settings
from tests.unit.trainers.fast import FAST
from trainers import optimise, ppo, ppo_resume
from trainers.policy import load_policy
from trainers.policy_config import lora_config
from trainers.synthetic import quality_reward, split_questions

TRAIN, HELD_OUT = ([q.text for q in qs[:8]] for qs in split_questions())
# Corrections of different lengths: their micro-batches hold different shares of the target tokens.
DEMOS = [
    (TRAIN[0], "Open Mail."),
    (TRAIN[1], "Open Mail, go to Settings, then press Reset."),
    (TRAIN[2], "Go to Maps > Settings."),
]


def _params(lm: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in lm.parameters()]).clone()


def test_lora_settings_reach_peft_from_yaml_and_environment(monkeypatch: pytest.MonkeyPatch):
    assert lora_config(PolicyTrainingSettings()) is None  # lora_r 0: a full fine-tune
    default = lora_config(PolicyTrainingSettings(lora_r=4))
    assert default is not None
    assert (default.r, default.lora_alpha, default.lora_dropout, default.target_modules) == (
        4,
        8,
        0.0,
        "all-linear",
    )  # alpha unset: 2 x r
    settings = load_settings(
        policy={
            "training": {
                "lora_r": 8,
                "lora_alpha": 32,
                "lora_dropout": 0.1,
                "lora_target_modules": ["q_proj", "v_proj"],
                "grad_accumulation_steps": 4,
                "checkpoint_every": 5,
            }
        }
    )
    config = settings.policy.training
    assert (config.grad_accumulation_steps, config.checkpoint_every) == (4, 5)
    peft = lora_config(config)
    assert peft is not None
    assert (peft.r, peft.lora_alpha, peft.lora_dropout, peft.target_modules) == (8, 32, 0.1, {"q_proj", "v_proj"})
    monkeypatch.setenv("RLHF_POLICY__TRAINING__LORA_R", "16")
    monkeypatch.setenv("RLHF_POLICY__TRAINING__LORA_TARGET_MODULES", '["q_proj"]')
    from_env = lora_config(load_settings().policy.training)
    assert from_env is not None and from_env.target_modules == {"q_proj"}


def test_ppo_with_lora_holds_the_kl_to_the_model_with_its_adapters_off(
    micro_policy: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    frozen_refs = []

    class SpyReference(ppo.Reference):
        def __init__(self, policy, frozen):
            frozen_refs.append(frozen)
            super().__init__(policy, frozen)

    monkeypatch.setattr(ppo, "Reference", SpyReference)
    lm, tok = load_policy(micro_policy)
    config = PolicyTrainingSettings(**FAST, lora_r=4, lora_target_modules=["q_proj", "v_proj"])
    trained, result = ppo.train_ppo(lm, tok, quality_reward, TRAIN, config)
    assert (
        frozen_refs == [None] and type(trained).__name__ == "LlamaForCausalLM" and result.iterations == 2
    )  # no copy: adapters off

    base, _ = load_policy(micro_policy)
    ppo.train_ppo(load_policy(micro_policy)[0], tok, quality_reward, TRAIN, config, reference=base)
    assert frozen_refs[-1] is base  # a reference other than the start (`reference: base`) is used as given

    passed = []
    real = optimise.train_ppo

    def recording_train_ppo(*a, **kw):
        passed.append(kw["reference"])
        return real(*a, **kw)

    monkeypatch.setattr(optimise, "train_ppo", recording_train_ppo)
    optimise.optimise_policy("ppo", micro_policy, quality_reward, TRAIN, HELD_OUT, config, tmp_path / "out")
    assert passed == [None]  # optimise_policy leaves the reference to the adapters-off model too


@pytest.mark.parametrize("steps", [2, 3])
def test_gradient_accumulation_takes_the_same_step(micro_policy: str, steps: int):
    # Mini-batches of 3 rollouts and 3 demonstrations: 2 or 3 micro-batches of unequal sizes.
    config = PolicyTrainingSettings(**{**FAST, "epochs": 1, "mini_batch_size": 3, "ppo_epochs": 2}, demo_coef=0.5)
    start = _params(load_policy(micro_policy)[0])
    trained = {}
    for n in (1, steps):
        lm, tok = load_policy(micro_policy)
        model, result = ppo.train_ppo(
            lm, tok, quality_reward, TRAIN, config.model_copy(update={"grad_accumulation_steps": n}), demonstrations=DEMOS
        )
        assert result.rollbacks == 0
        trained[n] = _params(model)
    assert (trained[1] - start).abs().max() > 1e-4  # a real step was taken
    torch.testing.assert_close(trained[steps], trained[1], atol=1e-5, rtol=0)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("lora_r", [0, 4])
def test_a_resumed_run_ends_where_the_uninterrupted_run_does(micro_policy: str, tmp_path: Path, lora_r: int):
    config = PolicyTrainingSettings(**{**FAST, "epochs": 4}, checkpoint_every=2, demo_coef=0.5, lora_r=lora_r)
    lm, tok = load_policy(micro_policy)
    whole, whole_result = ppo.train_ppo(lm, tok, quality_reward, TRAIN, config, demonstrations=DEMOS)

    def crash_in_iteration_3(state, stage, message, metrics):
        if message.startswith("iteration 3/"):
            raise Interrupted

    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Interrupted):
        ppo.train_ppo(
            load_policy(micro_policy)[0],
            tok,
            quality_reward,
            TRAIN,
            config,
            demonstrations=DEMOS,
            checkpoint_dir=checkpoints,
            on_status=crash_in_iteration_3,
        )
    assert [p.name for p in checkpoints.iterdir()] == [ppo_resume.CHECKPOINT_FILE]
    seen = []
    resumed, resumed_result = ppo.train_ppo(
        load_policy(micro_policy)[0],
        tok,
        quality_reward,
        TRAIN,
        config,
        demonstrations=DEMOS,
        checkpoint_dir=checkpoints,
        on_status=lambda *a: seen.append(a[2]),
    )
    assert seen[:3] == ["resumed from the checkpoint after iteration 2/4", "iteration 3/4", "iteration 4/4"]
    torch.testing.assert_close(_params(resumed), _params(whole), atol=1e-6, rtol=0)
    assert repr(resumed_result) == repr(whole_result)  # repr: the unused disagreement figures are nan
    assert not checkpoints.exists()  # finished: nothing left to resume


def test_a_checkpoint_of_another_run_is_refused(micro_policy: str, tmp_path: Path):
    config = PolicyTrainingSettings(**{**FAST, "epochs": 3}, checkpoint_every=1)
    lm, tok = load_policy(micro_policy)

    def crash(state, stage, message, metrics):
        if message.startswith("iteration 2/"):
            raise Interrupted

    with pytest.raises(Interrupted):
        ppo.train_ppo(lm, tok, quality_reward, TRAIN, config, checkpoint_dir=tmp_path / "ck", on_status=crash)
    with pytest.raises(TrainingError, match="another training run.*learning_rate"):
        ppo.train_ppo(
            load_policy(micro_policy)[0],
            tok,
            quality_reward,
            TRAIN,
            config.model_copy(update={"learning_rate": 0.1}),
            checkpoint_dir=tmp_path / "ck",
        )


def test_the_trl_algorithms_train_the_adapters_the_settings_name(micro_policy: str):
    from trainers.alternatives import train_alternative

    lm, tok = load_policy(micro_policy)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    config = PolicyTrainingSettings(**FAST, lora_r=4, lora_target_modules=["v_proj"], lora_dropout=0.1)
    trained, _ = train_alternative("grpo", lm, tok, lambda q, r: [float(len(x)) for x in r], TRAIN, config)
    changed = {k for k, v in trained.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith("v_proj.weight") for k in changed)  # merged back, and only where adapters were
