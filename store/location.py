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
- a folder published whole: `publish_dir` uploads a folder built locally (a Zarr store's empty
  layout: metadata only) with its root `zarr.json` last, so a reader that opens the group sees
  all of it; a kill mid-upload leaves a prefix without a root `zarr.json`, which no reader opens
  and the stage's cleanup removes (`debris`).
- Zarr groups are opened through `open_group` (zarr 3's FsspecStore for a URL), with the listing
  cache off: the store's writers are other processes and machines, whose writes a cached listing
  would hide.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

LOCAL_PROTOCOLS = frozenset({"", "file", "local"})
ZARR_ROOT = "zarr.json"  # a Zarr v3 group's metadata: what makes a prefix a group
# fsspec's listing cache would hide other writers' objects; these filesystems take the option
NO_LISTING_CACHE = {"s3", "s3a", "gs", "gcs", "abfs", "az", "adl"}
HASH_BLOCK = 1 << 20
StorePath = Union[Path, "UPath"]  # noqa: F821 - upath is imported only for URL stores


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
    return as_path(str(store).rstrip("/"))


def options(url: str) -> dict:
    """The fsspec options every client of a URL store uses: the listing cache off, and for S3
    the endpoint of AWS_ENDPOINT_URL as it is now (fsspec keeps one client per set of options:
    without it, a client made for an earlier endpoint would be reused). Never recorded."""
    scheme = str(url).partition("://")[0].lower()
    out = {"use_listings_cache": False} if scheme in NO_LISTING_CACHE else {}
    if scheme in ("s3", "s3a") and os.environ.get("AWS_ENDPOINT_URL"):
        out["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    return out


def as_path(path: str | os.PathLike) -> StorePath:
    """A store path from what a plan or unit carries (often a str): a UPath for a URL (a worker
    on another machine gets the same object store), else a local Path."""
    if is_remote(path):
        return path
    if is_url(path):
        from upath import UPath

        return UPath(str(path), **options(str(path)))
    return Path(path)


def open_group(path: str | os.PathLike, mode: str = "r"):
    """A Zarr v3 group at a local folder or a URL (zarr's FsspecStore); mode as zarr's."""
    import zarr

    text = str(path)
    kw = {"zarr_format": 3} if mode == "w" else {}
    if is_url(text):
        kw["storage_options"] = options(text)
    return zarr.open_group(text, mode=mode, **kw)


def group_root(group) -> StorePath:
    """Where a group opened by `open_group` lives: its folder, or its prefix as a UPath."""
    store = group.store
    if hasattr(store, "root"):  # zarr's LocalStore
        return Path(store.root) / group.path
    protocol = store.fs.protocol
    protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
    base = as_path(f"{protocol}://{store.path}")
    return base / group.path if group.path else base


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


def readable(path: StorePath):
    """What torch.load reads: the local path, or an object's bytes in memory (seekable)."""
    if not is_remote(path):
        return path
    import io

    with path.open("rb") as fh:
        return io.BytesIO(fh.read())


def version(path: StorePath) -> str:
    """What changes whenever a file (object) is replaced: its mtime and size, or its ETag."""
    if not is_remote(path):
        st = Path(path).stat()
        return f"{st.st_mtime_ns}-{st.st_size}"
    info = path.fs.info(path.path)
    return str(info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("size"))


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None):
    """A Parquet file (a pyarrow Table) at a local path or a URL, read through the store's filesystem."""
    import pyarrow.parquet as pq

    where, fs = arrow(as_path(path))
    return pq.read_table(where, columns=columns, filesystem=fs)


def parquet_schema(path: str | os.PathLike):
    """A Parquet file's schema alone (no rows read)."""
    import pyarrow.parquet as pq

    where, fs = arrow(as_path(path))
    return pq.read_schema(where, filesystem=fs)


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


def tree_bytes(path: StorePath) -> int:
    """The bytes of every file (object) under a folder (prefix)."""
    if not is_remote(path):
        return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    return int(path.fs.du(path.path, total=True)) if path.exists() else 0


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


def publish_dir(local: Path, final: StorePath, last: str = ZARR_ROOT) -> None:
    """Upload the folder `local` to the prefix `final`, replacing what is there: the old root
    file `last` (a Zarr group's `zarr.json`, a bundle's `model.json`) goes first (readers stop
    seeing the old one), then the rest of the old prefix, then every new object, the new `last`
    at the end (readers see the new one whole). A reader sees the old, none, or the new; never
    a mix."""
    fs, prefix = final.fs, final.path
    if fs.exists(f"{prefix}/{last}"):
        fs.rm_file(f"{prefix}/{last}")
    remove_tree(final)
    root = Path(local) / last
    # sorted by name, the root file after everything else (False sorts before True)
    files = sorted((p for p in Path(local).rglob("*") if p.is_file()), key=lambda p: (p == root, p))
    for p in files:
        fs.put_file(str(p), f"{prefix}/{p.relative_to(local).as_posix()}")
    fs.invalidate_cache(prefix)


def objects(fs, prefix: str) -> list[str]:
    """The objects under a prefix (not the folder entries some servers list for prefixes)."""
    return [k for k, v in fs.find(prefix, detail=True).items() if v.get("type") != "directory"]


def debris(base: StorePath, depth: int = 2) -> list[StorePath]:
    """What a killed `publish_dir` left under `base`: `*.zarr` prefixes (at most `depth` levels
    down, where the catalog puts its Zarr stores) that hold objects but no root `zarr.json`."""
    fs = base.fs
    out = []
    for level in range(1, depth + 1):
        pattern = f"{base.path}/{'/'.join(['*'] * level)}.zarr"
        for found in fs.glob(pattern):
            # (a server may keep an emptied prefix as a folder: only one holding objects counts)
            if not fs.exists(f"{found}/{ZARR_ROOT}") and objects(fs, found):
                out.append(as_path(f"{base.protocol}://{found}"))
    return out


def remove_debris(base: StorePath) -> list[StorePath]:
    """Remove what killed writers left under `base` on an object store: Zarr prefixes without
    their root `zarr.json` (`debris`) and unfinished multipart uploads of objects under `base`
    (invisible, but stored and billed until aborted). Call only under the exclusive lock of
    `base`'s stage: any upload in progress there is a dead writer's. Returns what was removed."""
    removed = debris(base)
    for p in removed:
        remove_tree(p)
    bucket, _, prefix = base.path.partition("/")
    if hasattr(base.fs, "list_multipart_uploads"):  # S3 (s3fs); other stores have no such parts
        try:
            uploads = base.fs.list_multipart_uploads(bucket)
        except OSError:  # a server without the call: nothing it could have kept
            uploads = []
        for up in uploads:
            if up.get("Key", "").startswith(prefix + "/"):
                base.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"],
                                UploadId=up["UploadId"])
                removed.append(as_path(f"{base.protocol}://{bucket}/{up['Key']}"))
    return removed


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
