"""Engine subcommands: `engine install|up|down|status`, the local vLLM server (devtools/engine.py), and
`engine deploy|undeploy`, which put a policy version on an engine or take it off (registry/deployment.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from core.settings import Settings
from devtools.engine import LocalEngine
from devtools.engine_install import engine_python, engine_venv
from rlhf.arguments import command, group, settings_of
from schemas.events import DEFAULT_POLICY


def engine_of(settings: Settings, model: str | None = None, port: int | None = None) -> LocalEngine:
    """The local engine these settings and flags name; the base model is materialised on first use."""
    from trainers.base_models import resolve_base_model

    e = settings.engine
    name = model or e.model
    return LocalEngine(
        model_dir=Path(resolve_base_model(name)),
        data_dir=settings.engine_data_dir,
        served_name=Path(name).name,
        port=port or e.port,
        max_model_len=e.max_model_len,
        max_loras=e.max_loras,
        max_lora_rank=e.max_lora_rank,
        kv_cache_bytes=int(e.kv_cache_gib * (1 << 30)),
    )


def _install(args: argparse.Namespace) -> None:
    started = time.monotonic()
    print(f"vLLM (CPU build) in {engine_venv()} ...", flush=True)
    engine_python()
    print(f"ready in {time.monotonic() - started:.0f} s")


def _up(args: argparse.Namespace) -> None:
    engine = engine_of(settings_of(args), args.model, args.port)
    print(f"starting vLLM on {engine.url}, serving {engine.model_dir} as `{engine.served_name}`, log {engine.log_file} ...")
    took = engine.up()
    print(f"ready in {took:.0f} s: {engine.url}/v1 (model `{engine.served_name}`; LoRA adapters by POST /v1/load_lora_adapter)")


def _down(args: argparse.Namespace) -> None:
    engine = LocalEngine.running(settings_of(args).engine_data_dir)
    print("stopped" if engine is not None and engine.down() else "not running")


def _status(args: argparse.Namespace) -> int:
    data_dir = settings_of(args).engine_data_dir
    engine = LocalEngine.running(data_dir)
    if engine is None:
        print(f"stopped; log {data_dir / 'engine.log'}")
        return 1
    ready = engine.is_ready()
    print(
        f"running (pid {engine.pid()}); {'ready' if ready else 'not ready'} on {engine.url}, serving {engine.model_dir} as "
        f"`{engine.served_name}`; log {engine.log_file}"
    )
    return 0 if ready else 1


def _deploy(args: argparse.Namespace) -> None:
    from registry.deployment import Deployer
    from registry.store import Deployment, ModelRegistry

    settings = settings_of(args)
    registry = ModelRegistry.of(settings)
    registry.manifest("policies", args.version)  # ModelLoadError naming the path when there is no such version
    if args.url:  # full weights on an engine of their own: recorded, nothing loaded
        deployment = Deployment(args.url.rstrip("/"), args.model or args.version, adapter=False)
        registry.record_deployment(args.policy, args.version, deployment)
    else:
        deployer = Deployer(registry, settings.gateway)
        try:
            deployment = deployer.deploy(args.policy, args.version)
        finally:
            deployer.close()
    print(f"{args.version}: served by {deployment.url} as `{deployment.model}`{' (LoRA adapter)' if deployment.adapter else ''}")


def _undeploy(args: argparse.Namespace) -> None:
    from registry.deployment import EngineAdmin
    from registry.store import ModelRegistry

    settings = settings_of(args)
    registry = ModelRegistry.of(settings)
    deployment = registry.deployments(args.policy).get(args.version)
    if deployment is None:
        print(f"{args.version}: not deployed; generated in process")
        return
    if deployment.adapter:
        gateway = settings.gateway.updated(engine_url=deployment.url)
        admin = EngineAdmin.of(gateway)
        try:
            admin.unload_adapter(args.version)
        finally:
            admin.close()
    registry.record_deployment(args.policy, args.version, None)
    print(f"{args.version}: no longer on {deployment.url}; the assistant generates it in process")


def register(sub: argparse._SubParsersAction) -> None:
    engine = group(
        sub, "engine", "Run vLLM's CPU build as a local inference engine (127.0.0.1, LoRA adapters loadable at run time)."
    )
    command(engine, "install", "Install vLLM in its own cached venv (the first time: minutes and about 6 GB).", _install)
    up = command(engine, "up", "Start the engine (installing vLLM on first use) and wait until it serves the model.", _up)
    up.add_argument("--model", metavar="NAME|DIR", help="Base model to serve (default: engine.model).")
    up.add_argument("--port", type=int, help="Port on 127.0.0.1 (default: engine.port).")
    command(engine, "down", "Stop the engine and its worker processes.", _down)
    command(engine, "status", "Say whether the engine is running and serving, where and what (exit 1 if not).", _status)
    deploy = command(
        engine,
        "deploy",
        "Serve a policy version from an engine: load its LoRA adapter into gateway.engine_url (its base model "
        "recorded there too), or with --url record an engine that serves the version's full weights. Assistants "
        "route to it within a second; again after an engine restart, which forgets adapters.",
        _deploy,
    )
    deploy.add_argument("version", help="Registry version of the policy.")
    deploy.add_argument("--policy", default=DEFAULT_POLICY, help=f"Policy the version belongs to (default: {DEFAULT_POLICY}).")
    deploy.add_argument("--url", help="Base URL of an OpenAI-compatible engine serving the version's full weights.")
    deploy.add_argument("--model", help="With --url: the model name that engine serves it under (default: the version).")
    undeploy = command(
        engine, "undeploy", "Take a version off its engine (unloading its adapter): assistants generate it in process.", _undeploy
    )
    undeploy.add_argument("version", help="Registry version of the policy.")
    undeploy.add_argument("--policy", default=DEFAULT_POLICY, help=f"Policy the version belongs to (default: {DEFAULT_POLICY}).")
