"""Base models by name, path, GGUF file or Hub id, resolved to a local directory the registry can
copy; every missing or unreadable model is one ModelLoadError naming it. No network, no real
download: the Hub is stood in for, and the GGUF reader is fed a damaged file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.errors import ModelLoadError
from trainers import base_models
from trainers.base_models import SMOLLM2, is_hub_id, materialise_gguf, resolve_base_model


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "rlhf-stream"


def test_a_model_directory_is_used_as_it_is(tmp_path: Path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve_base_model(str(tmp_path / "m")) == str(tmp_path / "m")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("{tmp}/nope", "{tmp}/nope: no base model here"),
        ("{tmp}/empty", "{tmp}/empty: not a model directory (no config.json)"),
        ("{tmp}/missing.gguf", "{tmp}/missing.gguf: no GGUF file here"),
        ("{tmp}/broken.gguf", "{tmp}/broken.gguf: cannot read GGUF model"),
        ("has spaces/and more", "has spaces/and more: no base model here"),
    ],
)
def test_missing_or_corrupt_models_name_the_path(tmp_path: Path, cache: Path, name: str, message: str):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match=re.escape(message.format(tmp=tmp_path))):
        resolve_base_model(name.format(tmp=tmp_path))
    assert not any(cache.glob("base-models/*"))  # a failed build leaves nothing behind


def test_a_hub_id_is_downloaded_once_into_a_local_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    calls = []

    def download(repo_id: str) -> Path:
        calls.append(repo_id)
        return tmp_path

    monkeypatch.setattr(base_models, "download_from_hub", download)
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct") == str(tmp_path) and calls == [
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    ]


def test_an_unreachable_hub_is_an_error_naming_the_id(monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import: the variable alone would come too late
    with pytest.raises(
        ModelLoadError, match="no-such-org/no-such-model: not a local directory or file, and the Hub could not provide it"
    ):
        base_models.download_from_hub("no-such-org/no-such-model")


def test_hub_ids_and_paths_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert is_hub_id("org/name") and is_hub_id("gpt2") and is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not any(is_hub_id(p) for p in ("/abs/dir", "./rel", "../up", "~/home", "runs/missing", "a/b/c", "bad name"))


def test_a_gguf_file_is_materialised_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache: Path):
    builds = []

    def fake_dequantise(gguf: Path, out: Path) -> None:  # the real one takes ~20 s on SmolLM2: tests/integration/trainers
        builds.append(gguf)
        (out / "config.json").write_text("{}")
        (out / base_models.MARKER).write_text("{}")

    monkeypatch.setattr(base_models, "_dequantise", fake_dequantise)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    first, second = resolve_base_model(str(gguf)), resolve_base_model(str(gguf))
    assert first == second and len(builds) == 1 and Path(first).parent == cache / "base-models"
    assert materialise_gguf(gguf, name="named") == cache / "base-models" / "named" and len(builds) == 2


def test_smollm2_without_its_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(base_models, "SMOLLM2_PACKAGE", "no-such-package-rlhf-test")
    with pytest.raises(
        ModelLoadError, match=f"{SMOLLM2}: the package no-such-package-rlhf-test is not installed; run `make setup`"
    ):
        resolve_base_model(SMOLLM2)
