"""The real `rlhf streams worker`, SIGKILLed at a chosen point: the crash test's seam.

    python -m tests.integration.streams.crashing_worker N streams worker

Only this process is changed: `PolicyLedger.apply` is wrapped so that right after the N-th feedback
event is accepted the process SIGKILLs itself. The policy agent has not acked that record yet, so
its internal-topic offset cannot have been committed, and its table writes may or may not have
reached the changelogs: the window at-least-once recovery has to handle.
"""

from __future__ import annotations

import os
import signal
import sys

from rlhf.cli import main
from streams.ledger import PolicyLedger


def die_after_accepting(n: int) -> None:
    apply = PolicyLedger.apply
    accepted = 0

    def apply_then_maybe_die(self: PolicyLedger, *args, **kwargs):
        nonlocal accepted
        effects = apply(self, *args, **kwargs)
        if effects.outcome == "accepted":
            accepted += 1
            if accepted == n:
                os.kill(os.getpid(), signal.SIGKILL)
        return effects

    PolicyLedger.apply = apply_then_maybe_die  # type: ignore[method-assign]


if __name__ == "__main__":
    die_after_accepting(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
