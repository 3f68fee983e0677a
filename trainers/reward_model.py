"""The reward model: a backbone with a scalar head per ensemble member (and the gate's), scoring a
(prompt, response), the prompt a question in its conversation (`trainers.chat_format.Prompt`: a
`Conversation`, or a bare question); how it is created, saved as a version directory, loaded back
and used to predict.

    rm = RewardModel.create(RewardConfig.from_settings(settings))   # the base model with a fresh head
    RewardModel.load(version_dir).predict(prompts, responses)       # -> list[float], logits
    RewardModel.load(version_dir).reward(prompts, responses)        # -> their sigmoid, in (0, 1)

The backbone is `reward_model.base_model`: the MiniLM encoder (`minilm`, the default), SmolLM2 with
a score head (`smollm2`) or any model `trainers.base_models` resolves. Its input is the
conversation in the backbone's chat format (`trainers.chat_format`; `Query: ...\nResponse: ...`
without a template). Truncation to `max_length` (`truncation: keep_response`) keeps the response
and cuts the conversation from the left: the system prompt and the oldest turns go first, the
newest turn and the question stay; `bench/reward_real.py` measures it on real human preferences.

A version directory is written atomically (`core.files.write_atomically`), so a crash never leaves
a half-written version that loads. `trainers.reward` trains the model, `trainers.reward_eval`
measures it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from pydantic_core import to_jsonable_python
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core.errors import ConfigError, ModelLoadError, RlhfError
from core.files import write_atomically
from trainers.base_models import resolve_base_model
from trainers.batching import pad_batch
from trainers.chat_format import Prompt, reward_parts, reward_text
from trainers.device import pick_device, use_bf16
from trainers.loading import load_model
from trainers.reward_config import RewardConfig

CONFIG_FILE, METRICS_FILE, LINEAGE_FILE = "reward_config.json", "metrics.json", "lineage.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
UNKNOWN_LIMIT = 1_000_000_000  # tokenizers that do not know their model's limit report ~1e30


class VersionExistsError(RlhfError, FileExistsError):
    """A reward model version directory is already there; versions are never overwritten."""


def format_input(query: str, response: str) -> str:
    """The input of a backbone without a chat template (MiniLM): `Query: ...\nResponse: ...`."""
    return reward_text(None, query, response)


def keep_response(prompt: list[int], response: list[int], budget: int) -> list[int]:
    """`prompt + response` in at most `budget` tokens: the response whole when it leaves the prompt
    a quarter of the budget, else cut from the right; the prompt takes the rest, cut from the left
    (its end stays: the question and the newest turns; the oldest turns go first)."""
    if len(prompt) + len(response) <= budget:
        return prompt + response
    response = response[: budget - min(len(prompt), budget // 4)]
    kept = budget - len(response)
    return (prompt[len(prompt) - kept :] if kept else []) + response


def backbone_limit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens the backbone can read: its position embeddings, or the tokenizer's limit if smaller."""
    limits = (getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length)
    return min((int(n) for n in limits if n and n < UNKNOWN_LIMIT), default=UNKNOWN_LIMIT)


