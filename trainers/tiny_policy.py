"""The tiny offline policy: a small Llama-style assistant built locally, because no causal LM of
useful size can be downloaded in an offline setup.

It trains a byte-level BPE tokenizer and a ~1M-parameter Llama on the generated support-question
world (`trainers.synthetic.warmup_corpus`), then warms it up with a short supervised pass so it
answers in assistant style. The corpus is deliberately ~30% helpful, so the starting policy
mixes helpful, dodging, echoing and wrong answers and RLHF has room to improve. It holds one-question
prompts and conversations of 2-3 questions in the plain multi-turn format (`trainers.chat_format`),
whose follow-ups ("And in Calendar?") are answered as poorly, often by answering the earlier
question again: the policy answers conversations in the right shape and starts poor on follow-ups.

    rlhf policy build-tiny --out /tmp/tiny          # or: ensure_tiny_policy() (cached, built once)

Everything round-trips through `save_pretrained` / `from_pretrained(path)`, so the rest of the
project treats it exactly like a Hub model; `policy.base_model: tiny` in the config selects it
(`trainers.base_models`).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from core.files import write_atomically
from core.settings import cache_home
from trainers.chat_format import plain_completion as format_completion
from trainers.chat_format import plain_prompt
from trainers.loading import quiet_transformers
from trainers.synthetic import warmup_corpus

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"

# Bump when the recipe below changes, so cached builds made by an older recipe are not reused.
RECIPE_VERSION = 2
DEFAULT_RECIPE = {
    "version": RECIPE_VERSION,
    "n_examples": 4000,  # one-question prompts
    "n_conversations": 1000,  # conversations of 2-3 questions, each of whose turns is an example
    "vocab_size": 1024,
    "hidden_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "warmup_steps": 900,
    "batch_size": 32,
    "learning_rate": 3e-3,
    "seed": 0,
}


def format_prompt(query: str) -> str:
    """The plain prompt of a one-question conversation (`trainers.chat_format`)."""
    return plain_prompt(query)


def _train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # its bar, written to stderr without a terminal, is blank lines
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # A pad token distinct from EOS keeps "the response ended" separable from "this is padding".
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, padding_side="left")


def _sft_batches(tokenizer: PreTrainedTokenizerFast, pairs: list[tuple[str, str]], batch_size: int, rng: random.Random):
    """Endless shuffled batches of (input_ids, attention_mask, labels) from (prompt text, response)
    with the loss on the response and EOS only: the model should learn to answer, not to write questions."""
    examples = []
    for prompt, response in pairs:
        # Prompt and response are tokenised separately, exactly as generation sees them.
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(format_completion(response), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        examples.append((p + r, [-100] * len(p) + r))
    while True:
        rng.shuffle(examples)
        for i in range(0, len(examples) - batch_size + 1, batch_size):
            chunk = examples[i : i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((batch_size, width), tokenizer.pad_token_id)
            labels = torch.full((batch_size, width), -100)
            mask = torch.zeros((batch_size, width), dtype=torch.long)
            for row, (x, y) in enumerate(chunk):  # right padding: positions stay 0..n for training
                ids[row, : len(x)] = torch.tensor(x)
                labels[row, : len(y)] = torch.tensor(y)
                mask[row, : len(x)] = 1
            yield ids, mask, labels


def build_tiny_policy(out_dir: str | Path, **recipe_overrides: int | float) -> Path:
    """Train the tokenizer and the warm-up model and save both to `out_dir` (replaced if present).
    Takes ~20-40 s on 2 CPU cores with the default recipe. Returns `out_dir`."""
    recipe = {**DEFAULT_RECIPE, **recipe_overrides}
    out_dir = Path(out_dir)
    started = time.monotonic()
    rng = random.Random(recipe["seed"])
    torch.manual_seed(recipe["seed"])

    corpus = warmup_corpus(int(recipe["n_examples"]), int(recipe["seed"]), conversations=int(recipe["n_conversations"]))
    pairs = [(plain_prompt(prompt), response) for prompt, response in corpus]
    tokenizer = _train_tokenizer([p + format_completion(r) for p, r in pairs], int(recipe["vocab_size"]))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=int(recipe["hidden_size"]),
        intermediate_size=4 * int(recipe["hidden_size"]),
        num_hidden_layers=int(recipe["num_layers"]),
        num_attention_heads=int(recipe["num_heads"]),
        num_key_value_heads=int(recipe["num_heads"]),
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(recipe["learning_rate"]), weight_decay=0.0)
    steps = int(recipe["warmup_steps"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=float(recipe["learning_rate"]), total_steps=steps, pct_start=0.1
    )
    batches = _sft_batches(tokenizer, pairs, int(recipe["batch_size"]), rng)
    model.train()
    for _ in range(steps):
        ids, mask, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out_dir.mkdir(parents=True, exist_ok=True)
    quiet_transformers()  # no "Writing model shards" bar
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meta = {"recipe": recipe, "final_loss": loss.item(), "build_seconds": round(time.monotonic() - started, 1)}
    (out_dir / "tiny_policy.json").write_text(json.dumps(meta, indent=2))
    return out_dir


def default_cache_dir() -> Path:
    return cache_home() / "tiny-policy"


def ensure_tiny_policy() -> Path:
    """The tiny policy's directory, building it on first use. The cache key is the recipe version,
    so concurrent callers and later runs reuse one build; a half-written build is never visible
    because it is written atomically."""
    target = default_cache_dir() / f"v{RECIPE_VERSION}"
    if (target / "tiny_policy.json").is_file():
        return target
    try:
        write_atomically(target, build_tiny_policy)
    except FileExistsError:
        if not (target / "tiny_policy.json").is_file():  # not a lost race with an identical build: a real failure
            raise
    return target
