"""Reward-model training throughput: the project's loop (`trainers.reward.fit`) next to TRL's
RewardTrainer, same model (MiniLM, one scalar head), same pairs, same batch size, fp32, one epoch each.

    python -m bench.reward [--pairs 256] [--batch-size 16] [--repeats 3] [--threads 2] [--naive]

Each repeat trains both from the same freshly loaded weights, one after the other, alternating
which goes first, after an untimed warm-up of both (the first training in a process is slower,
whichever it is), so load on a shared machine hits both alike; the median of the per-repeat ratios
is the figure. Pairs per CPU-second of this process (all its threads) are printed too: on a busy
machine they move less than wall-clock rates. RewardTrainer gets the pairs already tokenised with
the project's tokenisation (identical ids), and only its `train()` is timed; the project's time
includes tokenising. `--naive` adds the plain loop the notes measured at 18.7 pairs/s: padding to
max_length and separate chosen/rejected forward passes.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from transformers.utils import logging as hf_logging
from trl import RewardConfig as TrlRewardConfig
from trl import RewardTrainer

from core.learning_settings import RewardTrainingSettings
from trainers.dataset import POINT_FEATURES
from trainers.reward import fit
from trainers.reward_config import RewardConfig
from trainers.reward_losses import pairwise_loss
from trainers.reward_model import RewardModel, format_input
from trainers.synthetic import preference_pairs, split_questions


def pair_dataset(n: int) -> Dataset:
    train, _ = split_questions()
    rows = preference_pairs(train, n, seed=7)
    return Dataset.from_dict({"query": [r[0] for r in rows], "chosen": [r[1] for r in rows], "rejected": [r[2] for r in rows]})


def _with_dropout(cfg: RewardConfig) -> RewardConfig:
    """`cfg` with the backbone's dropout kept: TRL's trainer disables it itself, the plain loop keeps it."""
    return cfg.model_copy(update={"training": cfg.training.updated(disable_dropout=False)})


def run_project(cfg: RewardConfig, pairs: Dataset) -> tuple[float, float]:
    rm = RewardModel.create(cfg)
    no_points = Dataset.from_dict({name: [] for name in POINT_FEATURES}, features=POINT_FEATURES)
    start, cpu = time.perf_counter(), time.process_time()
    fit(rm, pairs, no_points)
    return len(pairs) / (time.perf_counter() - start), len(pairs) / (time.process_time() - cpu)


def run_trl(cfg: RewardConfig, pairs: Dataset) -> tuple[float, float]:
    rm = RewardModel.create(_with_dropout(cfg))
    tokenised = Dataset.from_dict(
        {
            "chosen_ids": rm.encode(pairs["query"], pairs["chosen"]),
            "rejected_ids": rm.encode(pairs["query"], pairs["rejected"]),
        }
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrlRewardConfig(
            output_dir=out,
            per_device_train_batch_size=cfg.training.batch_size,
            num_train_epochs=1,
            learning_rate=cfg.training.learning_rate,
            bf16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            seed=cfg.seed,
            max_length=cfg.training.max_length,
        )
        trainer = RewardTrainer(model=rm.model, args=args, train_dataset=tokenised, processing_class=rm.tokenizer)
        start, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        return len(pairs) / (time.perf_counter() - start), len(pairs) / (time.process_time() - cpu)


def run_naive(cfg: RewardConfig, pairs: Dataset) -> float:
    """The straightforward loop: every batch padded to max_length, chosen and rejected scored separately."""
    rm = RewardModel.create(_with_dropout(cfg))
    optimizer = torch.optim.AdamW(rm.model.parameters(), lr=cfg.training.learning_rate)
    rm.model.train()
    start = time.perf_counter()
    for i in range(0, len(pairs), cfg.training.batch_size):
        batch = pairs[i : i + cfg.training.batch_size]
        scores = []
        for side in ("chosen", "rejected"):
            texts = [format_input(q, r) for q, r in zip(batch["query"], batch[side], strict=True)]
            enc = rm.tokenizer(
                texts, truncation=True, max_length=cfg.training.max_length, padding="max_length", return_tensors="pt"
            )
            scores.append(rm.model(**enc).logits.squeeze(-1))
        pairwise_loss(*scores).backward()
        optimizer.step()
        optimizer.zero_grad()
    return len(pairs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--naive", action="store_true", help="also time the plain padded loop")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # One scalar head, as RewardTrainer trains (the project's default adds ensemble members and a gate head).
    training = RewardTrainingSettings(epochs=1, batch_size=args.batch_size, warmup_ratio=0.0, ensemble_members=1, gate_head=False)
    cfg = RewardConfig(base_model="minilm", training=training, num_threads=args.threads)
    pairs = pair_dataset(args.pairs)
    print(f"MiniLM fp32, {args.pairs} pairs, batch {args.batch_size}, {torch.get_num_threads()} threads, 1 epoch")

    # Untimed warm-up of both: the first training in a process pays one-time costs (allocator, kernels).
    warm = pairs.select(range(min(len(pairs), 2 * args.batch_size)))
    run_project(cfg, warm), run_trl(cfg, warm)
    ratios, cpu_ratios = [], []
    for repeat in range(args.repeats):
        if repeat % 2 == 0:  # alternate which goes first: the second of a pair runs on a warmer (or busier) machine
            ours_run, trl_run = run_project(cfg, pairs), run_trl(cfg, pairs)
        else:
            trl_run, ours_run = run_trl(cfg, pairs), run_project(cfg, pairs)
        (ours, ours_cpu), (trl, trl_cpu) = ours_run, trl_run
        ratios.append(ours / trl)
        cpu_ratios.append(ours_cpu / trl_cpu)
        naive = f"  naive loop {run_naive(cfg, pairs):6.1f}" if args.naive else ""
        print(
            f"repeat {repeat + 1}: project {ours:6.1f} pairs/s  RewardTrainer {trl:6.1f} pairs/s  ratio {ours / trl:.2f}   "
            f"per CPU-second: {ours_cpu:5.2f} vs {trl_cpu:5.2f}, ratio {ours_cpu / trl_cpu:.2f}{naive}",
            flush=True,
        )
    print(
        f"median ratio project/RewardTrainer: {statistics.median(ratios):.2f} wall-clock (target >= 1.0), "
        f"{statistics.median(cpu_ratios):.2f} per CPU-second (less disturbed by other load on the machine)"
    )


if __name__ == "__main__":
    main()
