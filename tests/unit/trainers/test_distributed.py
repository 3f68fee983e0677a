"""Data-parallel reward-model training (trainers.distributed): each process's share of a batch and
its loss factor on literal tensors, and two CPU processes on gloo training the same model, to float
tolerance, as one process does."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from transformers import AutoTokenizer, BertConfig, BertModel

from core.learning_settings import RewardTrainingSettings
from trainers import distributed
from trainers.base_models import resolve_base_model
from trainers.reward import train_reward_model
from trainers.reward_config import RewardConfig
from trainers.reward_losses import example_weights, pairwise_loss
from trainers.reward_model import RewardModel
from trainers.synthetic import feedback_events, split_questions


def test_shards_are_disjoint_and_together_the_whole_batch():
    for n in range(12):
        for world in (1, 2, 3, 5):
            shares = [distributed.shard(list(range(n)), r, world) for r in range(world)]
            assert [i for share in shares for i in share] == list(range(n))  # disjoint, whole, in rank order
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_process_trains_on_the_whole_batch():
    assert distributed.world() == 1 and distributed.is_main()
    assert distributed.split([4, 1, 2], torch.ones(5, 3)) == ([4, 1, 2], 1.0)
    assert distributed.average(torch.tensor(0.25)) == 0.25


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("size", [1, 5, 9])
def test_the_processes_losses_average_to_the_one_process_weighted_mean(monkeypatch, world, size):
    """With bootstrap and recency weights (zeros included) the shares' means differ from the batch's,
    but their factors make the processes' mean loss, DDP's gradient average, the batch's weighted mean."""
    generator = torch.Generator().manual_seed(size)
    chosen, rejected = torch.randn(12, 5, generator=generator), torch.randn(12, 5, generator=generator)
    weights = example_weights([i % 3 == 0 for i in range(12)], heads=5, recent_weight=2.0, seed=size)
    batch = [7, 2, 9, 0, 11, 4, 5, 1, 10][:size]
    whole = pairwise_loss(chosen[batch], rejected[batch], weights[batch])
    monkeypatch.setattr(distributed, "world", lambda: world)
    parts = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        mine, share = distributed.split(batch, weights)
        assert share == 0.0 or set(mine) <= set(batch)
        parts.append(pairwise_loss(chosen[mine], rejected[mine], weights[mine]) * share)
    assert (sum(parts) / world).item() == pytest.approx(whole.item(), rel=1e-6)


def _base(path: Path) -> str:
    """A 2-layer, 32-wide BERT with MiniLM's vocabulary (as tests/unit/trainers/test_reward.py builds)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _train(base: str, out: Path) -> dict:
    """80 events: 23 training pairs and 28 points, with recency and bootstrap weights. Batches of 9
    split 5/4 between two processes; the last pair batch is 5 (3/2) and the last point batch 1, which
    the second process runs with factor 0."""
    train_questions, _ = split_questions()
    events = feedback_events(train_questions, 80, seed=3)
    config = RewardConfig(
        base_model=base,
        training=RewardTrainingSettings(epochs=2, batch_size=9, learning_rate=1e-3, eval_fraction=0.2),
        num_threads=1,
    )
    _, metrics = train_reward_model(events, config, out, recent_ids=frozenset(e.event_id for e in events[::2]))
    return metrics


def _worker(rank: int, world: int, port: int, base: str, out: str) -> None:  # one spawned process of the group
    join_as(rank, world, port)
    metrics = _train(base, Path(out) / "rm")
    (Path(out) / f"train-{rank}.json").write_text(json.dumps({**metrics["train"], "evaluated": metrics["eval"] is not None}))
    distributed.teardown()


def join_as(rank: int, world: int, port: int) -> None:
    """A spawned test process's torchrun variables: process `rank` of `world`, the group on `port`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_the_same_model_as_one(tmp_path):
    base = _base(tmp_path / "tiny-bert")
    one = _train(base, tmp_path / "one" / "rm")["train"]
    mp.spawn(_worker, args=(2, _free_port(), base, str(tmp_path / "two")), nprocs=2)

    ranks = [json.loads((tmp_path / "two" / f"train-{r}.json").read_text()) for r in range(2)]
    assert [r["evaluated"] for r in ranks] == [True, False]  # rank 0 alone evaluates and writes the version
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["rm", "train-0.json", "train-1.json"]
    for two in ranks:
        assert (two["steps"], two["pairs"], two["points"]) == (one["steps"], one["pairs"], one["points"])
        assert two["mean_loss"] == pytest.approx(one["mean_loss"], rel=1e-5)

    start = RewardModel.create(RewardConfig(base_model=base)).model.state_dict()
    single = RewardModel.load(tmp_path / "one" / "rm").model.state_dict()
    parallel = RewardModel.load(tmp_path / "two" / "rm").model.state_dict()
    assert single.keys() == parallel.keys()
    gaps = {name: (single[name] - parallel[name]).abs().max().item() for name in single}
    assert max(gaps.values()) < 1e-5, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]
    assert "classifier.weight" in gaps and any(name.startswith("bert.encoder.") for name in gaps)  # the head and the backbone
    moved = max((single[name] - start[name]).abs().max().item() for name in single)
    assert moved > 1e-3  # trained: equal because of the same updates, not because nothing moved
