"""The real `rlhf streams worker`, SIGKILLed at a chosen point: the crash test's seam.

    python -m tests.integration.streams.crashing_worker N streams worker
    python -m tests.integration.streams.crashing_worker /path/to/file streams worker

Only this process is changed: `PolicyLedger.commit` is wrapped so that right after the batch that
accepts the N-th feedback event of this worker is written, the process SIGKILLs itself. The policy
agent has not acked that batch yet, so its internal-topic offsets cannot have been committed, and
its table writes may or may not have reached the changelogs: the window at-least-once recovery has
to handle. Given a path instead of N, it dies at its first batch with accepted events once that
file exists: a test picks the moment, whichever policies this worker was assigned.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from rlhf.cli import main
from streams.ledger import PolicyLedger, Staged


def die_after_accepting(n: int | None = None, when_file: Path | None = None) -> None:
    commit = PolicyLedger.commit
    accepted = 0

    def commit_then_maybe_die(self: PolicyLedger, staged: Staged) -> None:
        nonlocal accepted
        commit(self, staged)
        in_batch = sum(e.accepted for e in staged.effects)
        accepted += in_batch
        if (n is not None and accepted >= n) or (when_file is not None and in_batch and when_file.exists()):
            os.kill(os.getpid(), signal.SIGKILL)

    PolicyLedger.commit = commit_then_maybe_die  # type: ignore[method-assign]


if __name__ == "__main__":
    when = sys.argv[1]
    die_after_accepting(int(when)) if when.isdigit() else die_after_accepting(when_file=Path(when))
    sys.exit(main(sys.argv[2:]))
