"""Write the JSON Schema of every topic's value model (`rlhf schemas export DIR`).

A schema reads every version its topic accepts (`schema_version`'s enum, e.g. [1, 2] for feedback;
`TopicSpec.value_versions`); a field a later version added is optional, with the default an
older event is read with (docs/event-versions.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas.topics import TOPICS


def export_json_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in {t.value_schema.__name__: t for t in TOPICS.values()}.values():
        path = directory / f"{spec.value_schema.__name__}.schema.json"
        path.write_text(json.dumps(spec.value_schema.model_json_schema(), indent=2) + "\n")
        written.append(path)
    return written
