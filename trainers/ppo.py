"""PPO-RLHF (InstructGPT style) on any `AutoModelForCausalLM`, written here because TRL removed
its PPOTrainer (see ../shared/notes/ml-stack.md). Reads top to bottom like CleanRL's `ppo.py`:
the losses as pure functions, then the rollout, the training loop with its guardrails, the
evaluation, and `optimise_policy`, the one entry point the trainer consumer calls for every
algorithm (PPO here, GRPO / RLOO / KTO / DPO in `trainers.alternatives`).

    rlhf policy train --algorithm ppo --synthetic      # the tiny policy on the generated world

One PPO iteration: sample `batch_size` queries -> generate answers (top_p / temperature) ->
score them with `reward_fn(queries, responses)` -> per-token reward = -kl_coef * KL(policy || ref)
plus the score (over its running std) on the last token -> GAE -> `ppo_epochs` passes of clipped
surrogate + clipped value loss over mini-batches -> adapt kl_coef towards `target_kl`. Guardrails roll back an update
that pushes KL past `kl_bound` (the next try takes a smaller step), produces a non-finite loss, or
makes answers collapse in length or into repetition, judged on the next rollout (one more rollout
after the last update checks that one too); `on_status(state, stage, message, metrics)` reports
every one of them.
"""

from __future__ import annotations

import copy
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core.errors import ModelLoadError, TrainingError
from core.hashing import stable_fraction
from schemas.events import FeedbackEvent
from trainers.policy_config import PolicyOptConfig
from trainers.tiny_policy import format_prompt, resolve_base_model

RewardFn = Callable[[list[str], list[str]], list[float]]
StatusFn = Callable[[str, str, str, dict[str, float]], None]
ALGORITHMS = ("ppo", "grpo", "rloo", "kto", "dpo")


def _no_status(state: str, stage: str, message: str, metrics: dict[str, float]) -> None:
    return None


# ----------------------------------------------------------------------------- the maths


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the response tokens of the whole batch (token-level, as in InstructGPT)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries; padding stays zero."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_penalised_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards: -kl_coef * (log pi - log pi_ref) on every response token, plus the
    sequence score on its last token. The KL term keeps the policy near what it knew."""
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = mask.sum(dim=1).long().clamp(min=1) - 1  # responses are right-padded
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens. Masking values and rewards makes
    the state after the last token worth 0, i.e. the answer is a terminal episode."""
    values = values * mask
    rewards = rewards * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    returns = advantages + values
    return advantages * mask, returns * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate: -min(r * A, clip(r, 1-eps, 1+eps) * A). Returns (loss, clip fraction)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> torch.Tensor:
    """Clipped value loss: the value may not move further than cliprange_value from the rollout's
    estimate in one update, the same trust region the policy gets."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || ref) measured on sampled tokens with the k3 estimator, (r - 1) - log r
    for r = pi_ref / pi: never negative and low-variance (Schulman 2020), so a bound on it means
    what it says. The reward penalty keeps the plain log-ratio, whose expectation is the KL."""
    log_r = ref_logprobs - logprobs
    return masked_mean(torch.expm1(log_r) - log_r, mask)


