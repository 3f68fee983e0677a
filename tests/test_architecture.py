"""The layout is kept by CI, not by memory: the import-linter contracts in pyproject.toml (layers
point one way, no cycles between a package's modules) hold, and no module grows past one screenful
of a few hundred lines."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 450


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and "0 broken" in done.stdout


def test_every_package_is_under_a_contract():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    roots = set(config["tool"]["importlinter"]["root_packages"])
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == roots


def test_no_module_is_too_long():
    roots = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]
    long = {
        str(f.relative_to(REPO)): n
        for root in roots
        for f in (REPO / root).rglob("*.py")
        if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"over {MAX_MODULE_LINES} lines: {long}"
