"""Reward-model subcommands: `rlhf reward train --data FILE [--out DIR]`, `rlhf reward eval --model DIR --data FILE`.

`torchrun --nproc_per_node N -m rlhf.cli reward train --data FILE --out DIR` trains on N processes
(one per GPU), data-parallel (`trainers.distributed`); rank 0 shows progress, writes DIR and prints.

FILE is JSONL, one FeedbackEvent per line (invalid lines are counted and reported, not fatal).
Training settings come from `reward_model:` in rlhf.yaml or RLHF_REWARD_MODEL__* variables.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from rlhf.arguments import command, group, settings_of


def _quiet_transformers() -> None:
    # The "newly initialised head" report and weight-loading bars would bury our own progress bar.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _train(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from trainers import distributed
    from trainers.dataset import read_jsonl
    from trainers.reward import train_reward_model
    from trainers.reward_config import RewardConfig

    settings = settings_of(args)
    config = RewardConfig.from_settings(settings)
    out = Path(args.out) if args.out else settings.home / "reward-models" / datetime.now(UTC).strftime("rm-%Y%m%dT%H%M%SZ")
    _quiet_transformers()
    with tqdm(desc="reward model", unit="step", disable=not distributed.is_main()) as bar:

        def progress(done: int, total: int, metrics: dict[str, float]) -> None:
            bar.total = total
            bar.update(done - bar.n)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")

        _, metrics = train_reward_model(
            read_jsonl(args.data), config, out, lineage={"data_file": str(Path(args.data).resolve())}, progress=progress
        )
    if distributed.is_main():
        print(json.dumps({"model": str(out), **metrics}, indent=2))


def _eval(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from trainers.dataset import build_dataset, read_jsonl
    from trainers.reward_eval import evaluate
    from trainers.reward_model import RewardModel

    _quiet_transformers()
    rm = RewardModel.load(args.model)
    # Everything in FILE is evaluated unless --held-out asks for the model's own eval split only.
    options = rm.config.dataset_options() if args.held_out else {**rm.config.dataset_options(), "eval_fraction": 1.0}
    data = build_dataset(read_jsonl(args.data), **options)
    with tqdm(desc="scoring", unit="text") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        metrics = evaluate(rm, data.eval_pairs, data.eval_points, progress)
    print(json.dumps({"model": args.model, "eval": metrics, "data": data.summary}, indent=2))


def register(sub: argparse._SubParsersAction) -> None:
    reward = group(sub, "reward", "Reward model: train on feedback, evaluate a saved version.")
    p = command(
        reward, "train", "Train a reward model on a JSONL file of FeedbackEvents and save it as a version directory.", _train
    )
    p.add_argument("--data", required=True, metavar="FILE", help="JSONL, one FeedbackEvent per line")
    p.add_argument("--out", metavar="DIR", help="version directory to create (default: RLHF_HOME/reward-models/rm-<UTC time>)")
    p = command(reward, "eval", "Score a saved reward model on a JSONL file of FeedbackEvents.", _eval)
    p.add_argument("--model", required=True, metavar="DIR", help="a version directory written by `rlhf reward train`")
    p.add_argument("--data", required=True, metavar="FILE", help="JSONL, one FeedbackEvent per line")
    p.add_argument("--held-out", action="store_true", help="only the queries the model's own split held out")
