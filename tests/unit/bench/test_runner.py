"""`python -m bench` (bench/__main__.py, bench/_document.py): each bench run as a subprocess, its
output captured, a failure recorded with its stderr while the others still run, and the document
assembled with the date and the machine; `--only` keeps the other sections."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import bench.__main__ as runner
from bench._document import document, header, machine, section, sections

TABLE = "print('speed, median of 3'); print('| variant | req/s |'); print('|---|---|'); print('| batched | 109.9 |')"
FAILS = "import sys; print('half a table'); print('Traceback: broker unreachable', file=sys.stderr); sys.exit(3)"
WHEN = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)


def run(name: str, code: str) -> runner.Result:
    return runner.run(name, [sys.executable, "-c", code], f"What {name} measures.", timeout=60)


def test_a_table_and_a_failure_both_get_their_section() -> None:
    ok, bad = run("fast", TABLE), run("broken", FAILS)
    where = machine(Path(runner.REPO))
    head = header(WHEN, where, [ok, bad], ["`fast`: `--repeats 1`; it is slow"], ["`replay`: needs a demo run"])
    text = document(head, ["broken", "fast", "never"], {r.name: section(r, where) for r in (ok, bad)}, {})

    assert not ok.failed and bad.returncode == 3
    assert "Last run: 2026-01-02 03:04 UTC, 2 benchmark(s)" in text and "failed: broken." in text
    for key in ("CPU", "cores", "RAM", "GPU", "Python", "torch", "commit"):
        assert f"| {key} | {where[key]} |" in text
    assert "`fast`: `--repeats 1`; it is slow" in text and "`replay`: needs a demo run" in text

    fast = sections(text)["fast"]
    assert "What fast measures." in fast and "completed in" in fast
    assert "    python -c " in fast  # the command, as a reader would type it
    assert "```text\nspeed, median of 3\n```" in fast  # plain lines fenced ...
    assert "\n| variant | req/s |\n|---|---|\n| batched | 109.9 |\n" in fast  # ... a markdown table as it is

    broken = sections(text)["broken"]
    assert "**failed** (exit code 3)" in broken and "half a table" in broken
    assert "Last lines of its stderr" in broken and "Traceback: broker unreachable" in broken
    assert "Not run yet: `python -m bench --only never`" in sections(text)["never"]


def test_a_bench_past_the_timeout_is_stopped_and_recorded_as_failed() -> None:
    result = runner.run("hangs", [sys.executable, "-c", "import time; time.sleep(60)"], "", timeout=0.5, heartbeat=0.2)
    assert result.failed and "stopped by the runner" in result.stderr_tail


def test_only_reruns_the_named_benches_and_keeps_the_others(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    names = runner.bench_names()
    old = {n: f"<!-- bench:{n} -->\n## {n}\n\nold figures of {n}\n<!-- /bench:{n} -->\n" for n in names}
    out.write_text(document("# Benchmarks\n", names, old, {}))
    codes = {"event_sizes": TABLE, "redaction": FAILS}
    monkeypatch.setattr(runner, "command_of", lambda name: [sys.executable, "-c", codes[name]])

    assert runner.main(["--only", "event_sizes", "redaction", "--out", str(out)]) == 1  # one failed

    kept = sections(out.read_text())
    assert list(kept) == names
    assert "| batched | 109.9 |" in kept["event_sizes"] and "Bytes on the wire" in kept["event_sizes"]
    assert "**failed** (exit code 3)" in kept["redaction"]
    assert all(kept[n] == old[n] for n in names if n not in codes)


def test_every_bench_module_is_run_but_the_one_that_needs_a_demo_run() -> None:
    names = runner.bench_names()
    assert "serve" in names and "rounds" in names and "replay_round" not in names
    assert not any(n.startswith("_") for n in names)
    assert set(runner.OPTIONS) <= set(names)
