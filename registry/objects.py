"""Where the registry keeps its files: a local directory, or an object store at an fsspec URL.

The registry's consistency rests on two conditional writes, and nothing else:

    create(key, data)           writes only if `key` does not exist (one of two racing writers wins)
    replace(key, data, tag)     writes only if `key` still holds what was read under `tag`

On a local directory they are a hard link (atomic create) and a rename under a file lock (the lock
is host-local, which a local directory is too). On S3 they are PutObject with `If-None-Match: *`
and `If-Match: <etag>`, which S3 and compatible stores apply atomically on the server, so any
number of hosts can share one registry with no lock of their own (docs/decisions/0009).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.errors import RlhfError


class StorageError(RlhfError):
    """The registry's storage cannot be reached or cannot do what the registry needs."""


@dataclass(frozen=True)
class Stored:
    """An object's bytes and the tag `replace` takes to write over exactly this content."""

    data: bytes
    tag: str


class Objects(Protocol):
    url: str

    def read(self, key: str) -> Stored | None: ...
    def exists(self, key: str) -> bool: ...
    def children(self, prefix: str) -> list[str]: ...
    def create(self, key: str, data: bytes) -> bool: ...
    def replace(self, key: str, data: bytes, tag: str) -> bool: ...
    def upload(self, key: str, file: Path) -> None: ...
    def download(self, key: str, file: Path) -> None: ...


def open_objects(location: str | Path) -> Objects:
    """A local directory (a path or file:// URL) or an object store (s3://bucket/prefix)."""
    text = str(location)
    if "://" not in text or text.startswith("file://"):
        return LocalObjects(Path(text.removeprefix("file://")))
    if text.startswith(("s3://", "s3a://")):
        return S3Objects(text)
    raise StorageError(
        f"registry.url {text!r}: only local paths, file:// and s3:// URLs are supported; the registry needs "
        "conditional writes (create-if-absent, replace-if-unchanged), which this project implements for S3 only"
    )


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalObjects:
    """Keys are paths under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)

    def read(self, key: str) -> Stored | None:
        try:
            data = (self.root / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Stored(data, digest(data))

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def children(self, prefix: str) -> list[str]:
        directory = self.root / prefix
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []

    def create(self, key: str, data: bytes) -> bool:
        target = self.root / key
        tmp = self._written(target, data)
        try:
            os.link(tmp, target)  # fails if the target exists: of two creators, one wins
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def replace(self, key: str, data: bytes, tag: str) -> bool:
        target = self.root / key
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read(key)
            if current is None or current.tag != tag:
                return False
            os.replace(self._written(target, data), target)
            return True

    def upload(self, key: str, file: Path) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)

    def download(self, key: str, file: Path) -> None:
        shutil.copyfile(self.root / key, file)

    @staticmethod
    def _written(target: Path, data: bytes) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp


class S3Objects:
    """Keys are objects under `s3://bucket/prefix`, through s3fs. Credentials and the endpoint come
    from the usual AWS variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL_S3, ...)."""

    def __init__(self, url: str):
        try:
            import s3fs
        except ImportError as exc:  # pragma: no cover - s3fs is a dependency
            raise StorageError(f"registry.url {url!r} needs s3fs ({exc})") from None
        self.url = url.rstrip("/")
        self.fs = s3fs.S3FileSystem(skip_instance_cache=True)  # the endpoint and keys as the environment has them now
        self.bucket, _, prefix = self.url.split("://", 1)[1].partition("/")
        self.prefix = f"{prefix}/" if prefix else ""

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _path(self, key: str) -> str:
        return f"{self.bucket}/{self._key(key)}"

    def _call(self, method: str, **kwargs: Any) -> Any:
        from fsspec.asyn import sync

        async def call() -> Any:
            response = await self.fs._call_s3(method, Bucket=self.bucket, **kwargs)
            if "Body" in response:  # read it inside the loop that opened it
                response["Body"] = await response["Body"].read()
            return response

        return sync(self.fs.loop, call)

    def read(self, key: str) -> Stored | None:
        try:
            response = self._call("get_object", Key=self._key(key))
        except FileNotFoundError:
            return None
        return Stored(response["Body"], response["ETag"])  # bytes and tag from one response: no race

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def children(self, prefix: str) -> list[str]:
        try:
            listed = self.fs.ls(self._path(prefix.rstrip("/")), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in listed)

    def create(self, key: str, data: bytes) -> bool:
        return self._put(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, tag: str) -> bool:
        return self._put(key, data, IfMatch=tag)

    def upload(self, key: str, file: Path) -> None:
        self.fs.put_file(str(file), self._path(key))

    def download(self, key: str, file: Path) -> None:
        self.fs.get_file(self._path(key), str(file))

    def _put(self, key: str, data: bytes, **condition: str) -> bool:
        try:
            self._call("put_object", Key=self._key(key), Body=data, **condition)
        except Exception as exc:
            if _precondition_failed(exc):
                return False
            raise
        self.fs.invalidate_cache(self._path(key))
        return True


def _precondition_failed(exc: BaseException) -> bool:
    """S3 answers 412 when the condition does not hold, and 409 when a concurrent conditional write
    to the same key is in flight; for the registry both mean: someone else wrote first."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in {"PreconditionFailed", "ConditionalRequestConflict"} or status in {412, 409}:
                return True
        seen = seen.__cause__ or seen.__context__
    return False
