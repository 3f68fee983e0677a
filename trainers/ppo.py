"""PPO-RLHF (InstructGPT style) on any `AutoModelForCausalLM`, written here because TRL no longer
ships a PPOTrainer. `trainers.optimise.optimise_policy` runs it (or an alternative from
`trainers.alternatives`) for the trainer consumer and the CLI:

    rlhf policy train --algorithm ppo --synthetic      # the tiny policy on the generated world
    lm, result = train_ppo(lm, tokenizer, reward_fn, train_queries, config)   # config: a PolicyTrainingSettings

This module reads top to bottom: the policy with its value head and the frozen reference, one
rollout, then the loop (`train_ppo`). Its pieces live beside it: one update on a rollout (rewards,
advantages, the clipped losses; data-parallel under torchrun) in `trainers.ppo_update`; the maths as
pure functions (whitening, KL-shaped rewards, GAE, the clipped losses, the adaptive KL coefficient)
in `trainers.ppo_maths`, sampling and log-probs in `trainers.policy`, the guardrails and rollbacks in
`trainers.guardrails`, the resumable batch streams and checkpoints in `trainers.ppo_resume`,
corrections as a supervised term in `trainers.demonstrations`, the hyperparameters in
`core.learning_settings.PolicyTrainingSettings`.

One PPO iteration: sample `batch_size` prompts (questions in their conversations, formatted by
`trainers.chat_format`) -> generate answers (top_p / temperature) -> score them with
`reward_fn(prompts, responses)` -> per-token reward = -kl_coef * KL(policy || ref)
plus the score (over its running std) on the last token -> GAE -> `ppo_epochs` passes of clipped
surrogate + clipped value loss over mini-batches -> adapt kl_coef towards `target_kl`. Guardrails
roll back an update that pushes KL past `kl_bound` (the next try takes a smaller step), produces a
non-finite loss, or makes answers collapse in length or into repetition, judged on the next
rollout (one more rollout after the last update checks that one too); `on_status(state, stage,
message, metrics)` reports every one of them.

For models larger than memory allows at full size: `lora_r` trains adapters only (the reference
is then the same model with them switched off), `grad_accumulation_steps` splits each mini-batch
(the same optimiser step), and `checkpoint_dir` + `checkpoint_every` make a run resumable.
"""

from __future__ import annotations

import copy
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.errors import TrainingError
from core.learning_settings import PolicyTrainingSettings
from trainers import distributed
from trainers.chat_format import Prompt
from trainers.device import use_bf16
from trainers.ensemble import EnsembleReward
from trainers.guardrails import Rollbacks, check_guardrails, restore
from trainers.policy import (
    RewardFn,
    StatusFn,
    generate,
    no_status,
    positions,
    response_logprobs,
    sequence_logprobs,
    step_metrics,
)
from trainers.policy_config import with_adapters
from trainers.ppo_maths import (
    AdaptiveKLController,
    RunningScoreScale,
)
from trainers.ppo_resume import MAY_CHANGE_ON_RESUME, Counted, demo_batches, load_checkpoint, query_batches, save_checkpoint
from trainers.ppo_update import Batch, learn

# Below this spread (std of the members' sigmoid rewards) the ensemble agrees to within a point, and
# a growth from there is noise (measured: docs/settings-history.md#max_disagreement_growth).
DISAGREEMENT_FLOOR = 0.01

# ----------------------------------------------------------------------------- policy + value head


class PolicyWithValue(nn.Module):
    """A causal LM plus a scalar value head on its last hidden state (shared trunk, as in
    InstructGPT's PPO and TRL's old AutoModelForCausalLMWithValueHead)."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.get_text_config().hidden_size, 1)
        # Zero init: the first advantages are then exactly the KL-shaped returns, not noise.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs of the response tokens, values of the states before them), each (B, R)."""
        out = self.lm(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask), output_hidden_states=True
        )
        logprobs = response_logprobs(out.logits, input_ids, response_len, temperature)
        hidden = out.hidden_states[-1][:, -response_len - 1 : -1].float()
        return logprobs, self.value_head(hidden).squeeze(-1)


class Reference:
    """The frozen reference policy: a frozen copy of the starting model, or (`frozen=None`, with
    LoRA) the policy itself with its adapters switched off, so a large model is held once."""

    def __init__(self, policy: PolicyWithValue, frozen: nn.Module | None) -> None:
        self.policy = policy
        self.copy = frozen.requires_grad_(False).eval() if frozen is not None else None

    def logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int, temperature: float
    ) -> torch.Tensor:
        if self.copy is not None:
            return sequence_logprobs(self.copy, input_ids, attention_mask, response_len, temperature)
        with self.policy.lm.disable_adapter():  # type: ignore[operator]  # a PeftModel's, behind nn.Module's typing
            return sequence_logprobs(self.policy.lm, input_ids, attention_mask, response_len, temperature)


# ----------------------------------------------------------------------------- training


