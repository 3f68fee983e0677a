"""The base of every settings section: frozen, strict about unknown keys, copied with validation."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def updated(self, **changes: Any) -> Self:
        """A copy with `changes`, validated as the YAML is (pydantic's `model_copy(update=...)` is not)."""
        return self.model_validate({**self.model_dump(), **changes})
