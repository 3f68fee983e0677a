"""Reading a settings file (`rlhf.yaml`): its shape, and the reader of the project's first
configuration form (removed in 0.3.0)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings block of a YAML file (under `rlhf:`, or bare), as plain values."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    # The block is nested under `rlhf:`; accept the bare form too.
    body = raw.get("rlhf", raw)
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: key 'rlhf' must be a mapping, got {type(body).__name__}")
    return _accept_first_config_form(body, path)


def _accept_first_config_form(body: dict[str, Any], path: Path) -> dict[str, Any]:
    """Read the project's first configuration block as written: `ppo:` is the old name of
    `policy:`; `enabled: true`, `continuous_learning.enabled: true` and `feedback.storage` said
    what is always so here (the loop runs while its services run; the feedback topic is the
    store) and are dropped. `enabled: false` cannot be honoured by a config file: refuse it.

    A compatibility reader: removed in 0.3.0, after which those keys are unknown keys."""
    body = dict(body)
    if "ppo" in body:
        if "policy" in body:
            raise ConfigError(f"{path}: 'ppo' and 'policy' both given; 'ppo' is the old name of 'policy', keep one")
        body["policy"] = body.pop("ppo")
    for section, key in ((None, "enabled"), ("continuous_learning", "enabled"), ("feedback", "storage")):
        holder = body if section is None else body.get(section)
        if not isinstance(holder, dict) or key not in holder:
            continue
        name = key if section is None else f"{section}.{key}"
        if key == "enabled" and holder[key] is not True:
            raise ConfigError(
                f"{path}: {name}: only `true` is supported (got {holder[key]!r}); stop the services to stop the loop"
            )
        if key == "storage":
            print(
                f"rlhf: {path}: feedback.storage ({holder[key]!r}) ignored: the feedback topic is the store (read until 0.3.0)",
                file=sys.stderr,
            )
        if section is not None:
            body[section] = holder = dict(holder)
        del holder[key]
    return body
