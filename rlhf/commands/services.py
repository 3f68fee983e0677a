"""Subcommands of the trainer consumer, the decider, the model registry and the assistant service:
`rlhf trainer run`, `rlhf decider run`, `rlhf models list|show|promote|rollback|init`, `rlhf serve`."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict

from rlhf.arguments import command, group, settings_of
from schemas.events import DEFAULT_POLICY


def _registry(args: argparse.Namespace):
    from registry.store import ModelRegistry

    return ModelRegistry.of(settings_of(args))


def _trainer_run(args: argparse.Namespace) -> None:
    from consumers.trainer import consumer as trainer
    from consumers.trainer.job import TrainingJob

    settings = settings_of(args)
    trainer.run(settings, TrainingJob(settings), trainer.RetryPolicy(attempts=args.attempts, first_backoff_s=args.backoff))


def _decider_run(args: argparse.Namespace) -> None:
    from consumers.decider import service

    service.run(settings_of(args))


def _models_init(args: argparse.Namespace) -> None:
    from consumers.trainer.job import ensure_base_policy

    print(ensure_base_policy(settings_of(args)))


def _models_list(args: argparse.Namespace) -> None:
    registry = _registry(args)
    pointers = registry.pointers()
    for kind in ("policies", "reward_models"):
        print(f"{kind}:")
        for m in registry.versions(kind):
            marks = [name for name, v in pointers.get(m.policy, {}).items() if v == m.version]
            reward = m.metrics.get("mean_reward_after", m.metrics.get("pairwise_accuracy"))
            print(
                f"  {m.version:32} {m.status:11} parent={m.parent_version or '-':24} trigger={(m.trigger_id or '-')[:12]:12} "
                f"metric={'-' if reward is None else f'{reward:.3f}'} {' '.join(marks)}"
            )


def _models_show(args: argparse.Namespace) -> None:
    print(json.dumps(asdict(_registry(args).manifest(args.kind, args.version)), indent=2))


def _models_promote(args: argparse.Namespace) -> None:
    from consumers.decider.decisions import decide_by_hand

    print("serving", decide_by_hand(settings_of(args), _registry(args), args.policy, "promote", "promoted by hand", args.version))


def _models_rollback(args: argparse.Namespace) -> None:
    from consumers.decider.decisions import decide_by_hand

    print("rolled back", decide_by_hand(settings_of(args), _registry(args), args.policy, "rollback", "rolled back by hand"))


def _serve(args: argparse.Namespace) -> None:
    from assistant.service import serve
    from consumers.trainer.job import ensure_base_policy

    serve(settings_of(args), args, prepare=ensure_base_policy)


def register(sub: argparse._SubParsersAction) -> None:
    trainer = group(sub, "trainer", "The trainer consumer (group 'trainers').")
    p = command(
        trainer,
        "run",
        "Consume train triggers: replay data, train reward model + policy, evaluate, publish.",
        _trainer_run,
        log_level=logging.INFO,
    )
    p.add_argument("--attempts", type=int, default=3, help="tries per trigger before it goes to the DLQ")
    p.add_argument("--backoff", type=float, default=5.0, help="seconds before the first retry (doubles each time)")

    decider = group(sub, "decider", "The decider (group 'decider'): closes each A/B experiment with one decision.")
    command(
        decider,
        "run",
        "Analyse every open experiment per user on a timer; promote, roll back, or expire it at its horizon "
        "(ab_testing.horizon_users / horizon_s), through the registry, once.",
        _decider_run,
        log_level=logging.INFO,
    )

    models = group(sub, "models", "The model registry: versions, lineage, promotion.")
    command(
        models, "init", "Register the starting policy (policy.base_model) as the serving version if none serves.", _models_init
    )
    command(models, "list", "List policy and reward-model versions with status and lineage.", _models_list)
    p = command(models, "show", "Print one version's manifest (lineage, metrics, config hash).", _models_show)
    p.add_argument("version")
    p.add_argument("--kind", choices=("policies", "reward_models"), default="policies")
    for name, func, help in (
        ("promote", _models_promote, "Make VERSION (default: the A/B candidate) serve."),
        ("rollback", _models_rollback, "Drop the candidate, or return to the previous serving version."),
    ):
        p = command(models, name, help, func)
        p.add_argument("--policy", default=DEFAULT_POLICY)
        if name == "promote":
            p.add_argument("version", nargs="?")

    p = command(
        sub,
        "serve",
        "Run the assistant service (HTTP): A/B routing, interaction + exposure logging, hot swap.",
        _serve,
        log_level=logging.INFO,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8300)
