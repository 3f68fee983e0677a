"""Data-parallel PPO (trainers.ppo_update under trainers.distributed): two CPU processes on gloo,
each holding half of one rollout, make the same update as one process holding all of it, to float
tolerance: the score scale, whitening, mini-batch token counts, micro-batches and the corrections'
supervised term all added up over the processes. The corrections' supervised passes before PPO
(`fit_demonstrations`) likewise."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.multiprocessing as mp

from core.learning_settings import PolicyTrainingSettings
from tests.unit.trainers.fast import FAST
from tests.unit.trainers.test_distributed import _free_port, join_as
from trainers import distributed
from trainers.demonstrations import fit_demonstrations
from trainers.policy import Rollout, load_policy
from trainers.ppo import PolicyWithValue, Reference, _rollout
from trainers.ppo_maths import RunningScoreScale
from trainers.ppo_resume import demo_batches
from trainers.ppo_update import Batch, learn
from trainers.synthetic import quality_reward, split_questions

# One mini-batch of the whole rollout per epoch (ranks' rows together are exactly it), two epochs,
# two micro-batches each, and corrections: every path of the update that is summed over processes.
CONFIG = PolicyTrainingSettings(**{**FAST, "batch_size": 6, "mini_batch_size": 6, "ppo_epochs": 2, "grad_accumulation_steps": 2})
DEMOS = [(q.text, "Open Settings, then choose Reset.") for q in split_questions()[0][:5]]


def _start(micro_policy: str) -> tuple[PolicyWithValue, Reference, torch.optim.Optimizer, object]:
    lm, tokenizer = load_policy(micro_policy)
    torch.manual_seed(0)
    policy = PolicyWithValue(lm).eval()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=CONFIG.learning_rate, eps=1e-5)
    return policy, Reference(policy, copy.deepcopy(lm)), optimizer, tokenizer


def _learn(micro_policy: str, batch: Batch, out: Path) -> None:
    policy, _, optimizer, tokenizer = _start(micro_policy)
    demos = demo_batches(tokenizer, DEMOS, CONFIG.mini_batch_size, 0, torch.device("cpu"))  # type: ignore[arg-type]
    losses, finite = learn(
        policy, optimizer, batch, RunningScoreScale(), 0.05, CONFIG, torch.autocast("cpu", enabled=False), demos
    )
    assert finite
    torch.save(policy.state_dict(), out / f"weights-{distributed.rank()}.pt")
    (out / f"losses-{distributed.rank()}.json").write_text(json.dumps(losses))


def _rows(batch: Batch, rows: list[int]) -> Batch:
    ro = batch.rollout
    shard = Rollout(
        [ro.queries[i] for i in rows],
        [ro.responses[i] for i in rows],
        ro.input_ids[rows],
        ro.attention_mask[rows],
        ro.mask[rows],
        ro.scores[rows],
    )
    return Batch(shard, batch.logprobs[rows], batch.values[rows], batch.ref_logprobs[rows])


def _fit(micro_policy: str, out: Path) -> None:
    lm, tokenizer = load_policy(micro_policy)
    loss = fit_demonstrations(lm, tokenizer, DEMOS, epochs=2, batch_size=3, learning_rate=1e-3)  # batches of 3 and 2 rows
    torch.save(lm.state_dict(), out / f"fitted-{distributed.rank()}.pt")
    (out / f"fit-loss-{distributed.rank()}.json").write_text(json.dumps(loss))


def _worker(rank: int, world: int, port: int, micro_policy: str, out: str) -> None:  # one spawned process of the group
    join_as(rank, world, port)
    distributed.init()
    batch = torch.load(Path(out) / "batch.pt", weights_only=False)
    _learn(micro_policy, _rows(batch, distributed.shard(range(len(batch.rollout.scores)), rank, world)), Path(out))
    _fit(micro_policy, Path(out))
    distributed.teardown()


def test_two_gloo_processes_make_the_same_ppo_update_and_supervised_passes_as_one(micro_policy: str, tmp_path: Path):
    policy, reference, _, tokenizer = _start(micro_policy)
    queries = [q.text for q in split_questions()[0][: CONFIG.batch_size]]
    batch = _rollout(policy, reference, tokenizer, queries, quality_reward, CONFIG, torch.autocast("cpu", enabled=False))  # type: ignore[arg-type]
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    (tmp_path / "one").mkdir()
    _learn(micro_policy, batch, tmp_path / "one")
    _fit(micro_policy, tmp_path / "one")
    (tmp_path / "two").mkdir()
    torch.save(batch, tmp_path / "two" / "batch.pt")
    mp.spawn(_worker, args=(2, _free_port(), micro_policy, str(tmp_path / "two")), nprocs=2)

    single = torch.load(tmp_path / "one" / "weights-0.pt")
    for rank in range(2):
        parallel = torch.load(tmp_path / "two" / f"weights-{rank}.pt")
        gaps = {name: (single[name] - parallel[name]).abs().max().item() for name in single}
        assert max(gaps.values()) < 1e-5, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]
        losses = json.loads((tmp_path / "two" / f"losses-{rank}.json").read_text())
        one = json.loads((tmp_path / "one" / "losses-0.json").read_text())
        assert losses.keys() == one.keys() and all(abs(losses[k] - one[k]) < 1e-5 for k in one)
    moved = max((single[name] - start[name]).abs().max().item() for name in single)
    assert moved > 1e-4  # equal because the updates are, not because nothing moved

    fitted = torch.load(tmp_path / "one" / "fitted-0.pt")
    for rank in range(2):
        parallel = torch.load(tmp_path / "two" / f"fitted-{rank}.pt")
        gaps = {name: (fitted[name] - parallel[name]).abs().max().item() for name in fitted}
        assert max(gaps.values()) < 1e-5, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]
        one_loss = json.loads((tmp_path / "one" / "fit-loss-0.json").read_text())
        assert abs(json.loads((tmp_path / "two" / f"fit-loss-{rank}.json").read_text()) - one_loss) < 1e-5
    base, _ = load_policy(micro_policy)
    assert max((fitted[n] - w).abs().max().item() for n, w in base.state_dict().items()) > 1e-4  # it did learn
