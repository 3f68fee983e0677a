"""The hidden preferences simulated users may hold (`trainers.synthetic.quality` scores an answer by
one), by name: `rlhf demo --preference`, bench/_traffic.py. Apart from the synthetic world so the
CLI can list them without loading it (it loads the tokenizer library).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Length:
    """A taste for short answers: each word beyond `words` costs `per_word`, `most` at most."""

    words: int
    per_word: float
    most: float


@dataclass(frozen=True)
class Preference:
    """What users reward in an answer: the weight of each thing it gets right (naming the object, the
    app, the menu; giving a step), what echoing the question back costs, and a taste for short answers.
    Only the simulated users and the ground truth read it; the system learns it from their feedback."""

    obj: float = 0.3
    app: float = 0.2
    menu: float = 0.25
    step: float = 0.25
    echo: float = 0.5  # subtracted for an echo of the question, or a follow-up answered as the earlier question
    length: Length | None = None

    def describe(self) -> str:
        """One line for `--help`."""
        weights = f"object {self.obj}, app {self.app}, menu {self.menu}, step {self.step}, echo -{self.echo}"
        if self.length is None:
            return weights
        n = self.length
        return f"{weights}, -{n.per_word} a word beyond {n.words} words (at most -{n.most})"


DEFAULT_PREFERENCE = Preference()
PREFERENCES = {
    "default": DEFAULT_PREFERENCE,
    "steps-first": Preference(obj=0.15, app=0.1, menu=0.3, step=0.45),  # users who want the way there
    "concise": dataclasses.replace(DEFAULT_PREFERENCE, length=Length(words=12, per_word=0.05, most=0.4)),
}
