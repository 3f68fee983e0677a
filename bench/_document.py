"""docs/benchmarks.md, as `python -m bench` writes it: a header naming the date and the machine, then
one section per benchmark (what it measures, the command, its wall time, its output), each between
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, so one section can be regenerated and the others kept."""

from __future__ import annotations

import ast
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

SECTION = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /bench:(?P=name) -->\n", re.DOTALL)
TABLE_RULE = re.compile(r"^\|\s*:?-+")  # the |---|---| line that makes `|` lines a markdown table


@dataclass(frozen=True)
class Result:
    """One benchmark run: the command as a reader would type it, and what came of it."""

    name: str
    command: str
    about: str  # the first paragraph of the module's docstring
    seconds: float
    returncode: int  # negative: killed by that signal (the runner's timeout sends SIGKILL)
    stdout: str
    stderr_tail: str
    ended: datetime

    @property
    def failed(self) -> bool:
        return self.returncode != 0


def about(module: Path) -> str:
    """The first paragraph of a module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(module.read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split())


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


def _run(*command: str) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    try:
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    except (OSError, StopIteration, ValueError):
        return float("nan")
    return kib / 2**20


def version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(repo: Path) -> dict[str, str]:
    """What the figures depend on, one line each: CPU, cores, RAM, GPU, OS, Python, torch, commit."""
    gpus = _run("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader") if shutil.which("nvidia-smi") else ""
    commit = _run("git", "-C", str(repo), "rev-parse", "--short", "HEAD") or "unknown"
    if _run("git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return {
        "CPU": cpu_model(),
        "cores": str(os.cpu_count()),
        "RAM": f"{ram_gib():.1f} GiB",
        "GPU": "; ".join(gpus.splitlines()) or "none",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "torch": version_of("torch"),
        "commit": commit,
    }


def output_blocks(text: str) -> str:
    """Markdown for a bench's output: the markdown tables it prints as they are, every other run of
    lines in a fenced block."""
    lines = text.rstrip("\n").splitlines()
    blocks: list[tuple[bool, list[str]]] = []  # (is a table, its lines)
    for line in lines:
        table = line.startswith("|")
        if blocks and blocks[-1][0] == table:
            blocks[-1][1].append(line)
        else:
            blocks.append((table, [line]))
    out: list[str] = []
    for table, block in blocks:
        if table and any(TABLE_RULE.match(line) for line in block):
            out.append("\n".join(block))
        elif any(line.strip() for line in block):
            out.append("```text\n" + "\n".join(block).strip("\n") + "\n```")
    return "\n\n".join(out)


def section(result: Result, where: dict[str, str]) -> str:
    status = f"**failed** (exit code {result.returncode})" if result.failed else "completed"
    parts = [
        f"## {result.name}",
        result.about,
        f"    {result.command}",
        f"{status} in {minutes(result.seconds)}, {result.ended:%Y-%m-%d %H:%M} UTC, commit {where['commit']}, "
        f"{where['CPU']} ({where['cores']} cores, GPU: {where['GPU']}).",
    ]
    if result.stdout.strip():
        parts.append(output_blocks(result.stdout))
    if result.failed:
        parts.append("Last lines of its stderr:\n\n```text\n" + (result.stderr_tail.strip("\n") or "(empty)") + "\n```")
    body = "\n\n".join(parts) + "\n"
    return f"<!-- bench:{result.name} -->\n{body}<!-- /bench:{result.name} -->\n"


def sections(document: str) -> dict[str, str]:
    """The sections of an earlier document by bench name, each with its delimiters."""
    return {m["name"]: m.group(0) for m in SECTION.finditer(document)}


def header(when: datetime, where: dict[str, str], ran: list[Result], options: list[str], left_out: list[str]) -> str:
    total = sum(r.seconds for r in ran)
    failed = [r.name for r in ran if r.failed]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`, bench/__main__.py): do not edit by hand. Every figure below is "
        "the output of the command shown in its section, on the machine named here; the benchmarks measure this "
        "machine, so read ratios and medians, not absolute rates. `python -m bench --only NAME ...` reruns some "
        "sections and keeps the others.",
        "",
        f"Last run: {when:%Y-%m-%d %H:%M} UTC, {len(ran)} benchmark(s) in {minutes(total)}"
        + (f", failed: {', '.join(failed)}." if failed else ", none failed."),
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in where.items()),
        "",
    ]
    if options:
        lines += ["Options other than a benchmark's defaults, to keep `make bench` within about 45 minutes:", ""]
        lines += [f"- {line}" for line in options] + [""]
    if left_out:
        lines += ["Not run by `make bench`:", ""] + [f"- {line}" for line in left_out] + [""]
    return "\n".join(lines)


def document(head: str, names: list[str], fresh: dict[str, str], earlier: dict[str, str]) -> str:
    """The header, then each bench's fresh section, else its section from the earlier document, else
    a placeholder saying it has not been run."""
    body = []
    for name in names:
        body.append(
            fresh.get(name)
            or earlier.get(name)
            or f"<!-- bench:{name} -->\n## {name}\n\nNot run yet: `python -m bench --only {name}`.\n<!-- /bench:{name} -->\n"
        )
    return head + "\n" + "\n".join(body)