@dataclass
class PPOResult:
    iterations: int
    rollbacks: int
    guardrails_fired: list[str]  # one name per rolled-back update's problem
    kl_coef: float
    mean_score_first: float
    mean_score_last: float
    stopped_early: bool
    disagreement_first: float = float("nan")  # the reward ensemble's spread on the first and last kept rollouts
    disagreement_last: float = float("nan")
    start_length: float = float("nan")  # mean answer length of the first rollout: what the length guardrails judge against


def _rollout(
    policy: PolicyWithValue,
    reference: Reference,
    tokenizer: PreTrainedTokenizerBase,
    queries: list[Prompt],
    reward_fn: RewardFn,
    config: PolicyTrainingSettings,
    autocast: torch.autocast,
) -> Batch:
    """Sample and score answers to `queries` (this process's share of them, in a data-parallel run),
    and the log-probs and values the update starts from."""
    queries = distributed.shard(queries, distributed.rank(), distributed.world())
    ro = generate(
        policy.lm,
        tokenizer,
        queries,
        reward_fn,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
    )
    with torch.no_grad(), autocast:
        logprobs, values = (t.float() for t in policy(ro.input_ids, ro.attention_mask, ro.response_len, config.temperature))
        ref_logprobs = reference.logprobs(ro.input_ids, ro.attention_mask, ro.response_len, config.temperature).float()
    return Batch(ro, logprobs, values, ref_logprobs)


# ----------------------------------------------------------------------------- the loop


