"""A remote registry's files, stored by content: `blobs/<sha256>` in the object store, and the same
blobs in each host's cache, hard-linked into every version that has them (a tokenizer shared by ten
versions is fetched and stored once)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from core.errors import ModelLoadError
from core.files import write_atomically
from registry.objects import Objects

BLOBS = "blobs"


def upload_files(objects: Objects, directory: Path) -> dict[str, str]:
    """Put each file of `directory` at blobs/<sha256>, once; returns {relative path: sha256}."""
    files = {}
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        sha = file_digest(file)
        if not objects.exists(f"{BLOBS}/{sha}"):
            objects.upload(f"{BLOBS}/{sha}", file)
        files[file.relative_to(directory).as_posix()] = sha
    return files


def fetch_files(objects: Objects, files: dict[str, str], cache: Path, directory: Path, extra: dict[str, str]) -> None:
    """Materialise `files` as `directory` (whole or not at all), each blob fetched into `cache/blobs`
    once and checked against its name; `extra` files are written beside them."""
    blobs = cache / BLOBS
    blobs.mkdir(parents=True, exist_ok=True)
    for sha in set(files.values()):
        if not (blobs / sha).is_file():
            tmp = blobs / f".{sha}.{uuid.uuid4().hex[:8]}"
            objects.download(f"{BLOBS}/{sha}", tmp)
            if file_digest(tmp) != sha:
                tmp.unlink()
                raise ModelLoadError(f"{objects.url}/{BLOBS}/{sha}: content does not match its name")
            os.replace(tmp, blobs / sha)

    def link(tmp: Path) -> None:
        for name, sha in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            os.link(blobs / sha, tmp / name)
        for name, text in extra.items():
            (tmp / name).write_text(text)

    try:
        write_atomically(directory, link, scratch=cache / ".staging")
    except FileExistsError:
        pass  # another reader on this host materialised it first


def file_digest(file: Path) -> str:
    sha = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()
