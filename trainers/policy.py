"""The policy side every algorithm, the evaluation and the assistant service share: load a causal
LM, sample answers to prompts, score them, and measure a policy on held-out prompts.

    lm, tokenizer = load_policy("tiny")          # `tiny`, `smollm2`, a .gguf file, a local directory or a Hub id
    answers = sample(lm, tokenizer, prompts, max_new_tokens=32, temperature=0.8, top_p=0.95).responses
    rollout = generate(lm, tokenizer, prompts, reward_fn, max_new_tokens=32, temperature=0.8, top_p=0.95)
    evaluate_policy(lm, tokenizer, reward_fn, held_out, reference=start)   # mean reward, KL, length

A prompt is a question in its conversation (`trainers.chat_format.Prompt`: a `Conversation` with
the system prompt and earlier turns, or a bare question), formatted by `trainers.chat_format` (the
tokenizer's chat template when it has one). A reward function takes the prompts as given and the
answers and returns one float per answer; a status function receives `(state, stage, message,
metrics)` as training goes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core.errors import ModelLoadError, TrainingError
from core.learning_settings import SAMPLING_TEMPERATURE, SAMPLING_TOP_P
from trainers.base_models import resolve_base_model
from trainers.chat_format import Prompt, format_prompts
from trainers.device import pick_device, use_bf16
from trainers.loading import load_model

RewardFn = Callable[[list[Prompt], list[str]], list[float]]  # (prompts as sampled, answers) -> one score each
StatusFn = Callable[[str, str, str, dict[str, float]], None]


def no_status(state: str, stage: str, message: str, metrics: dict[str, float]) -> None:
    """The status function of a caller that does not listen."""


def step_metrics(done: int, total: int) -> dict[str, float]:
    """How far a training loop is, for the metrics of its `progress` status: `step` of `steps` done.
    Progress bars read these; the message is for people and may be reworded."""
    return {"step": float(done), "steps": float(total)}


def load_policy(name_or_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Any base model `trainers.base_models` resolves (`tiny`, `smollm2`, a .gguf file, a local
    directory, a Hub id), in fp32 on the GPU if there is one; ModelLoadError naming the path when
    it cannot be loaded."""
    path = resolve_base_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = load_model(AutoModelForCausalLM, path, dtype=torch.float32)
    except Exception as exc:  # a corrupt directory raises OSError, ValueError or the safetensors reader's own error
        raise ModelLoadError(f"{path}: cannot load policy: {type(exc).__name__}: {exc}") from None
    if tokenizer.pad_token is None:  # many causal LMs ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return lm.to(pick_device()), tokenizer


# ----------------------------------------------------------------------------- measures of answers


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the response tokens of the whole batch (token-level, as in InstructGPT)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || ref) measured on sampled tokens with the k3 estimator, (r - 1) - log r
    for r = pi_ref / pi: never negative and low-variance (Schulman 2020), so a bound on it means
    what it says. The PPO reward penalty keeps the plain log-ratio, whose expectation is the KL."""
    log_r = ref_logprobs - logprobs
    return masked_mean(torch.expm1(log_r) - log_r, mask)


def repetition_share(tokens: Sequence[int]) -> float:
    """Share of a response's bigrams that already occurred earlier in it (0: none repeat)."""
    bigrams = list(pairwise(tokens))
    return 1.0 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    # Prompts are left-padded; positions must count real tokens only, as `generate` does.
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def response_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, response_len: int, temperature: float) -> torch.Tensor:
    # Scored at the sampling temperature: the ratio and KL are between the distributions we sample from.
    logits = logits[:, -response_len - 1 : -1].float() / temperature
    return torch.gather(F.log_softmax(logits, dim=-1), 2, input_ids[:, -response_len:].unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sequence_logprobs(
    lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int, temperature: float
) -> torch.Tensor:
    logits = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask)).logits
    return response_logprobs(logits, input_ids, response_len, temperature)


# ----------------------------------------------------------------------------- sampling


@dataclass
class Samples:
    queries: list[Prompt]  # as given to `sample`
    responses: list[str]
    input_ids: torch.Tensor  # (B, P + R): left-padded prompt, then the response, right-padded
    attention_mask: torch.Tensor  # (B, P + R)
    mask: torch.Tensor  # (B, R) float: 1 on response tokens up to and including EOS

    @property
    def response_len(self) -> int:
        return self.mask.shape[1]

    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def repetition(self) -> float:
        ids = self.input_ids[:, -self.response_len :]
        return sum(repetition_share(row[: int(n)].tolist()) for row, n in zip(ids, self.lengths(), strict=True)) / len(ids)


@dataclass
class Rollout(Samples):
    scores: torch.Tensor  # (B,): the reward function's score of each response


