"""The reward model: a backbone with a scalar head scoring a (query, response), trained with a
Bradley-Terry loss on preference pairs and a BCE loss on unpaired (pointwise) feedback.

The backbone is `reward_model.base_model`: the MiniLM encoder (`minilm`, the default), SmolLM2 with
a score head (`smollm2`) or any model `trainers.base_models` resolves. Its input is the
conversation in the backbone's chat format (`trainers.chat_format`; `Query: ...\nResponse: ...`
without a template). Truncation to `max_length` keeps the response and cuts the prompt from the
left (`truncation: keep_response`); `bench/reward_real.py` measures it on real human preferences.

    from trainers.reward import RewardModel, train_reward_model
    model, metrics = train_reward_model(events, RewardConfig.from_settings(settings), version_dir, lineage={...})
    RewardModel.load(version_dir).predict(queries, responses)   # -> list[float], logits
    RewardModel.load(version_dir).reward(queries, responses)    # -> their sigmoid, in (0, 1)

CLI: `rlhf reward train --data FILE` and `rlhf reward eval --model DIR --data FILE`. Under
`torchrun --nproc_per_node N -m rlhf.cli reward train ...` it trains data-parallel (`trainers.distributed`).

The training loop is our own rather than TRL's RewardTrainer because it is as fast or faster on the
same model and data (`python -m bench.reward`): the texts are tokenised once, batches are drawn from
examples of similar length and padded only to their longest, chosen and rejected go through one
forward pass, and AdamW is the fused kernel. A version directory is written atomically
(`core.files.write_atomically`), so a crash never leaves a half-written version that loads.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from pydantic_core import to_jsonable_python
from scipy.stats import rankdata
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core.errors import ConfigError, ModelLoadError, RlhfError, TrainingError
from core.files import write_atomically
from schemas.events import FeedbackEvent
from trainers import distributed
from trainers.base_models import resolve_base_model
from trainers.batching import length_batches, pad_batch
from trainers.chat_format import reward_parts, reward_text
from trainers.dataset import RewardData, build_dataset
from trainers.device import pick_device, use_bf16
from trainers.ensemble import disagreement
from trainers.reward_config import RewardConfig

CONFIG_FILE, METRICS_FILE, LINEAGE_FILE = "reward_config.json", "metrics.json", "lineage.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
UNKNOWN_LIMIT = 1_000_000_000  # tokenizers that do not know their model's limit report ~1e30

Progress = Callable[[int, int, dict[str, float]], None]  # (steps done, total steps, running metrics)


class VersionExistsError(RlhfError, FileExistsError):
    """A reward model version directory is already there; versions are never overwritten."""


def format_input(query: str, response: str) -> str:
    """The input of a backbone without a chat template (MiniLM): `Query: ...\nResponse: ...`."""
    return reward_text(None, query, response)


def keep_response(prompt: list[int], response: list[int], budget: int) -> list[int]:
    """`prompt + response` in at most `budget` tokens: the response whole when it leaves the prompt
    a quarter of the budget, else cut from the right; the prompt takes the rest, cut from the left
    (its end, where the question usually is, stays)."""
    if len(prompt) + len(response) <= budget:
        return prompt + response
    response = response[: budget - min(len(prompt), budget // 4)]
    kept = budget - len(response)
    return (prompt[len(prompt) - kept :] if kept else []) + response


def backbone_limit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens the backbone can read: its position embeddings, or the tokenizer's limit if smaller."""
    limits = (getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length)
    return min((int(n) for n in limits if n and n < UNKNOWN_LIMIT), default=UNKNOWN_LIMIT)


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry: -log P(chosen beats rejected) = -log sigmoid(r_chosen - r_rejected), averaged
    with `weights` (same shape: examples x heads) when given."""
    return _weighted_mean(-F.logsigmoid(chosen - rejected), weights)


def pointwise_loss(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """BCE with the reward as the logit, so sigmoid(reward) reads as P(the user liked it)."""
    return _weighted_mean(F.binary_cross_entropy_with_logits(scores, labels, reduction="none"), weights)


def _weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum().clamp(min=1e-8)


def example_weights(recent: Sequence[bool], heads: int, recent_weight: float, seed: int) -> torch.Tensor:
    """(examples, heads) loss weights: each head's bootstrap resample (Poisson(1) counts, as in the
    online bootstrap; a single head sees every example once) times `recent_weight` for the newest
    data. Different resamples are what make the heads disagree where the data is thin."""
    base = torch.tensor([recent_weight if r else 1.0 for r in recent], dtype=torch.float32).unsqueeze(1)
    if heads == 1:
        return base
    counts = torch.poisson(torch.ones(len(recent), heads), generator=torch.Generator().manual_seed(seed))
    return base * counts


class RewardModel:
    """A sequence classifier with one output (the reward), its tokenizer and how it was made."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: RewardConfig,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.metrics = metrics or {}
        self.lineage = lineage or {}
        self.device = next(model.parameters()).device
        self.warm = False  # continued from an earlier version's weights (train_reward_model's warm_start)

    @classmethod
    def create(cls, config: RewardConfig) -> RewardModel:
        """The base model with a freshly initialised scalar head, on the configured device;
        ModelLoadError naming the base model when it is missing or cannot be loaded, ConfigError
        when `max_length` is past what the backbone can read."""
        source = resolve_base_model(config.base_model)
        torch.manual_seed(config.seed)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=config.heads)
        except Exception as exc:  # a corrupt directory or an unknown Hub id: name it, keep the cause
            raise ModelLoadError(f"{source}: cannot load base model: {type(exc).__name__}: {exc}") from exc
        if config.disable_dropout:
            _without_dropout(model)
        if tokenizer.pad_token is None:  # decoder-only bases (GPT-2 style) ship without one
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id  # the head finds the last real token with it
        limit = backbone_limit(model, tokenizer)
        if config.max_length > limit:
            raise ConfigError(
                f"reward model max_length {config.max_length} is past {config.base_model}'s limit of {limit} tokens"
            )
        return cls(model.to(pick_device(config.device)), tokenizer, config)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> RewardModel:
        """A saved version; ModelLoadError naming `path` when it is missing, incomplete or corrupt."""
        root = Path(path)
        if not root.is_dir():
            raise ModelLoadError(f"{root}: no reward model here (directory not found)")
        missing = [name for name in ("config.json", CONFIG_FILE, METRICS_FILE, LINEAGE_FILE) if not (root / name).is_file()]
        if not any((root / name).is_file() for name in WEIGHT_FILES):
            missing.append("model.safetensors")
        if missing:
            raise ModelLoadError(f"{root}: not a complete reward model directory, missing {', '.join(missing)}")
        try:
            saved = json.loads((root / CONFIG_FILE).read_text())
            saved.setdefault("truncation", "right")  # versions saved before the option truncated the joined text
            saved.setdefault("ensemble_members", 1)  # ... and before the ensemble had one head
            saved.setdefault("gate_head", False)
            config = RewardConfig.model_validate(saved)
            metrics = json.loads((root / METRICS_FILE).read_text())
            lineage = json.loads((root / LINEAGE_FILE).read_text())
            tokenizer = AutoTokenizer.from_pretrained(root)
            model = AutoModelForSequenceClassification.from_pretrained(root)
        except Exception as exc:  # whatever a damaged file raises, the caller needs the path and the cause
            raise ModelLoadError(f"{root}: corrupt reward model: {type(exc).__name__}: {exc}") from exc
        if model.config.num_labels != config.heads:
            raise ModelLoadError(
                f"{root}: not a reward model (head has {model.config.num_labels} outputs, its config says {config.heads})"
            )
        model.eval()
        return cls(model.to(pick_device(device or config.device)), tokenizer, config, metrics, lineage)

    def encode(self, queries: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """Token ids, truncated (`config.truncation`) but not padded: each batch pads to its own longest later."""
        parts = [reward_parts(self.tokenizer, q, r) for q, r in zip(queries, responses, strict=True)]
        if not parts:
            return []
        if self.config.truncation == "right":
            return self.tokenizer(["".join(p) for p in parts], truncation=True, max_length=self.config.max_length)["input_ids"]
        heads = self.tokenizer([h for h, _ in parts], add_special_tokens=False)["input_ids"]
        tails = self.tokenizer([t for _, t in parts], add_special_tokens=False)["input_ids"]
        before, after = self._special_tokens()
        budget = self.config.max_length - len(before) - len(after)
        return [before + keep_response(h, t, budget) + after for h, t in zip(heads, tails, strict=True)]

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text (MiniLM: [CLS] and [SEP]), found by
        tokenising one word with and without them."""
        if not hasattr(self, "_specials"):
            bare = self.tokenizer("x", add_special_tokens=False)["input_ids"]
            full = self.tokenizer("x")["input_ids"]
            at = next((i for i in range(len(full)) if full[i : i + len(bare)] == bare), 0)
            self._specials = (full[:at], full[at + len(bare) :])
        return self._specials

    def scores(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Every head's score of a batch of token id lists, (B, heads), in one forward pass
        (bf16 autocast on a GPU)."""
        input_ids, attention_mask = pad_batch(ids, self.tokenizer.pad_token_id, self.device)
        with self._autocast():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits.float()

    def predict(
        self, queries: Sequence[str], responses: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> list[float]:
        """The reward of each (query, response), the ensemble members' mean score; `progress(done,
        total)` after each batch if given."""
        return self.head_scores(queries, responses, progress)[:, : self.config.ensemble_members].mean(dim=1).tolist()

    def head_scores(
        self, queries: Sequence[str], responses: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """Every head's score, (N, heads): the ensemble members, then the gate head if any."""
        return self.predict_ids(self.encode(queries, responses), progress)

    def gate_reward(self, queries: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The candidate gate's reward: the sigmoid of the gate head, which no policy was optimised
        against (the members' mean when the model has no gate head)."""
        scores = self.head_scores(queries, responses)
        gate = scores[:, -1] if self.config.gate_head else scores.mean(dim=1)
        return torch.sigmoid(gate.double()).tolist()

    def predict_reward(self, query: str, response: str) -> float:
        return self.predict([query], [response])[0]

    def reward(self, queries: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The reward a policy is trained and judged on: the sigmoid of each score. A Bradley-Terry
        score is a logit (sigmoid: P(the user liked it)), so this lies in (0, 1) and relative
        gains ("+15% mean reward") are well defined."""
        return torch.sigmoid(torch.tensor(self.predict(queries, responses), dtype=torch.float64)).tolist()

    def predict_ids(self, ids: Sequence[Sequence[int]], progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Every head's score of each token id list, (N, heads), on the CPU."""
        out = torch.zeros(len(ids), self.config.heads)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), self.config.eval_batch_size):
                chunk = order[start : start + self.config.eval_batch_size]
                out[chunk] = self.scores([ids[i] for i in chunk]).cpu()
                if progress is not None:
                    progress(start + len(chunk), len(order))
        self.model.train(was_training)
        return out

    def save(self, version_dir: str | Path) -> Path:
        """Write the version atomically; an existing version is never overwritten (VersionExistsError)."""
        final = Path(version_dir)
        if final.exists():
            raise VersionExistsError(f"{final}: reward model version already exists")
        try:
            write_atomically(final, self._write)
        except FileExistsError:  # another writer got there first
            raise VersionExistsError(f"{final}: reward model version already exists") from None
        return final

    def _write(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2))
        (directory / METRICS_FILE).write_text(json.dumps(self.metrics, indent=2, default=to_jsonable_python))
        (directory / LINEAGE_FILE).write_text(json.dumps(self.lineage, indent=2, default=to_jsonable_python))

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16(self.device) else nullcontext()


def _recent(rows: Dataset) -> list[bool]:
    """The `recent` flags of a dataset (`trainers.dataset` sets them; a hand-made one may not)."""
    return list(rows["recent"]) if "recent" in rows.column_names else [False] * len(rows)


def fit(rm: RewardModel, pairs: Dataset, points: Dataset, progress: Progress | None = None) -> dict[str, float]:
    """Train in place on preference pairs (Bradley-Terry) and unpaired points (BCE); returns train stats."""
    cfg = rm.config
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if len(pairs) + len(points) == 0:
        raise TrainingError("no training examples: every event was invalid, dropped or held out")
    start = time.perf_counter()
    chosen = rm.encode(pairs["query"], pairs["chosen"])
    rejected = rm.encode(pairs["query"], pairs["rejected"])
    point_ids = rm.encode(points["query"], points["response"])
    labels = torch.tensor(points["label"], dtype=torch.float32)
    pair_weights = example_weights(_recent(pairs), cfg.heads, cfg.recent_weight, cfg.seed)
    point_weights = example_weights(_recent(points), cfg.heads, cfg.recent_weight, cfg.seed + 1)

    rng = random.Random(cfg.seed)
    pair_lengths = [max(len(c), len(r)) for c, r in zip(chosen, rejected, strict=True)]
    steps_per_epoch = math.ceil(len(chosen) / cfg.batch_size) + math.ceil(len(point_ids) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    # Fused AdamW (as TRL's Trainer uses): one kernel over all parameters. On 2 CPU cores the default
    # per-tensor loop took ~1.1-1.7 s per MiniLM step against ~0.1 s fused.
    fused = rm.device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(rm.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
    warmup = int(total * cfg.warmup_ratio)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else (total - s) / max(1, total - warmup)
    )

    rm.model.train()
    step, loss_sum = 0, 0.0
    with distributed.data_parallel(rm):  # under torchrun: each process takes its share of every batch
        for _ in range(cfg.epochs):
            plan = [("pair", b) for b in length_batches(pair_lengths, cfg.batch_size, rng)]
            plan += [("point", b) for b in length_batches([len(p) for p in point_ids], cfg.batch_size, rng)]
            rng.shuffle(plan)
            for kind, batch in plan:
                batch, share = distributed.split(batch, pair_weights if kind == "pair" else point_weights)
                if kind == "pair":  # chosen and rejected in one forward pass, every head at once
                    scores = rm.scores([chosen[i] for i in batch] + [rejected[i] for i in batch])
                    loss = pairwise_loss(*scores.chunk(2), pair_weights[batch].to(rm.device))
                else:
                    scores = rm.scores([point_ids[i] for i in batch])
                    target = labels[batch].unsqueeze(1).expand_as(scores).to(rm.device)
                    loss = cfg.pointwise_weight * pointwise_loss(scores, target, point_weights[batch].to(rm.device))
                loss = loss * share  # this process's part of the step's loss (share 1 in one process)
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                loss_sum += distributed.average(loss)
                if progress is not None:
                    progress(step, total, {"loss": loss_sum / step, "lr": schedule.get_last_lr()[0]})
    rm.model.eval()
    seconds = time.perf_counter() - start
    return {
        "steps": step,
        "epochs": cfg.epochs,
        "pairs": len(chosen),
        "points": len(point_ids),
        "mean_loss": loss_sum / max(1, step),
        "seconds": seconds,
        "examples_per_second": cfg.epochs * (len(chosen) + len(point_ids)) / seconds,
    }


def evaluate(
    rm: RewardModel, pairs: Dataset, points: Dataset, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Pairwise accuracy (overall and per pairing rule), ROC-AUC of pointwise labels and the reward distribution per feedback kind;
    `progress(texts scored, total)` as scoring goes, if given."""
    texts = sorted(
        {(q, r) for q, c, j in zip(pairs["query"], pairs["chosen"], pairs["rejected"], strict=True) for r in (c, j)}
        | set(zip(points["query"], points["response"], strict=True))
    )
    heads = rm.head_scores([q for q, _ in texts], [r for _, r in texts], progress)
    members = heads[:, : rm.config.ensemble_members]
    reward = dict(zip(texts, members.mean(dim=1).tolist(), strict=True))
    gate = dict(zip(texts, heads[:, -1].tolist(), strict=True)) if rm.config.gate_head else reward

    by_kind: dict[str, list[float]] = defaultdict(list)
    right_by_source: dict[str, list[bool]] = defaultdict(list)  # thumbs pairs carry users' coin flips; corrections do not
    margins, gate_right, recent_right = [], [], []
    for row in pairs:
        good, bad = reward[row["query"], row["chosen"]], reward[row["query"], row["rejected"]]
        margins.append(good - bad)
        gate_right.append(gate[row["query"], row["chosen"]] > gate[row["query"], row["rejected"]])
        if row["recent"]:
            recent_right.append(good > bad)
        right_by_source[row["source"]].append(good > bad)
        by_kind[row["chosen_kind"]].append(good)
        by_kind[row["rejected_kind"]].append(bad)
    point_scores = [reward[q, r] for q, r in zip(points["query"], points["response"], strict=True)]
    for kind, score in zip(points["kind"], point_scores, strict=True):
        by_kind[kind].append(score)

    return {
        "pairs": len(margins),
        "pairwise_accuracy": float(np.mean(np.array(margins) > 0)) if margins else None,
        "mean_margin": float(np.mean(margins)) if margins else None,
        "accuracy_by_source": {source: float(np.mean(right)) for source, right in sorted(right_by_source.items())},
        # The newest policies' own answers: what the next policy update is judged on.
        "recent_pairs": len(recent_right),
        "accuracy_recent": float(np.mean(recent_right)) if recent_right else None,
        "gate_accuracy": float(np.mean(gate_right)) if gate_right else None,
        "disagreement": float(disagreement(members).mean()) if len(texts) else None,
        "points": len(point_scores),
        "roc_auc": roc_auc(points["label"], point_scores),
        "reward_by_kind": {kind: _describe(values) for kind, values in sorted(by_kind.items())},
    }


def roc_auc(labels: Sequence[float], scores: Sequence[float]) -> float | None:
    """P(a random positive scores above a random negative), ties counting half; None without both classes."""
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)  # Mann-Whitney U from average ranks
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _describe(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"count": len(a), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}


def train_reward_model(
    events: Iterable[FeedbackEvent | dict | str | bytes],
    config: RewardConfig,
    out_dir: str | Path,
    lineage: dict[str, Any] | None = None,
    progress: Progress | None = None,
    *,
    recent_ids: frozenset[str] = frozenset(),
    warm_start: str | Path | None = None,
) -> tuple[RewardModel, dict[str, Any]]:
    """Build the dataset, train, evaluate on the held-out queries and save the version to `out_dir`.

    `recent_ids`: the newest events, weighed up by `config.recent_weight`. `warm_start`: a saved
    reward model to continue from (the previous round's) instead of a fresh head, used when its
    backbone and heads match `config`. `lineage` (trigger ids, offset ranges, parent versions...)
    is stored verbatim in lineage.json.
    Returns the trained model and its metrics: {"train": ..., "eval": ..., "data": dataset summary}.
    Under torchrun every process trains; rank 0 alone evaluates (`eval` is None elsewhere) and saves.
    """
    distributed.init()  # under torchrun: join the other processes and take this one's GPU before the model is placed
    data: RewardData = build_dataset(events, **config.dataset_options(), recent_ids=recent_ids)
    rm = _warm_started(warm_start, config) or RewardModel.create(config)
    train = fit(rm, data.train_pairs, data.train_points, progress)
    rm.metrics = {"train": train, "eval": None, "data": data.summary}
    if distributed.is_main():  # one process evaluates and writes the version; the others wait for it
        rm.metrics["eval"] = evaluate(rm, data.eval_pairs, data.eval_points)
        rm.lineage = {
            **(lineage or {}),
            "base_model": config.base_model,
            "warm_start": str(warm_start) if rm.warm else None,
            "created_at": datetime.now(UTC).isoformat(),
        }
        rm.save(out_dir)
    distributed.barrier()
    return rm, rm.metrics


def _warm_started(path: str | Path | None, config: RewardConfig) -> RewardModel | None:
    """The saved model at `path`, to train on under `config`, if it has the same backbone, heads and
    input; None (start fresh) otherwise."""
    if path is None:
        return None
    previous = RewardModel.load(path, device=config.device)
    same = {"base_model", "max_length", "truncation", "ensemble_members", "gate_head"}
    if any(getattr(previous.config, k) != getattr(config, k) for k in same):
        return None
    torch.manual_seed(config.seed)
    if config.disable_dropout:  # a saved config.json keeps the backbone's dropout rates
        _without_dropout(previous.model)
    # The previous model has fitted the older history: its config records the passes this version got.
    previous.config = config.model_copy(update={"epochs": config.warm_epochs}) if config.warm_epochs else config
    previous.warm = True
    return previous


def _without_dropout(model: PreTrainedModel) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
