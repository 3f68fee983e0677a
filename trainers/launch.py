"""Policy optimisation on several processes, data-parallel, launched by the trainer job itself when
`policy.processes` asks for more than one: torchrun starts that many copies of this module (one per
GPU with NCCL, gloo processes on CPU), each runs `optimise_policy` on its share of every rollout
(`trainers.ppo_update`), and rank 0 writes the version, forwards the progress and the result.

    metrics = optimise_in_processes(2, "ppo", parent_dir, RewardSpec(rm_dir, 1.0, gate=True),
                                    train_queries, eval_queries, config, out_dir, on_status=...)

The job's arguments travel in a JSON file (prompts, settings, the reward model's directory, the
feedback as JSON lines); progress comes back on rank 0's stdout, one JSON status per line; the
outcome in a result file: the metrics, a guardrail's rejection (GuardrailRejection again here), or
the error (TrainingError). PPO, the corrections' supervised passes before it and the TRL algorithms
(accelerate joins the same process group; `trainers.alternatives`) all run data-parallel.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import GuardrailRejection, TrainingError
from core.learning_settings import PolicyTrainingSettings
from schemas import FeedbackEvent
from trainers.chat_format import Conversation, Prompt
from trainers.policy import StatusFn, no_status

STATUS = "status "  # the prefix of rank 0's progress lines


@dataclass(frozen=True)
class RewardSpec:
    """The reward `optimise_policy` trains against, as a process can load it: a reward model's
    directory, the ensemble's uncertainty penalty, and whether its held-out gate head judges too."""

    model_dir: str
    uncertainty_penalty: float
    gate: bool


def optimise_in_processes(
    processes: int,
    algorithm: str,
    base_model_path: str,
    reward: RewardSpec,
    train_queries: Sequence[Prompt],
    eval_queries: Sequence[Prompt],
    config: PolicyTrainingSettings,
    out_dir: str | Path,
    on_status: StatusFn = no_status,
    feedback_events: Sequence[FeedbackEvent] | None = None,
    *,
    min_rating: int,
    original_path: str | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict[str, Any]:
    """`optimise_policy` on `processes` processes under torchrun; what it returns, or raises."""
    with tempfile.TemporaryDirectory(prefix="rlhf-launch-") as scratch:
        events = Path(scratch) / "feedback.jsonl"
        events.write_bytes(b"".join(e.to_bytes() + b"\n" for e in feedback_events or ()))
        spec = {
            "algorithm": algorithm,
            "base_model_path": base_model_path,
            "reward": reward.__dict__,
            "train_queries": [_prompt_json(q) for q in train_queries],
            "eval_queries": [_prompt_json(q) for q in eval_queries],
            "config": config.model_dump(mode="json"),
            "out_dir": str(out_dir),
            "feedback": str(events) if feedback_events is not None else None,
            "min_rating": min_rating,
            "original_path": original_path,
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir is not None else None,
            "result": str(Path(scratch) / "result.json"),  # rank 0 writes the outcome there
        }
        (Path(scratch) / "spec.json").write_text(json.dumps(spec))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
            "-m", "trainers.launch", str(Path(scratch) / "spec.json"),
        ]  # fmt: skip
        threads = max(1, (os.cpu_count() or 1) // processes)  # the job's cores, shared out
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as run:
            tail: list[str] = []
            for line in run.stdout or ():
                if line.startswith(STATUS):
                    on_status(*json.loads(line.removeprefix(STATUS)))
                else:
                    tail = [*tail[-40:], line]
        result_file = Path(scratch) / "result.json"
        if not result_file.is_file():
            raise TrainingError(f"{processes} policy-training processes exited with {run.returncode}:\n{''.join(tail)}")
        result = json.loads(result_file.read_text())
    if "rejected" in result:
        raise GuardrailRejection(result["rejected"])
    if "error" in result:
        raise TrainingError(result["error"])
    metrics: dict[str, Any] = result["metrics"]
    return metrics


def main(spec_file: str) -> None:
    """One torchrun process: join the group, optimise, and (rank 0) report."""
    from trainers import distributed
    from trainers.ensemble import EnsembleReward
    from trainers.optimise import optimise_policy
    from trainers.reward_model import RewardModel

    spec = json.loads(Path(spec_file).read_text())
    distributed.init()
    main_process = distributed.is_main()

    def status(state: str, stage: str, message: str, metrics: dict[str, float]) -> None:
        if main_process:
            print(STATUS + json.dumps([state, stage, message, metrics]), flush=True)

    rm = RewardModel.load(spec["reward"]["model_dir"])
    feedback = None
    if spec["feedback"] is not None:
        lines = Path(spec["feedback"]).read_bytes().splitlines()
        feedback = [FeedbackEvent.model_validate_json(line) for line in lines if line]
    try:
        metrics = optimise_policy(
            spec["algorithm"],
            spec["base_model_path"],
            EnsembleReward(rm, spec["reward"]["uncertainty_penalty"]),
            [_prompt(q) for q in spec["train_queries"]],
            [_prompt(q) for q in spec["eval_queries"]],
            PolicyTrainingSettings(**spec["config"]),
            spec["out_dir"],
            on_status=status,
            feedback_events=feedback,
            min_rating=spec["min_rating"],
            gate_fn=rm.gate_reward if spec["reward"]["gate"] else None,
            original_path=spec["original_path"],
            checkpoint_dir=spec["checkpoint_dir"],
        )
        outcome: dict[str, Any] = {"metrics": metrics}
    except GuardrailRejection as exc:
        outcome = {"rejected": str(exc)}
    except Exception as exc:  # every process fails alike; rank 0 says why
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    if main_process:
        Path(spec["result"]).write_text(json.dumps(outcome))
    distributed.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prompt_json(prompt: Prompt) -> Any:
    if isinstance(prompt, str):
        return prompt
    return {"query": prompt.query, "history": [list(turn) for turn in prompt.history], "system": prompt.system}


def _prompt(value: Any) -> Prompt:
    if isinstance(value, str):
        return value
    return Conversation(value["query"], tuple((role, text) for role, text in value["history"]), value["system"])


if __name__ == "__main__":
    main(sys.argv[1])
