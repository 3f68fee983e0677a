"""Every setting of `core.settings.Settings`, read off the models themselves: its dotted path, its
default and its description. `rlhf config show --describe` prints them beside the effective values;
docs/configuration.md is generated here, and a unit test checks it is current:

    python -m core.config_reference > docs/configuration.md      # the same as: rlhf config reference
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from core.settings import DEFAULT_CONFIG_FILE, Settings

REFERENCE_COMMAND = "python -m core.config_reference > docs/configuration.md"
COMPUTED = "computed when loaded (see the description)"


@dataclass(frozen=True)
class SettingDoc:
    path: str  # dotted, as in the YAML under `rlhf:`; `[]` marks the fields of a list's items
    default: str  # JSON, or a note where the default is computed or the field is required
    description: str
    section: str  # the top-level key it sits under


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model, is_list): the settings model a field holds, directly or as the items of a tuple or list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) in (tuple, list):
        items = [a for a in get_args(annotation) if a is not Ellipsis]
        if len(items) == 1 and isinstance(items[0], type) and issubclass(items[0], BaseModel):
            return items[0], True
    return None, False


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return COMPUTED
    if field.default is PydanticUndefined:
        return "required"
    return json.dumps(to_jsonable_python(field.default))


def setting_docs(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[SettingDoc]:
    """Every leaf setting of `model`, in declaration order; a section's fields under its dotted path."""
    for name, field in model.model_fields.items():
        path = prefix + name
        section = path.split(".", 1)[0].split("[", 1)[0]
        inner, is_list = _model_of(field.annotation)
        if inner is not None and not is_list:
            yield from setting_docs(inner, path + ".")
            continue
        yield SettingDoc(path, _default(field), field.description or "", section)
        if inner is not None:  # a list of models (ab_testing.variants): its items' fields
            yield from setting_docs(inner, path + "[].")


def _value_at(settings: Settings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def describe(settings: Settings) -> str:
    """`rlhf config show --describe`: each setting's effective value, its default when that differs,
    and what it does (secrets print as asterisks)."""
    lines = []
    for doc in setting_docs():
        if "[]" in doc.path:
            lines.append(f"{doc.path}\n    {doc.description}")
            continue
        value = json.dumps(to_jsonable_python(_value_at(settings, doc.path)))
        default = "" if value == doc.default or doc.default == COMPUTED else f"  (default {doc.default})"
        lines.append(f"{doc.path} = {value}{default}\n    {doc.description}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    """docs/configuration.md: one table per section of the settings."""
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated from the settings models by `{REFERENCE_COMMAND}`; do not edit by hand. -->",
        "",
        f"Every setting of `{DEFAULT_CONFIG_FILE}` (everything under an `rlhf:` key; `$RLHF_CONFIG` names another file),",
        "with its default. An environment variable overrides the file: `RLHF_` and the dotted path in capitals,",
        "`__` between levels (`policy.training.batch_size` is `RLHF_POLICY__TRAINING__BATCH_SIZE`).",
        "`rlhf config show --describe` prints the same list with the values in effect. The measurements behind",
        "several defaults are in [settings-history.md](settings-history.md).",
    ]
    section = None
    for doc in setting_docs():
        if doc.section != section:
            section = doc.section
            out += ["", f"## `{section}`", "", "| setting | default | description |", "|---|---|---|"]
        out.append(f"| `{doc.path}` | `{_cell(doc.default)}` | {_cell(doc.description)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