class RewardModel:
    """A sequence classifier with one output (the reward), its tokenizer and how it was made."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: RewardConfig,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.metrics = metrics or {}
        self.lineage = lineage or {}
        self.device = next(model.parameters()).device
        self.warm = False  # continued from an earlier version's weights (train_reward_model's warm_start)

    @classmethod
    def create(cls, config: RewardConfig) -> RewardModel:
        """The base model with a freshly initialised scalar head, on the configured device;
        ModelLoadError naming the base model when it is missing or cannot be loaded, ConfigError
        when `max_length` is past what the backbone can read."""
        source = resolve_base_model(config.base_model)
        torch.manual_seed(config.seed)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = load_model(AutoModelForSequenceClassification, source, num_labels=config.heads)
        except Exception as exc:  # a corrupt directory or an unknown Hub id: name it, keep the cause
            raise ModelLoadError(f"{source}: cannot load base model: {type(exc).__name__}: {exc}") from exc
        if config.training.disable_dropout:
            without_dropout(model)
        if tokenizer.pad_token is None:  # decoder-only bases (GPT-2 style) ship without one
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id  # the head finds the last real token with it
        limit = backbone_limit(model, tokenizer)
        if config.training.max_length > limit:
            raise ConfigError(
                f"reward model max_length {config.training.max_length} is past {config.base_model}'s limit of {limit} tokens"
            )
        return cls(model.to(pick_device(config.device)), tokenizer, config)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> RewardModel:
        """A saved version; ModelLoadError naming `path` when it is missing, incomplete or corrupt."""
        root = Path(path)
        if not root.is_dir():
            raise ModelLoadError(f"{root}: no reward model here (directory not found)")
        missing = [name for name in ("config.json", CONFIG_FILE, METRICS_FILE, LINEAGE_FILE) if not (root / name).is_file()]
        if not any((root / name).is_file() for name in WEIGHT_FILES):
            missing.append("model.safetensors")
        if missing:
            raise ModelLoadError(f"{root}: not a complete reward model directory, missing {', '.join(missing)}")
        try:
            config = RewardConfig.from_saved(json.loads((root / CONFIG_FILE).read_text()))
            metrics = json.loads((root / METRICS_FILE).read_text())
            lineage = json.loads((root / LINEAGE_FILE).read_text())
            tokenizer = AutoTokenizer.from_pretrained(root)
            model = load_model(AutoModelForSequenceClassification, str(root))
        except Exception as exc:  # whatever a damaged file raises, the caller needs the path and the cause
            raise ModelLoadError(f"{root}: corrupt reward model: {type(exc).__name__}: {exc}") from exc
        if model.config.num_labels != config.heads:
            raise ModelLoadError(
                f"{root}: not a reward model (head has {model.config.num_labels} outputs, its config says {config.heads})"
            )
        model.eval()
        return cls(model.to(pick_device(device or config.device)), tokenizer, config, metrics, lineage)

    def encode(self, queries: Sequence[Prompt], responses: Sequence[str]) -> list[list[int]]:
        """Token ids, truncated (`config.training.truncation`) but not padded: each batch pads to its own longest later."""
        parts = [reward_parts(self.tokenizer, q, r) for q, r in zip(queries, responses, strict=True)]
        if not parts:
            return []
        max_length = self.config.training.max_length
        if self.config.training.truncation == "right":
            return self.tokenizer(["".join(p) for p in parts], truncation=True, max_length=max_length)["input_ids"]
        heads = self.tokenizer([h for h, _ in parts], add_special_tokens=False)["input_ids"]
        tails = self.tokenizer([t for _, t in parts], add_special_tokens=False)["input_ids"]
        before, after = self._special_tokens()
        budget = max_length - len(before) - len(after)
        return [before + keep_response(h, t, budget) + after for h, t in zip(heads, tails, strict=True)]

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text (MiniLM: [CLS] and [SEP]), found by
        tokenising one word with and without them."""
        if not hasattr(self, "_specials"):
            bare = self.tokenizer("x", add_special_tokens=False)["input_ids"]
            full = self.tokenizer("x")["input_ids"]
            at = next((i for i in range(len(full)) if full[i : i + len(bare)] == bare), 0)
            self._specials = (full[:at], full[at + len(bare) :])
        return self._specials

    def scores(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Every head's score of a batch of token id lists, (B, heads), in one forward pass
        (bf16 autocast on a GPU)."""
        input_ids, attention_mask = pad_batch(ids, self.tokenizer.pad_token_id, self.device)
        with self._autocast():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits.float()

    def predict(
        self, queries: Sequence[Prompt], responses: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> list[float]:
        """The reward of each (prompt, response), the ensemble members' mean score; `progress(done,
        total)` after each batch if given."""
        return self.head_scores(queries, responses, progress)[:, : self.config.training.ensemble_members].mean(dim=1).tolist()

    def head_scores(
        self, queries: Sequence[Prompt], responses: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """Every head's score, (N, heads): the ensemble members, then the gate head if any."""
        return self.predict_ids(self.encode(queries, responses), progress)

    def gate_reward(self, queries: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """The candidate gate's reward: the sigmoid of the gate head, which no policy was optimised
        against (the members' mean when the model has no gate head)."""
        scores = self.head_scores(queries, responses)
        gate = scores[:, -1] if self.config.training.gate_head else scores.mean(dim=1)
        return torch.sigmoid(gate.double()).tolist()

    def predict_reward(self, query: Prompt, response: str) -> float:
        return self.predict([query], [response])[0]

    def reward(self, queries: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """The reward a policy is trained and judged on: the sigmoid of each score. A Bradley-Terry
        score is a logit (sigmoid: P(the user liked it)), so this lies in (0, 1) and relative
        gains ("+15% mean reward") are well defined."""
        return torch.sigmoid(torch.tensor(self.predict(queries, responses), dtype=torch.float64)).tolist()

    def predict_ids(self, ids: Sequence[Sequence[int]], progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Every head's score of each token id list, (N, heads), on the CPU."""
        out = torch.zeros(len(ids), self.config.heads)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), self.config.training.eval_batch_size):
                chunk = order[start : start + self.config.training.eval_batch_size]
                out[chunk] = self.scores([ids[i] for i in chunk]).cpu()
                if progress is not None:
                    progress(start + len(chunk), len(order))
        self.model.train(was_training)
        return out

    def save(self, version_dir: str | Path) -> Path:
        """Write the version atomically; an existing version is never overwritten (VersionExistsError)."""
        final = Path(version_dir)
        if final.exists():
            raise VersionExistsError(f"{final}: reward model version already exists")
        try:
            write_atomically(final, self._write)
        except FileExistsError:  # another writer got there first
            raise VersionExistsError(f"{final}: reward model version already exists") from None
        return final

    def _write(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2))
        (directory / METRICS_FILE).write_text(json.dumps(self.metrics, indent=2, default=to_jsonable_python))
        (directory / LINEAGE_FILE).write_text(json.dumps(self.lineage, indent=2, default=to_jsonable_python))

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16(self.device) else nullcontext()


def without_dropout(model: PreTrainedModel) -> None:
    """Set every dropout rate to 0 (`disable_dropout`, as TRL's RewardTrainer trains)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
