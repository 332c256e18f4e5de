"""Where a store lives: the one filesystem seam between the catalog and local disk or object storage.

A store is a local folder (a `pathlib.Path`, as always) or an fsspec URL such as
`s3://bucket/prefix` (a `upath.UPath`, pathlib's interface over an fsspec filesystem: `/`,
`name`, `exists`, `glob`, `open` work alike). Credentials and endpoint are never part of the URL
or the config: the filesystem reads them from the standard variables (for S3: AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION), so no record, log line or key holds them.

What POSIX gave and an object store has not, done here:
- atomic publish: `upload_on_success` writes a local temporary file and uploads it in one PUT
  when the writer succeeds; an S3 object appears whole or not at all, so a reader sees the old
  artifact or the new one (never half), and a killed writer leaves nothing in the bucket.
- exclusive create: `create_exclusive` (a conditional PUT, If-None-Match: *), what the leases of
  `store.leases` are built on.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

LOCAL_PROTOCOLS = frozenset({"", "file", "local"})
HASH_BLOCK = 1 << 20
StorePath = Union[Path, "UPath"]  # noqa: F821 (upath is imported only for URL stores)


def is_url(store: str | os.PathLike) -> bool:
    """True for an fsspec URL of a non-local filesystem (`s3://...`, `gs://...`, `memory://`)."""
    text = str(store)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() not in LOCAL_PROTOCOLS and "/" not in scheme


def store_root(store: str | os.PathLike) -> StorePath:
    """A store's root: the resolved local folder, or the URL as a UPath (no trailing slash)."""
    if isinstance(store, Path) and not is_remote(store):
        return store.resolve()
    if not is_url(store):
        text = str(store)
        return Path(text[len("file://"):] if text.startswith("file://") else text).resolve()
    from upath import UPath

    return UPath(str(store).rstrip("/"))


def is_remote(path: object) -> bool:
    """Whether `path` is on a non-local fsspec filesystem (a UPath of a URL store)."""
    protocol = getattr(path, "protocol", None)
    return protocol is not None and protocol not in LOCAL_PROTOCOLS


def relative(path: StorePath, root: StorePath) -> str:
    """`path` relative to a URL store's `root` (as `store.identity.relative` is for folders)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def arrow(path: StorePath) -> tuple[str, object]:
    """(path, filesystem) for pyarrow: the local path and None, or the fsspec filesystem
    wrapped for pyarrow (pyarrow's own S3 client is never configured separately)."""
    if not is_remote(path):
        return str(path), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return path.path, PyFileSystem(FSSpecHandler(path.fs))


def sha256(path: StorePath) -> str:
    """The SHA-256 of an object's bytes, read in blocks (local files: pipeline.hashing)."""
    if not is_remote(path):
        from pipeline.hashing import file_sha256

        return file_sha256(path)
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_tree(path: StorePath) -> None:
    """Delete a folder (every object under a prefix); nothing when it is missing."""
    if not is_remote(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        path.fs.rm(path.path, recursive=True)
    except FileNotFoundError:
        pass


@contextmanager
def upload_on_success(final: StorePath, suffix: str = "") -> Iterator[Path]:
    """Yield a local temporary file; upload it to `final` in one PUT only when the block
    succeeds (the temporary file is removed either way)."""
    fd, tmp = tempfile.mkstemp(prefix="aunet-upload-", suffix=suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        final.fs.put_file(str(tmp_path), final.path)
        final.fs.invalidate_cache(final.parent.path)
    finally:
        tmp_path.unlink(missing_ok=True)


def create_exclusive(path: StorePath, data: bytes) -> bool:
    """Create the object `path` holding `data` unless it exists (If-None-Match: *): True when
    this call created it, False when it was already there. One round trip, atomic on the server."""
    try:
        path.fs.pipe_file(path.path, data, IfNoneMatch="*")
    except OSError as e:
        if _precondition_failed(e):
            return False
        raise
    finally:
        path.fs.invalidate_cache(path.parent.path)
    return True


def _precondition_failed(e: BaseException) -> bool:
    cause = e.__cause__ or e.__context__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause else None
    return code in ("PreconditionFailed", "412") or "pre-condition" in str(e).lower()
