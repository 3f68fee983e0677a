"""Runs every benchmark and rewrites docs/benchmarks.md with their output (`make bench`).

    python -m bench [--only NAME ...] [--out docs/benchmarks.md] [--timeout 3600]

Each benchmark runs as a subprocess, the command a reader would type (`python -m bench.serve ...`,
with the options of `OPTIONS`); its output is echoed as it comes, each line prefixed with the
bench's name and elapsed time, and captured for the document. A bench that fails, or runs past
`--timeout` seconds (Ctrl-C, then SIGKILL), is recorded as failed with the last lines of its
stderr, and the others still run; the exit status is then 1. `--only` reruns the named benches and
keeps the other sections of the existing file.
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from bench._document import Result, about, document, header, machine, section, sections

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# Benches whose defaults take too long for one `make bench` on a 2-core machine: the options used
# instead, and why. Every other bench runs with its defaults.
OPTIONS: dict[str, tuple[list[str], str]] = {
    "rounds": (
        ["--rounds", "2", "--seeds", "0"],
        "the default (5 rounds x seeds 0 1 x 2 learners, about a minute a round) takes about 20 min here",
    ),
    "engine_gateway": (
        ["--skip-embedded", "--repeats", "1"],
        "SmolLM2 in process (the engine-vs-embedded figures) decodes at ~2 tokens/s here: the default run was stopped "
        "after 17 min, still in its first of 3 repeats",
    ),
    "robustness": (
        ["--populations", "hostile", "--preferences", "default", "--seeds", "0", "--rounds", "3", "--budget", "600"],
        "the default (3 populations x 3 preferences x 2 seeds x 2 learners, 5 rounds of 1,200 events each) takes hours",
    ),
}
# Benches `make bench` cannot run on a fresh clone, and why.
LEFT_OUT = {
    "replay_round": "it replays a finished `rlhf demo` run: `python -m bench.replay_round runs/demo-X --vary KEY V1 V2`",
}


def bench_names() -> list[str]:
    """Every benchmark module (bench/NAME.py, not a _helper), but those left out."""
    return sorted(p.stem for p in BENCH.glob("[a-z]*.py") if p.stem not in LEFT_OUT)


def command_of(name: str) -> list[str]:
    return [sys.executable, "-m", f"bench.{name}", *OPTIONS.get(name, ([], ""))[0]]


def shown(command: Sequence[str]) -> str:
    """The command as a reader types it in the repository, with the venv's python."""
    words = list(command)
    if words and words[0] == sys.executable:
        words[0] = "python"
    return shlex.join(words)


def _echo(stream: IO[str], label: str, started: float, keep: collections.deque[str] | list[str], out: IO[str]) -> None:
    for line in stream:
        keep.append(line)
        out.write(f"[{label} {time.monotonic() - started:6.0f}s] {line}")
        out.flush()


def stop(proc: subprocess.Popen[str], grace: float = 30.0) -> None:
    """Ctrl-C to the bench, so its `with` blocks stop what it started (a broker, an engine); after
    `grace` s, SIGKILL to its whole process group."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def run(name: str, command: Sequence[str], about_text: str, timeout: float, heartbeat: float = 60.0) -> Result:
    """Runs one bench to its end (or kills it after `timeout` s), echoing its output as it comes."""
    print(f"=== {name}: {shown(command)}", flush=True)
    started = time.monotonic()
    stdout: list[str] = []
    stderr: collections.deque[str] = collections.deque(maxlen=30)
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=_echo, args=(proc.stdout, name, started, stdout, sys.stdout), daemon=True),
        threading.Thread(target=_echo, args=(proc.stderr, name, started, stderr, sys.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    while proc.poll() is None:
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            stop(proc)
            stderr.append(f"stopped by the runner after {timeout:.0f} s (--timeout)\n")
            break
        try:
            proc.wait(min(heartbeat, timeout - elapsed + 1))
        except subprocess.TimeoutExpired:
            print(f"... {name} running for {time.monotonic() - started:.0f} s", flush=True)
    returncode = proc.wait()
    for reader in readers:
        reader.join(timeout=10)
    seconds = time.monotonic() - started
    print(f"=== {name}: {'failed, exit code ' + str(returncode) if returncode else 'done'} in {seconds:.0f} s", flush=True)
    return Result(name, shown(command), about_text, seconds, returncode, "".join(stdout), "".join(stderr), datetime.now(UTC))


def main(argv: Sequence[str] | None = None) -> int:
    names = bench_names()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"of: {' '.join(names)}")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one bench may run before it is killed")
    args = parser.parse_args(argv)
    when = datetime.now(UTC)
    where = machine(REPO)
    results = [run(name, command_of(name), about(BENCH / f"{name}.py"), args.timeout) for name in args.only or names]
    earlier = sections(args.out.read_text()) if args.only and args.out.exists() else {}
    head = header(
        when,
        where,
        results,
        [f"`{name}`: `{shlex.join(opts)}`; {why}" for name, (opts, why) in OPTIONS.items()],
        [f"`{name}`: {why}" for name, why in LEFT_OUT.items()],
    )
    fresh = {r.name: section(r, where) for r in results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(document(head, names, fresh, earlier))
    failed = [r.name for r in results if r.failed]
    print(f"wrote {args.out}" + (f"; failed: {' '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
