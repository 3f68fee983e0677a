"""Training a reward model: Bradley-Terry on preference pairs and BCE on unpaired (pointwise)
feedback, then evaluation on held-out conversations and an atomic version directory. Every answer
is scored in its conversation (the earlier turns and the question, `trainers.dataset.prompts`).

    from trainers.reward import train_reward_model
    model, metrics = train_reward_model(events, RewardConfig.from_settings(settings), version_dir, lineage={...})

CLI: `rlhf reward train --data FILE` and `rlhf reward eval --model DIR --data FILE`. Under
`torchrun --nproc_per_node N -m rlhf.cli reward train ...` it trains data-parallel (`trainers.distributed`).

The pieces: the model and its versions in `trainers.reward_model`, the losses in
`trainers.reward_losses`, the held-out metrics in `trainers.reward_eval`; this module is the loop.
It is our own rather than TRL's RewardTrainer because it is as fast or faster on the same model and
data (`python -m bench.reward`): the texts are tokenised once, batches are drawn from examples of
similar length and padded only to their longest, chosen and rejected go through one forward pass,
and AdamW is the fused kernel.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from core.errors import TrainingError
from schemas.events import FeedbackEvent
from trainers import distributed
from trainers.batching import length_batches
from trainers.dataset import RewardData, build_dataset, prompts
from trainers.reward_config import RewardConfig
from trainers.reward_eval import evaluate
from trainers.reward_losses import example_weights, pairwise_loss, pointwise_loss
from trainers.reward_model import RewardModel, without_dropout

Progress = Callable[[int, int, dict[str, float]], None]  # (steps done, total steps, running metrics)


def _recent(rows: Dataset) -> list[bool]:
    """The `recent` flags of a dataset (`trainers.dataset` sets them; a hand-made one may not)."""
    return list(rows["recent"]) if "recent" in rows.column_names else [False] * len(rows)


def _trusted(rows: Dataset) -> torch.Tensor:
    """(examples, 1) weights of the users behind each example (`trainers.trust`; 1 where not set)."""
    weights = rows["weight"] if "weight" in rows.column_names else [1.0] * len(rows)
    return torch.tensor(weights, dtype=torch.float32).unsqueeze(1)


def fit(rm: RewardModel, pairs: Dataset, points: Dataset, progress: Progress | None = None) -> dict[str, float]:
    """Train in place on preference pairs (Bradley-Terry) and unpaired points (BCE); returns train stats."""
    run, cfg = rm.config, rm.config.training
    if run.num_threads:
        torch.set_num_threads(run.num_threads)
    if len(pairs) + len(points) == 0:
        raise TrainingError("no training examples: every event was invalid, dropped or held out")
    start = time.perf_counter()
    pair_prompts = prompts(pairs)  # each answer in its conversation (`trainers.dataset`)
    chosen = rm.encode(pair_prompts, pairs["chosen"])
    rejected = rm.encode(pair_prompts, pairs["rejected"])
    point_ids = rm.encode(prompts(points), points["response"])
    labels = torch.tensor(points["label"], dtype=torch.float32)
    pair_weights = example_weights(_recent(pairs), run.heads, cfg.recent_weight, run.seed) * _trusted(pairs)
    point_weights = example_weights(_recent(points), run.heads, cfg.recent_weight, run.seed + 1) * _trusted(points)

    rng = random.Random(run.seed)
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
                    chosen_scores, rejected_scores = scores.chunk(2)
                    loss = pairwise_loss(chosen_scores, rejected_scores, pair_weights[batch].to(rm.device))
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
                    progress(step, total, {"loss": float(loss_sum / step), "lr": float(schedule.get_last_lr()[0])})
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


def train_reward_model(
    events: Iterable[FeedbackEvent | dict | str | bytes],
    config: RewardConfig,
    out_dir: str | Path,
    lineage: dict[str, Any] | None = None,
    progress: Progress | None = None,
    *,
    recent_ids: frozenset[str] = frozenset(),
    warm_start: str | Path | None = None,
    user_weight: Callable[[str], float] = lambda _: 1.0,
) -> tuple[RewardModel, dict[str, Any]]:
    """Build the dataset, train, evaluate on the held-out queries and save the version to `out_dir`.

    `recent_ids`: the newest events, weighed up by `config.training.recent_weight`. `warm_start`: a saved
    reward model to continue from (the previous round's) instead of a fresh head, used when its
    backbone and heads match `config`. `user_weight` (`trainers.trust.UserTrust.weight`) weighs each
    example by the users behind it. `lineage` (trigger ids, offset ranges, parent versions...)
    is stored verbatim in lineage.json.
    Returns the trained model and its metrics: {"train": ..., "eval": ..., "data": dataset summary}.
    Under torchrun every process trains; rank 0 alone evaluates (`eval` is None elsewhere) and saves.
    """
    distributed.init()  # under torchrun: join the other processes and take this one's GPU before the model is placed
    data: RewardData = build_dataset(events, **config.dataset_options(), recent_ids=recent_ids, user_weight=user_weight)
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
    same = {"max_length", "truncation", "ensemble_members", "gate_head"}
    was, now = previous.config, config
    if was.base_model != now.base_model or any(getattr(was.training, k) != getattr(now.training, k) for k in same):
        return None
    torch.manual_seed(config.seed)
    if config.training.disable_dropout:  # a saved config.json keeps the backbone's dropout rates
        without_dropout(previous.model)
    # The previous model has fitted the older history: its config records the passes this version got.
    t = config.training
    previous.config = config.model_copy(update={"training": t.updated(epochs=t.warm_epochs)}) if t.warm_epochs else config
    previous.warm = True
    return previous