class AdaptiveKLController:
    """Ziegler et al. (2019): nudge kl_coef so the observed KL tracks `target`; the error is
    clipped to +-20% so one noisy batch cannot swing it."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value


class RunningScoreScale:
    """Running standard deviation of the reward-model scores (Welford, over every rollout so far;
    TRL's old `use_score_scaling`). Dividing scores by it makes the KL penalty weigh the same
    against any reward's scale: a reward model whose sigmoid scores span 0.50-0.55 would otherwise
    be drowned by the penalty's noise after the first update."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, scores: torch.Tensor) -> None:
        for x in scores.tolist():
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def scale(self, scores: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        return scores / max(self.std, eps)


def repetition_share(tokens: Sequence[int]) -> float:
    """Share of a response's bigrams that already occurred earlier in it (0: none repeat)."""
    bigrams = list(zip(tokens, tokens[1:]))
    return 1.0 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0


# ----------------------------------------------------------------------------- policy + value head


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(device: torch.device) -> bool:
    """bf16 autocast on a GPU that has it; fp32 on CPU, where bf16 is slow or unsupported."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


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
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask), output_hidden_states=True)
        logprobs = _response_logprobs(out.logits, input_ids, response_len, temperature)
        hidden = out.hidden_states[-1][:, -response_len - 1 : -1].float()
        return logprobs, self.value_head(hidden).squeeze(-1)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    # Prompts are left-padded; positions must count real tokens only, as `generate` does.
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def _response_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, response_len: int, temperature: float) -> torch.Tensor:
    # Scored at the sampling temperature: the ratio and KL are between the distributions we sample from.
    logits = logits[:, -response_len - 1 : -1].float() / temperature
    return torch.gather(F.log_softmax(logits, dim=-1), 2, input_ids[:, -response_len:].unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sequence_logprobs(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int, temperature: float) -> torch.Tensor:
    logits = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask)).logits
    return _response_logprobs(logits, input_ids, response_len, temperature)


class Reference:
    """The frozen reference policy: a frozen copy of the starting model, or (`frozen=None`, with
    LoRA) the policy itself with its adapters switched off, so a large model is held once."""

    def __init__(self, policy: PolicyWithValue, frozen: nn.Module | None) -> None:
        self.policy = policy
        self.copy = frozen.requires_grad_(False).eval() if frozen is not None else None

    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int, temperature: float) -> torch.Tensor:
        if self.copy is not None:
            return sequence_logprobs(self.copy, input_ids, attention_mask, response_len, temperature)
        with self.policy.lm.disable_adapter():
            return sequence_logprobs(self.policy.lm, input_ids, attention_mask, response_len, temperature)


# ----------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    queries: list[str]
    responses: list[str]
    input_ids: torch.Tensor  # (B, P + R): left-padded prompt, then the response, right-padded
    attention_mask: torch.Tensor  # (B, P + R)
    mask: torch.Tensor  # (B, R) float: 1 on response tokens up to and including EOS
    scores: torch.Tensor  # (B,)

    @property
    def response_len(self) -> int:
        return self.mask.shape[1]

    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def repetition(self) -> float:
        ids = self.input_ids[:, -self.response_len :]
        return sum(repetition_share(row[: int(n)].tolist()) for row, n in zip(ids, self.lengths())) / len(ids)


@torch.no_grad()
def generate(
    lm: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    queries: list[str],
    reward_fn: RewardFn,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    greedy: bool = False,
) -> Rollout:
    """Answer `queries` and score the answers; the tokens after EOS are masked out."""
    device = next(lm.parameters()).device
    tokenizer.padding_side = "left"
    enc = tokenizer([format_prompt(q) for q in queries], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device)):
        out = lm.generate(
            **enc, do_sample=not greedy, temperature=temperature if not greedy else None, top_p=top_p if not greedy else None,
            top_k=0 if not greedy else None, max_new_tokens=max_new_tokens, min_new_tokens=1,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
    response = out[:, enc["input_ids"].shape[1] :]
    is_eos = response == tokenizer.eos_token_id
    # A token is part of the answer if no EOS came strictly before it.
    mask = ((is_eos.cumsum(dim=1) - is_eos.long()) == 0).float()
    kept = response * mask.long() + tokenizer.pad_token_id * (1 - mask.long())
    texts = [t.strip() for t in tokenizer.batch_decode(kept, skip_special_tokens=True)]
    scores = torch.tensor(reward_fn(list(queries), texts), dtype=torch.float32, device=device)
    if scores.shape != (len(queries),):
        raise TrainingError(f"reward_fn returned {tuple(scores.shape)} scores for {len(queries)} responses")
    attention_mask = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    return Rollout(list(queries), texts, out, attention_mask, mask, scores)


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


def _query_batches(queries: Sequence[str], batch_size: int, rng: random.Random) -> Iterator[list[str]]:
    """Endless batches, reshuffled every pass, so every training query is used equally often."""
    pool: list[str] = []
    while True:
        if len(pool) < batch_size:
            fresh = list(queries)
            rng.shuffle(fresh)
            pool += fresh
        yield pool[:batch_size]
        pool = pool[batch_size:]


def _snapshot(policy: PolicyWithValue, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    trainable = {k: v.detach().clone() for k, v in policy.named_parameters() if v.requires_grad}
    return trainable, copy.deepcopy(optimizer.state_dict())


def _restore(policy: PolicyWithValue, optimizer: torch.optim.Optimizer, snapshot: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> None:
    params, opt_state = snapshot
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name in params:
                p.copy_(params[name])
    optimizer.load_state_dict(opt_state)


def _save_checkpoint(policy: PolicyWithValue, tokenizer: PreTrainedTokenizerBase, root: Path, iteration: int, keep: int) -> Path:
    path = root / f"iter-{iteration:05d}"
    policy.lm.save_pretrained(path)  # with LoRA: the adapter only, small
    tokenizer.save_pretrained(path)
    torch.save(policy.value_head.state_dict(), path / "value_head.pt")
    for old in sorted(root.glob("iter-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def check_guardrails(stats: dict[str, float], start_length: float, config: PolicyOptConfig) -> list[str]:
    """Names of the failure modes `stats` (kl, mean_length, repetition, ...) of a batch of answers
    show; lengths are judged against the starting policy's `start_length`."""
    problems = []
    if not all(math.isfinite(v) for v in stats.values()):
        problems.append("non_finite_rollout")
    if stats["kl"] > config.kl_bound:
        problems.append("kl_bound")
    if stats["mean_length"] < config.min_length_ratio * start_length:
        problems.append("length_collapse")
    if stats["mean_length"] > config.max_length_ratio * start_length:
        problems.append("length_blowup")
    if stats["repetition"] > config.max_repetition:
        problems.append("repetition_collapse")
    return problems


class _Rollbacks:
    """The last parameters known to behave, and the count of updates thrown away. Training stops
    after `limit` rollbacks with no update kept in between: the run is not converging. An update
    is kept once the rollout after it passes the guardrails.

    A step that overshoots `kl_bound` is retried smaller: each kl_bound rollback multiplies the
    learning rate by `kl_backoff`, for the rest of the run (a policy that an earlier round already
    moved is steeper, and the same step size would overshoot again and again)."""

    def __init__(self, policy: PolicyWithValue, optimizer: torch.optim.Optimizer, config: PolicyOptConfig, on_status: StatusFn) -> None:
        self.policy, self.optimizer, self.on_status = policy, optimizer, on_status
        self.limit, self.kl_backoff, self.learning_rate = config.max_consecutive_rollbacks, config.kl_backoff, config.learning_rate
        self.fired: list[str] = []
        self.total = self.in_a_row = 0
        self.unchecked_update = False
        self.last_good = _snapshot(policy, optimizer)

    def updated(self) -> None:
        """The parameters changed; the next rollout judges them."""
        self.unchecked_update = True

    def remember(self) -> None:
        """The current parameters just produced a healthy rollout."""
        self.last_good = _snapshot(self.policy, self.optimizer)
        if self.unchecked_update:
            self.in_a_row, self.unchecked_update = 0, False

    def roll_back(self, problems: list[str], where: str, stats: dict[str, float]) -> bool:
        """Restore the last good parameters; True when training should stop."""
        _restore(self.policy, self.optimizer, self.last_good)
        self.unchecked_update = False
        if "kl_bound" in problems:
            self.learning_rate *= self.kl_backoff
        self.fired += problems
        self.total += 1
        self.in_a_row += 1
        self.on_status("guardrail", "ppo", f"{where}: {', '.join(problems)}; rolled back to the last good policy, lr {self.learning_rate:.2g}", stats)
        if self.in_a_row < self.limit:
            return False
        self.on_status("guardrail", "ppo", f"{self.in_a_row} rollbacks in a row: stopping with the last good policy", stats)
        return True


def train_ppo(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: RewardFn,
    train_queries: Sequence[str],
    config: PolicyOptConfig,
    *,
    reference: PreTrainedModel | None = None,
    checkpoint_dir: Path | None = None,
    on_status: StatusFn = _no_status,
) -> tuple[PreTrainedModel, PPOResult]:
    """Optimise `lm` in place against `reward_fn` with PPO; returns the trained model (LoRA
    merged back) and what happened. `reference` is a frozen copy of the starting `lm` if the
    caller already holds one (else one is made; with LoRA none is needed). Rollouts happen on
    `lm`'s device."""
    if not train_queries:
        raise TrainingError("PPO needs at least one training query")
    device = next(lm.parameters()).device
    torch.manual_seed(config.seed)
    if config.lora_r:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"))
    policy = PolicyWithValue(lm).to(device).eval()  # eval: no dropout, so rollout and update log-probs agree
    reference = Reference(policy, None if config.lora_r else (reference if reference is not None else copy.deepcopy(lm)))
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=config.learning_rate, eps=1e-5)
    kl_ctl = AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon)
    score_scale = RunningScoreScale()
    batches = _query_batches(train_queries, config.batch_size, random.Random(config.seed))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device))
    sample = {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature, "top_p": config.top_p}

    guard = _Rollbacks(policy, optimizer, config, on_status)
    start_length: float | None = None
    scores: list[float] = []
    iteration = 0
    # One rollout more than there are updates: the last one only checks the last update, which
    # (like every other) must pass the guardrails on answers sampled from the updated policy.
    for iteration in range(1, config.epochs + 2):
        # 1. Rollout with the current policy, scored by the reward function.
        ro = generate(policy.lm, tokenizer, next(batches), reward_fn, **sample)
        with torch.no_grad(), autocast:
            old_logprobs, old_values = (t.float() for t in policy(ro.input_ids, ro.attention_mask, ro.response_len, config.temperature))
            ref_logprobs = reference.logprobs(ro.input_ids, ro.attention_mask, ro.response_len, config.temperature).float()
        rollout_kl = kl_estimate(old_logprobs, ref_logprobs, ro.mask).item()
        mean_length = ro.lengths().mean().item()
        start_length = start_length if start_length is not None else mean_length
        stats = {"iteration": float(iteration), "mean_score": ro.scores.mean().item(), "kl": rollout_kl, "kl_coef": kl_ctl.value,
                 "mean_length": mean_length, "repetition": ro.repetition()}  # fmt: skip

        # 2. Guardrails on what the last update produced: roll it back rather than learn from it.
        problems = check_guardrails(stats, start_length, config)
        if problems:
            if guard.roll_back(problems, f"iteration {iteration}", stats):
                return _finish(policy, reference, guard, kl_ctl, scores, min(iteration, config.epochs), stopped_early=True)
            continue
        guard.remember()
        if iteration > config.epochs:
            break
        scores.append(stats["mean_score"])

        # 3. KL-shaped per-token rewards (scores in units of their running std), GAE, whitened advantages.
        score_scale.update(ro.scores)
        scores_for_rl = score_scale.scale(ro.scores) if config.score_scaling else ro.scores
        rewards = kl_penalised_rewards(scores_for_rl, old_logprobs, ref_logprobs, ro.mask, kl_ctl.value)
        advantages, returns = compute_gae(rewards, old_values, ro.mask, config.gamma, config.lam)
        advantages = whiten(advantages, ro.mask)

        # 4. ppo_epochs passes of clipped policy + value loss over shuffled mini-batches, at a rate
        #    that ramps up over the first updates: Adam's first steps are full-size whatever the
        #    gradient, and one full step can collapse a policy an earlier round already sharpened.
        for group in optimizer.param_groups:  # len(scores): this update's number, as every kept rollout is trained on
            group["lr"] = guard.learning_rate * min(1.0, len(scores) / config.lr_warmup_updates)
        non_finite = False
        for _ in range(config.ppo_epochs):
            for idx in torch.randperm(len(ro.queries), device=device).split(config.mini_batch_size):
                with autocast:
                    logprobs, values = policy(ro.input_ids[idx], ro.attention_mask[idx], ro.response_len, config.temperature)
                pg_loss, clipfrac = policy_loss(logprobs.float(), old_logprobs[idx], advantages[idx], ro.mask[idx], config.cliprange)
                vf_loss = value_loss(values.float(), old_values[idx], returns[idx], ro.mask[idx], config.cliprange_value)
                loss = pg_loss + config.vf_coef * vf_loss
                non_finite = not torch.isfinite(loss).item()
                if non_finite:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                optimizer.step()
            if non_finite:
                break
        stats.update(pg_loss=pg_loss.item(), vf_loss=vf_loss.item(), clipfrac=clipfrac.item())

        # 5. A non-finite loss is undone at once. KL, length and repetition are judged on the next
        #    rollout, sampled from the updated policy: on this batch's samples the KL estimate is
        #    off-policy and inflates every token the update pushed down (k3 grows with pi_ref / pi).
        if non_finite:
            if guard.roll_back(["non_finite_loss"], f"iteration {iteration} update", stats):
                return _finish(policy, reference, guard, kl_ctl, scores, iteration, stopped_early=True)
        else:
            guard.updated()
            if config.adaptive_kl:
                kl_ctl.update(rollout_kl, config.batch_size)
        on_status("progress", "ppo", f"iteration {iteration}/{config.epochs}", stats)
        if checkpoint_dir is not None and iteration % config.checkpoint_every == 0 and iteration < config.epochs:
            _save_checkpoint(policy, tokenizer, checkpoint_dir, iteration, config.keep_checkpoints)
    if checkpoint_dir is not None:  # the end: after the last update's check, so what is saved is what is returned
        _save_checkpoint(policy, tokenizer, checkpoint_dir, config.epochs, config.keep_checkpoints)
    return _finish(policy, reference, guard, kl_ctl, scores, config.epochs, stopped_early=False)


