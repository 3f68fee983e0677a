"""The adapters a policy trains under `policy.training.lora_*`.

Policy training takes `core.learning_settings.PolicyTrainingSettings` itself (the `policy.training` block of
`rlhf.yaml`, or one built in code): there is no second, trainer-side copy of its fields. What a run
adds beside it (the seed, `feedback.min_rating` for KTO / DPO) are arguments of the trainers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.learning_settings import PolicyTrainingSettings

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedModel


def lora_config(config: PolicyTrainingSettings) -> LoraConfig | None:
    """The adapters PPO and the TRL algorithms train (one definition, so both read the same YAML
    the same way); None for a full fine-tune."""
    if not config.lora_r:
        return None
    from peft import LoraConfig  # imported on use: a full fine-tune never needs peft

    modules = config.lora_target_modules
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha or 2 * config.lora_r,  # type: ignore[arg-type]  # peft types an int, scales by any number
        lora_dropout=config.lora_dropout,
        target_modules=modules if isinstance(modules, str) else list(modules),
        task_type="CAUSAL_LM",
    )


def with_adapters(lm: PreTrainedModel, config: PolicyTrainingSettings) -> PreTrainedModel:
    """`lm` wrapped in fresh LoRA adapters when `lora_r` is set (only they train), else `lm` itself."""
    adapters = lora_config(config)
    if adapters is None:
        return lm
    from peft import get_peft_model

    wrapped: PreTrainedModel = get_peft_model(lm, adapters)  # type: ignore[assignment]  # forwards a model's API
    return wrapped
