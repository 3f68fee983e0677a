"""Services more than one folder of integration tests uses: vLLM's CPU build serving SmolLM2.

The engine is installed through the project's own installer (devtools/engine_install.py) when its
cached venv is absent, so a fresh machine needs nothing by hand: the first session pays the install
(minutes), later ones find it cached. An install or start that fails errors every test using the
fixture, with the reason and the log's path; nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.engine import LocalEngine
from devtools.kafka_local import free_port
from devtools.s3_local import LocalS3


def smollm2_engine(data_dir: Path, kv_cache_bytes: int = 256 << 20) -> LocalEngine:
    """vLLM serving SmolLM2-135M-Instruct as `smollm2` on a free loopback port (not started)."""
    from trainers.base_models import SMOLLM2, resolve_base_model

    model_dir = Path(resolve_base_model(SMOLLM2))
    return LocalEngine(model_dir, data_dir, SMOLLM2, port=free_port(), kv_cache_bytes=kv_cache_bytes)


@pytest.fixture(scope="session")
def vllm_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    """vLLM serving SmolLM2-135M-Instruct as `smollm2` on a free loopback port, LoRA adapters
    loadable at run time, started once per session and stopped (with its worker) at its end."""
    engine = smollm2_engine(tmp_path_factory.mktemp("engine"))
    try:
        engine.up(timeout=600)
        yield engine
    finally:
        engine.down()


@pytest.fixture(scope="session")
def local_s3() -> Iterator[LocalS3]:
    """moto's S3-compatible server on a loopback port, with a bucket `rlhf` (devtools/s3_local.py)."""
    with LocalS3() as s3:
        yield s3


@pytest.fixture
def s3_environ(local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch) -> LocalS3:
    """The AWS variables pointing s3fs at `local_s3`, for this test."""
    for name, value in local_s3.environ().items():
        monkeypatch.setenv(name, value)
    return local_s3