def _finish(
    policy: PolicyWithValue, reference: Reference, guard: _Rollbacks, kl_ctl: AdaptiveKLController, scores: list[float],
    iterations: int, *, stopped_early: bool,
) -> tuple[PreTrainedModel, PPOResult]:  # fmt: skip
    lm = policy.lm.merge_and_unload() if reference.copy is None else policy.lm
    nan = float("nan")
    result = PPOResult(iterations, guard.total, guard.fired, kl_ctl.value, scores[0] if scores else nan, scores[-1] if scores else nan, stopped_early)
    return lm, result


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class PolicyEval:
    mean_reward: float
    kl: float  # mean per-token KL to the reference on the policy's own samples, nats
    mean_length: float  # response tokens, EOS included
    repetition: float
    n: int


@torch.no_grad()
def evaluate_policy(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: RewardFn,
    queries: Sequence[str],
    *,
    reference: PreTrainedModel | None = None,
    max_new_tokens: int = 32,
    temperature: float = 0.8,
    top_p: float = 0.95,
    samples_per_query: int = 2,
    seed: int = 1234,
    batch_size: int = 64,
) -> PolicyEval:
    """Mean reward of `lm` on held-out `queries` with fixed-seed sampling (the same draws before
    and after training), its per-token KL to `reference` (0 without one), and answer length."""
    if not queries:
        raise TrainingError("evaluation needs at least one held-out query")
    lm.eval()
    device = next(lm.parameters()).device
    repeated = [q for q in queries for _ in range(samples_per_query)]
    rewards, kls, lengths, reps = [], [], [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(0, len(repeated), batch_size):
            ro = generate(lm, tokenizer, repeated[i : i + batch_size], reward_fn,
                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)  # fmt: skip
            rewards += ro.scores.tolist()
            lengths += ro.lengths().tolist()
            reps.append(ro.repetition() * len(ro.queries))
            if reference is not None:
                own = sequence_logprobs(lm, ro.input_ids, ro.attention_mask, ro.response_len, temperature)
                ref = sequence_logprobs(reference, ro.input_ids, ro.attention_mask, ro.response_len, temperature)
                kls.append((kl_estimate(own, ref, ro.mask).item(), ro.mask.sum().item()))
    kl = sum(k * n for k, n in kls) / sum(n for _, n in kls) if kls else 0.0
    return PolicyEval(sum(rewards) / len(rewards), kl, sum(lengths) / len(lengths), sum(reps) / len(repeated), len(repeated))


# ----------------------------------------------------------------------------- the entry point


def queries_from_feedback(events: Iterable[FeedbackEvent], eval_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """Every distinct query users gave feedback on, whatever the verdict (a policy must learn the
    questions it answered badly too; the plan sampled only the positive ones), split into (train,
    held-out) by a stable hash of the text, so a query never moves sides as feedback grows."""
    queries = sorted({e.query for e in events})
    held_out = [q for q in queries if stable_fraction("policy-eval", q) < eval_fraction]
    train = [q for q in queries if stable_fraction("policy-eval", q) >= eval_fraction]
    return train, held_out


def load_policy(name_or_path: str, device: torch.device | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Hub id, a local directory, or `tiny` (built locally on first use), in fp32 on `device`."""
    path = resolve_base_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot load policy: {exc}") from None
    if tokenizer.pad_token is None:  # many causal LMs ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return lm.to(device or pick_device()), tokenizer


def save_atomically(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """Write into a temporary sibling and rename it into place, so readers (the registry) see
    either no model or a whole one; an existing `out_dir` is replaced."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def optimise_policy(
    algorithm: str,
    base_model_path: str,
    reward_fn: RewardFn,
    train_queries: Sequence[str],
    eval_queries: Sequence[str],
    config: PolicyOptConfig,
    out_dir: str | Path,
    on_status: StatusFn | None = None,
    feedback_events: Sequence[FeedbackEvent] | None = None,
) -> dict[str, Any]:
    """Train a new policy from `base_model_path` with `algorithm`, evaluate it against the starting
    policy on `eval_queries`, and save it (save_pretrained, atomically) to `out_dir`.

    `feedback_events` feed KTO (thumbs) and DPO (pairs); without them those two label the
    starting policy's own samples with `reward_fn`. Returns floats (mean_reward_before/after,
    reward_gain, kl, mean_length, rollbacks, ...) plus `guardrails_fired` (empty: a final policy
    that fails a guardrail raises instead) and `out_dir`.
    Raises TrainingError when a guardrail rejects the whole result."""
    if algorithm not in ALGORITHMS:
        raise TrainingError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    status = on_status or _no_status
    out_dir = Path(out_dir)
    started = time.monotonic()
    try:
        status("started", "load", f"{algorithm} from {base_model_path}", {})
        lm, tokenizer = load_policy(base_model_path)
        reference = copy.deepcopy(lm).requires_grad_(False).eval()
        evaluate = lambda model: evaluate_policy(  # noqa: E731 - the same settings before and after
            model, tokenizer, reward_fn, eval_queries, reference=reference, max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, top_p=config.top_p, samples_per_query=config.eval_samples_per_query, seed=config.eval_seed,
        )  # fmt: skip
        before = evaluate(lm)
        status("progress", "eval_before", f"starting policy: mean reward {before.mean_reward:.4f}", {"mean_reward_before": before.mean_reward})

        train_started = time.monotonic()
        if algorithm == "ppo":
            checkpoints = out_dir.with_name(f"{out_dir.name}.checkpoints")
            lm, result = train_ppo(
                lm, tokenizer, reward_fn, train_queries, config, reference=reference, checkpoint_dir=checkpoints, on_status=status
            )
            extra = {"iterations": float(result.iterations), "rollbacks": float(result.rollbacks), "kl_coef": result.kl_coef}
            # A rolled-back update is a guardrail that worked: training goes on (or stops early) from
            # the last good policy, counted in `rollbacks`. What the gate must not trust is a final
            # policy that fails the guardrails itself: checked on the evaluation below.
            extra["stopped_early"] = float(result.stopped_early)
        else:
            from trainers.alternatives import train_alternative

            lm, extra = train_alternative(algorithm, lm, tokenizer, reward_fn, train_queries, config, feedback_events=feedback_events, on_status=status)
        train_seconds = time.monotonic() - train_started

        after = evaluate(lm)
        # The whole job is one last update to check: an alternative has no per-step rollback.
        problems = check_guardrails(asdict(after), before.mean_length, config)
        metrics: dict[str, Any] = {
            "mean_reward_before": before.mean_reward, "mean_reward_after": after.mean_reward,
            "reward_gain": after.mean_reward / before.mean_reward - 1.0 if before.mean_reward else float("nan"),
            "kl": after.kl, "mean_length_before": before.mean_length, "mean_length": after.mean_length,
            "repetition": after.repetition, "eval_samples": float(after.n), "train_seconds": train_seconds, **extra,
        }  # fmt: skip
        if problems:
            status("guardrail", "eval_after", f"trained policy rejected: {'; '.join(problems)}", _floats(metrics))
            raise TrainingError(f"{algorithm}: trained policy failed guardrails {problems} (kl {after.kl:.3f}, length {after.mean_length:.1f})")
        save_atomically(lm, tokenizer, out_dir)
        metrics.update(guardrails_fired=[], out_dir=str(out_dir), algorithm=algorithm, wall_seconds=time.monotonic() - started)
        status("finished", "save", f"{algorithm}: mean reward {before.mean_reward:.4f} -> {after.mean_reward:.4f}", _floats(metrics))
        return metrics
    except Exception as exc:
        status("failed", "train", f"{type(exc).__name__}: {exc}"[:4000], {})
        raise


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric part of `metrics`, as TrainingStatus events carry it."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