def train_ppo(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: RewardFn,
    train_queries: Sequence[Prompt],
    config: PolicyTrainingSettings,
    *,
    seed: int = 0,
    reference: PreTrainedModel | None = None,
    on_status: StatusFn = no_status,
    demonstrations: Sequence[tuple[Prompt, str]] = (),
    checkpoint_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, PPOResult]:
    """Optimise `lm` in place against `reward_fn` with PPO; returns the trained model (LoRA
    merged back) and what happened. `reference` is a frozen model the KL is held to, if the
    caller already holds one; else the starting `lm`: with LoRA that is `lm` itself with the
    adapters off, without it a copy. `demonstrations`, (prompt, wanted answer) such as users'
    corrections, add a supervised term (`demo_coef`). When `reward_fn` is an `EnsembleReward`, a
    growing disagreement of its members stops training. Rollouts happen on `lm`'s device. `seed`
    seeds the query order, the sampling and the value head.

    With `checkpoint_dir`, the run's state is written there every `checkpoint_every` iterations,
    and a run given a directory that holds a checkpoint resumes from it (the same starting model,
    queries, reward and demonstrations are the caller's part): the result is the uninterrupted
    run's. The directory is removed once training ends."""
    if not train_queries:
        raise TrainingError("PPO needs at least one training query")
    device = next(lm.parameters()).device
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if config.batch_size < distributed.world():
        raise TrainingError(
            f"policy.training.batch_size {config.batch_size}: fewer prompts than the {distributed.world()} processes"
        )
    torch.manual_seed(seed)
    lm = with_adapters(lm, config)
    policy = PolicyWithValue(lm).to(device).eval()  # eval: no dropout, so rollout and update log-probs agree
    if distributed.world() > 1:  # the same start everywhere (above), then each process samples answers of its own
        torch.manual_seed(seed + distributed.rank())
    # With LoRA the starting weights stay in `lm` under the adapters: switched off, they are the
    # reference and a large model is held once. A reference that is not the start (`reference:
    # base`) is the caller's frozen model, already in memory.
    frozen = Reference(policy, reference if reference is not None else (None if config.lora_r else copy.deepcopy(lm)))
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=config.learning_rate, eps=1e-5)
    kl_ctl = AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
    score_scale = RunningScoreScale()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device))
    guard = Rollbacks(policy, optimizer, config, on_status)
    start_length: float | None = None
    first_disagreement: float | None = None
    scores: list[float] = []
    disagreements: list[float] = []
    done = 0  # iterations finished
    drawn = {"queries": 0, "demos": 0}
    run = {**config.model_dump(exclude=MAY_CHANGE_ON_RESUME), "seed": seed}  # what a checkpoint must have been made with
    state = load_checkpoint(checkpoint_dir, run, policy) if checkpoint_dir is not None else None
    if state is not None:
        done, drawn = state["iterations"], state["drawn"]
        start_length, first_disagreement = state["start_length"], state["first_disagreement"]
        scores, disagreements = state["scores"], state["disagreements"]
        restore(policy, optimizer, (state["trainable"], state["optimizer"]))
        guard.load_state_dict(state["guard"])
        kl_ctl.value = state["kl_coef"]
        score_scale.count, score_scale.mean, score_scale.m2 = state["score_scale"]
        on_status(
            "progress",
            "ppo",
            f"resumed from the checkpoint after iteration {done}/{config.epochs}",
            {"iteration": float(done), **step_metrics(done, config.epochs)},
        )
    batches = Counted(query_batches(train_queries, config.batch_size, random.Random(seed)), skip=drawn["queries"])
    demos = (
        Counted(demo_batches(tokenizer, demonstrations, config.mini_batch_size, seed, device), skip=drawn["demos"])
        if demonstrations and config.demo_coef
        else None
    )
    iteration = done  # the result's count should a resumed run have nothing left to do

    for iteration in range(done + 1, config.epochs + 1):
        # 0. A checkpoint of the iterations finished so far, before anything of this one happens.
        if (
            checkpoint_dir is not None
            and distributed.is_main()  # one writer; every process holds the same state
            and config.checkpoint_every
            and iteration - 1 > done
            and (iteration - 1) % config.checkpoint_every == 0
        ):
            save_checkpoint(
                checkpoint_dir,
                {
                    "config": run,
                    "iterations": iteration - 1,
                    "drawn": {"queries": batches.drawn, "demos": demos.drawn if demos is not None else 0},
                    "start_length": start_length,
                    "first_disagreement": first_disagreement,
                    "scores": scores,
                    "disagreements": disagreements,
                    "trainable": {k: v.detach() for k, v in policy.named_parameters() if v.requires_grad},
                    "optimizer": optimizer.state_dict(),
                    "guard": guard.state_dict(),
                    "kl_coef": kl_ctl.value,
                    "score_scale": (score_scale.count, score_scale.mean, score_scale.m2),
                },
            )

        # 1. Rollout with the current policy, scored by the reward function.
        batch = _rollout(policy, frozen, tokenizer, next(batches), reward_fn, config, autocast)
        stats = batch.stats(iteration, kl_ctl.value)
        start_length = stats["mean_length"] if start_length is None else start_length

        # 2. Guardrails on what the last update produced: roll it back rather than learn from it.
        #    A reward ensemble that disagrees much more than at the start also ends training: the
        #    policy has reached answers the reward model knows little about (Coste et al. 2024).
        problems = check_guardrails(stats, start_length, config)
        if isinstance(reward_fn, EnsembleReward):
            rows = float(len(batch.rollout.scores))  # the whole batch's mean spread, as every process must judge it
            spread, count = distributed.total(torch.tensor([reward_fn.last_disagreement * rows, rows])).tolist()
            stats["disagreement"] = spread / count
            first_disagreement = stats["disagreement"] if first_disagreement is None else first_disagreement
            if stats["disagreement"] > config.max_disagreement_growth * max(first_disagreement, DISAGREEMENT_FLOOR):
                problems.append("disagreement")
        if not guard.judge(problems, f"iteration {iteration}", stats):
            guard.stopped = guard.stopped or "disagreement" in problems
            if guard.stopped:
                break
            continue
        scores.append(stats["mean_score"])
        if "disagreement" in stats:
            disagreements.append(stats["disagreement"])

        # 3-4. KL-shaped per-token rewards, GAE, whitened advantages, and the update (trainers.ppo_update),
        #    at a rate that ramps up over the first updates: Adam's first steps are full-size whatever
        #    the gradient, and one full step can collapse a policy an earlier round already sharpened.
        #    len(scores) is this update's number: every kept rollout is trained on.
        for group in optimizer.param_groups:
            group["lr"] = guard.learning_rate * min(1.0, len(scores) / config.lr_warmup_updates)
        losses, finite = learn(policy, optimizer, batch, score_scale, kl_ctl.value, config, autocast, demos)
        stats.update(losses)

        # 5. A non-finite loss is undone at once. KL, length and repetition are judged on the next
        #    rollout, sampled from the updated policy: on this batch's samples the KL estimate is
        #    off-policy and inflates every token the update pushed down (k3 grows with pi_ref / pi).
        if not finite:
            guard.roll_back(["non_finite_loss"], f"iteration {iteration} update", stats)
            if guard.stopped:
                break
        else:
            guard.updated()
            kl_ctl.update(stats["kl"], config.batch_size)
        on_status(
            "progress", "ppo", f"iteration {iteration}/{config.epochs}", {**stats, **step_metrics(iteration, config.epochs)}
        )

    # 6. One rollout more than there are updates: the last update, like every other, must pass the
    #    guardrails on answers sampled from the updated policy.
    if not guard.stopped:
        batch = _rollout(policy, frozen, tokenizer, next(batches), reward_fn, config, autocast)
        stats = batch.stats(config.epochs + 1, kl_ctl.value)
        start = stats["mean_length"] if start_length is None else start_length  # None: no update ran
        guard.judge(check_guardrails(stats, start, config), f"iteration {config.epochs + 1}", stats)

    lm = policy.lm.merge_and_unload() if config.lora_r else policy.lm  # type: ignore[operator]  # a PeftModel's
    if checkpoint_dir is not None:  # finished: a later run pointed here starts afresh
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    nan = float("nan")
    result = PPOResult(
        iteration,
        guard.total,
        guard.fired,
        kl_ctl.value,
        scores[0] if scores else nan,
        scores[-1] if scores else nan,
        guard.stopped,
        disagreements[0] if disagreements else nan,
        disagreements[-1] if disagreements else nan,
        start_length if start_length is not None else nan,
    )
    return lm, result
