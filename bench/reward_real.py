"""The reward model on real human preferences: held-out pairwise accuracy on the PandaLM pairs
(bench/data/pandalm-prefs.jsonl, 842 human-labelled pairs; see bench/data/README.md), next to
the length-only baseline ("the longer answer wins") on the same held-out pairs.

    python -m bench.reward_real                                   # MiniLM-128 as before, MiniLM keeping the response
    python -m bench.reward_real --variants minilm-128-right minilm-128-keep minilm-512-keep smollm2-256-keep

Prompts are split train / held-out by the project's stable hash (`trainers.dataset.is_eval_query`,
`--eval-fraction` of the prompts held out), so no held-out prompt is seen in training. Each variant
is a `RewardConfig` (backbone, max_length, truncation) trained by the project's own loop
(`trainers.reward.fit`, the defaults of `reward_model.training`) on the training prompts' pairs as
they are, and scored on the held-out pairs. A variant is named `BACKBONE-MAXLEN-TRUNCATION`, with
BACKBONE `minilm` or `smollm2` and TRUNCATION `right` (cut the joined text's end, as before) or
`keep` (keep the response, cut the prompt from the left).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers.utils import logging as hf_logging

from core.learning_settings import RewardTrainingSettings
from trainers.dataset import POINT_FEATURES, is_eval_query
from trainers.reward import fit
from trainers.reward_config import RewardConfig
from trainers.reward_model import RewardModel

DATA = Path(__file__).resolve().parent / "data" / "pandalm-prefs.jsonl"
TRUNCATION = {"right": "right", "keep": "keep_response"}


def load_split(path: Path, eval_fraction: float, salt: str) -> tuple[Dataset, list[dict]]:
    """(training pairs as the trainer takes them, held-out rows), split by prompt."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if not is_eval_query(r["prompt"], eval_fraction, salt)]
    held_out = [r for r in rows if is_eval_query(r["prompt"], eval_fraction, salt)]
    pairs = Dataset.from_dict(
        {
            "query": [r["prompt"] for r in train],
            "chosen": [r["chosen"] for r in train],
            "rejected": [r["rejected"] for r in train],
            "source": ["pandalm"] * len(train),
            "chosen_kind": ["human"] * len(train),
            "rejected_kind": ["human"] * len(train),
        }
    )
    return pairs, held_out


def length_baseline(rows: list[dict]) -> float:
    """Share of pairs where the longer answer (in characters) is the chosen one; a tie counts half."""
    return sum(
        1.0 if len(r["chosen"]) > len(r["rejected"]) else 0.5 if len(r["chosen"]) == len(r["rejected"]) else 0.0 for r in rows
    ) / len(rows)


def config_of(variant: str, threads: int, epochs: int | None) -> RewardConfig:
    backbone, max_length, truncation = variant.split("-")
    training = RewardTrainingSettings(max_length=int(max_length), truncation=TRUNCATION[truncation])
    training = training.updated(epochs=epochs) if epochs else training
    return RewardConfig(base_model=backbone, training=training, num_threads=threads)


def run_variant(variant: str, pairs: Dataset, held_out: list[dict], threads: int, epochs: int | None) -> dict[str, float]:
    cfg = config_of(variant, threads, epochs)
    rm = RewardModel.create(cfg)
    no_points = Dataset.from_dict({name: [] for name in POINT_FEATURES}, features=POINT_FEATURES)
    start = time.perf_counter()
    train = fit(rm, pairs, no_points)
    prompts = [r["prompt"] for r in held_out]
    chosen = rm.predict(prompts, [r["chosen"] for r in held_out])
    rejected = rm.predict(prompts, [r["rejected"] for r in held_out])
    accuracy = sum(c > j for c, j in zip(chosen, rejected, strict=True)) / len(held_out)
    return {
        "accuracy": accuracy,
        "train_pairs_per_s": train["examples_per_second"],
        "seconds": time.perf_counter() - start,
        "epochs": cfg.training.epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--variants", nargs="+", default=["minilm-128-right", "minilm-128-keep"])
    parser.add_argument("--eval-fraction", type=float, default=0.3, help="share of prompts held out (default 0.3)")
    parser.add_argument("--salt", default="", help="changes which prompts are held out")
    parser.add_argument("--epochs", type=int, help="override reward_model.training.epochs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    pairs, held_out = load_split(args.data, args.eval_fraction, args.salt)
    baseline = length_baseline(held_out)
    n_prompts = len({r["prompt"] for r in held_out})
    print(
        f"{args.data.name}: {len(pairs)} training pairs, {len(held_out)} held-out pairs on {n_prompts} held-out prompts; "
        f"length-only baseline {baseline:.1%}",
        flush=True,
    )
    for variant in args.variants:
        torch.manual_seed(0)
        r = run_variant(variant, pairs, held_out, args.threads, args.epochs)
        print(
            f"{variant:20s} held-out pairwise accuracy {r['accuracy']:6.1%}   length-only baseline {baseline:6.1%}   "
            f"({r['epochs']} epochs, {r['train_pairs_per_s']:.1f} pairs/s, {r['seconds']:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