@torch.no_grad()
def sample(
    lm: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    greedy: bool = False,
) -> Samples:
    """Answer `queries`, each a question in its conversation (nucleus sampling, or `greedy`),
    prompted in the tokenizer's chat format (`trainers.chat_format`); the tokens after EOS are masked
    out. A prompt that would leave the answer no room in the model's positions is cut from the left:
    the oldest turns go, the question stays."""
    device = next(lm.parameters()).device
    tokenizer.padding_side = "left"  # generation continues from the right edge of every prompt
    enc = dict(tokenizer(format_prompts(tokenizer, queries), return_tensors="pt", padding=True, add_special_tokens=False))
    room = getattr(getattr(lm, "config", None), "max_position_embeddings", None)
    if isinstance(room, int) and enc["input_ids"].shape[1] > room - max_new_tokens > 0:
        enc = {name: t[:, max_new_tokens - room :] for name, t in enc.items()}  # left-padded: the prompts' ends are aligned
    enc = {name: t.to(device) for name, t in enc.items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device)):
        out = lm.generate(  # type: ignore[operator]  # typed as an nn.Module, it is a PreTrainedModel
            **enc,
            do_sample=not greedy,
            temperature=temperature if not greedy else None,
            top_p=top_p if not greedy else None,
            top_k=0 if not greedy else None,
            max_new_tokens=max_new_tokens,
            min_new_tokens=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    response = out[:, enc["input_ids"].shape[1] :]
    is_eos = response == tokenizer.eos_token_id
    # A token is part of the answer if no EOS came strictly before it.
    mask = ((is_eos.cumsum(dim=1) - is_eos.long()) == 0).float()
    kept = response * mask.long() + tokenizer.pad_token_id * (1 - mask.long())
    texts = [t.strip() for t in tokenizer.batch_decode(kept, skip_special_tokens=True)]
    attention_mask = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    return Samples(list(queries), texts, out, attention_mask, mask)


@torch.no_grad()
def generate(
    lm: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[Prompt],
    reward_fn: RewardFn,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    greedy: bool = False,
) -> Rollout:
    """Answer `queries` and score the answers with `reward_fn`."""
    s = sample(lm, tokenizer, queries, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy)
    scores = torch.tensor(reward_fn(s.queries, s.responses), dtype=torch.float32, device=s.mask.device)
    if scores.shape != (len(queries),):
        raise TrainingError(f"reward_fn returned {tuple(scores.shape)} scores for {len(queries)} responses")
    return Rollout(s.queries, s.responses, s.input_ids, s.attention_mask, s.mask, scores)


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class PolicyEval:
    mean_reward: float
    kl: float  # mean per-token KL to the reference on the policy's own samples, nats
    mean_length: float  # response tokens, EOS included
    repetition: float
    n: int
    gate_reward: float | None = None  # mean of `gate_fn`'s reward on the same answers
    kl_to: dict[str, float] | None = None  # per-token KL to each of `others`

    def guardrail_stats(self) -> dict[str, float]:
        """What `trainers.ppo.check_guardrails` judges."""
        return {"kl": self.kl, "mean_length": self.mean_length, "repetition": self.repetition, "mean_reward": self.mean_reward}


@torch.no_grad()
def evaluate_policy(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: RewardFn,
    queries: Sequence[Prompt],
    *,
    reference: PreTrainedModel | None = None,
    max_new_tokens: int = 32,
    temperature: float = SAMPLING_TEMPERATURE,
    top_p: float = SAMPLING_TOP_P,
    samples_per_query: int = 2,
    seed: int = 1234,
    batch_size: int = 64,
    gate_fn: RewardFn | None = None,
    others: dict[str, PreTrainedModel] | None = None,
) -> PolicyEval:
    """Mean reward of `lm` on held-out `queries` with fixed-seed sampling (the same draws before
    and after training), its per-token KL to `reference` (0 without one), and answer length;
    with `gate_fn`, the mean of that second reward on the same answers; with `others` (name ->
    model), the KL to each of them too."""
    if not queries:
        raise TrainingError("evaluation needs at least one held-out query")
    lm.eval()
    device = next(lm.parameters()).device
    repeated = [q for q in queries for _ in range(samples_per_query)]
    rewards: list[float] = []
    kls: list[tuple[float, float]] = []
    lengths: list[float] = []
    reps: list[float] = []
    gates: list[float] = []
    other_kls: dict[str, list[tuple[float, float]]] = {name: [] for name in others or {}}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(0, len(repeated), batch_size):
            ro = generate(
                lm,
                tokenizer,
                repeated[i : i + batch_size],
                reward_fn,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
            )
            rewards += ro.scores.tolist()
            lengths += ro.lengths().tolist()
            reps.append(ro.repetition() * len(ro.queries))
            if gate_fn is not None:
                gates += gate_fn(ro.queries, ro.responses)
            if reference is None and not others:
                continue
            own = sequence_logprobs(lm, ro.input_ids, ro.attention_mask, ro.response_len, temperature)
            tokens = ro.mask.sum().item()
            for name, model in [("", reference), *(others or {}).items()]:
                if model is not None:
                    ref = sequence_logprobs(model, ro.input_ids, ro.attention_mask, ro.response_len, temperature)
                    (other_kls[name] if name else kls).append((kl_estimate(own, ref, ro.mask).item(), tokens))
    return PolicyEval(
        sum(rewards) / len(rewards),
        _token_mean(kls),
        sum(lengths) / len(lengths),
        sum(reps) / len(repeated),
        len(repeated),
        sum(gates) / len(gates) if gates else None,
        {name: _token_mean(v) for name, v in other_kls.items()} if others else None,
    )


def _token_mean(kls: list[tuple[float, float]]) -> float:
    """Per-token KL over batches of (KL, tokens)."""
    return sum(k * n for k, n in kls) / sum(n for _, n in kls) if kls else 0.0
