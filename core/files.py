"""Directories that appear whole or not at all: models, registry versions, cached builds.

    write_atomically(version_dir, lambda tmp: model.save_pretrained(tmp))

The build writes into a fresh temporary directory next to the target (or in `scratch`, on the
same file system), everything in it is fsynced, and one rename puts it in place. A reader
therefore sees no directory or a complete one, and a build that fails or crashes leaves neither
the target nor the temporary directory behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def write_atomically(target: Path, build: Callable[[Path], T], *, replace: bool = False, scratch: Path | None = None) -> T:
    """Run `build(tmp)`, then rename `tmp` to `target`; returns what `build` returned.

    An existing `target` is swapped out when `replace`; otherwise FileExistsError (another writer
    got there first: callers decide whether that is an error or someone else's identical work).
    `scratch` holds the temporary directory when it must not sit beside `target`, e.g. where
    listing the target's parent would show it."""
    target = Path(target)
    where = Path(scratch) if scratch is not None else target.parent
    where.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdir rather than mkdtemp: the directory becomes the target, so it gets the usual permissions.
    tmp = where / f".{target.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        result = build(tmp)
        _fsync_tree(tmp)
        if replace and target.exists():
            _swap(tmp, target)
        else:
            try:
                os.rename(tmp, target)  # onto a non-empty directory this fails: never a merge of two writers
            except OSError as exc:
                if target.exists():
                    raise FileExistsError(f"{target}: already exists") from exc
                raise
        _fsync(target.parent)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap(tmp: Path, target: Path) -> None:
    old = tmp.with_name(f"{tmp.name}.old")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)  # the previous version stays rather than nothing
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        if path.is_file() or path.is_dir():
            _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
