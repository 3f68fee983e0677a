"""The real `rlhf decider run`, SIGKILLed at the worst moment: the decider test's seam.

    python -m tests.integration.consumers.dying_decider

Only this process is changed: `ModelRegistry.decide_experiment` is wrapped so that right after
this process has recorded a decision in the registry, and before it announces it on the topic,
it SIGKILLs itself. Finding a decision recorded by someone else does not kill it.
"""

from __future__ import annotations

import os
import signal
import sys

from registry.store import ModelRegistry
from rlhf.cli import main

_decide = ModelRegistry.decide_experiment


def _decide_then_die(self: ModelRegistry, *args, **kwargs):
    record = _decide(self, *args, **kwargs)
    if record.first:
        os.kill(os.getpid(), signal.SIGKILL)
    return record


if __name__ == "__main__":
    ModelRegistry.decide_experiment = _decide_then_die  # type: ignore[method-assign]
    sys.exit(main(["decider", "run"]))
