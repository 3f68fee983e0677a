"""`write_atomically`: the target appears whole or not at all, and no temporary directory stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.files import write_atomically


def _write(text: str):
    def build(directory: Path) -> str:
        (directory / "sub").mkdir()
        (directory / "sub" / "weights.bin").write_text(text)
        return text

    return build


def test_the_build_lands_at_the_target_and_its_result_is_returned(tmp_path: Path):
    target = tmp_path / "deep" / "v1"
    assert write_atomically(target, _write("one")) == "one"
    assert (target / "sub" / "weights.bin").read_text() == "one"
    assert [p.name for p in target.parent.iterdir()] == ["v1"]


def test_a_failing_build_leaves_no_target_and_no_temporary_directory(tmp_path: Path):
    def crash(directory: Path) -> None:
        (directory / "half.bin").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(tmp_path / "v1", crash)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_target_is_kept_unless_replaced(tmp_path: Path):
    target = tmp_path / "v1"
    write_atomically(target, _write("one"))
    with pytest.raises(FileExistsError, match="v1"):
        write_atomically(target, _write("two"))
    assert (target / "sub" / "weights.bin").read_text() == "one"
    write_atomically(target, _write("two"), replace=True)
    assert (target / "sub" / "weights.bin").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_scratch_holds_the_temporary_directory(tmp_path: Path):
    seen = []
    write_atomically(tmp_path / "versions" / "v1", lambda d: seen.append(d.parent), scratch=tmp_path / ".staging")
    assert seen == [tmp_path / ".staging"] and not any((tmp_path / ".staging").iterdir())
    assert (tmp_path / "versions" / "v1").is_dir()
