"""Model bundles in a bucket: `aunet export --out s3://...` uploads one, `aunet predict --model
s3://...` runs one (store/location.py opens the URL; endpoint and keys from the AWS variables).

Upload: the bundle is built in a local folder as always (stages/bundle_publish.py checks and
builds it), then its files go up with `model.json` last (`location.publish_dir`), so a reader
that finds `model.json` finds every file it names; the old bundle's `model.json` goes first.

Fetch: `model.json` is read first; the bundle is copied once into
`{cache}/bundles/{sha256 of model.json}` (store.onnx_cache.cache_root) and reused while the
bucket's `model.json` is the same. The copy is made in a temporary folder and renamed in, and
the loader checks every file against the hashes `model.json` records, as for a local bundle.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.predict.bundle import SPEC_FILE, BundleError
from store import location
from store.onnx_cache import cache_root
from store.provenance import current_umask


def read_spec(url: str) -> dict | None:
    """The bucket bundle's model.json as a dict; None when there is none."""
    path = location.as_path(url) / SPEC_FILE
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return raw if isinstance(raw, dict) else {}


def upload(local: Path, url: str) -> str:
    """Publish the bundle folder `local` at `url`, model.json last; returns the URL."""
    location.publish_dir(Path(local), location.as_path(url), last=SPEC_FILE)
    return url


def fetch(url: str) -> Path:
    """A local copy of the bundle at `url` (made once per version of its model.json)."""
    remote = location.as_path(url)
    try:
        spec = (remote / SPEC_FILE).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"--model {url}: no bundle there (no {SPEC_FILE}); give the URL "
                          "`aunet export --out` wrote") from None
    folder = cache_root() / "bundles" / hashlib.sha256(spec).hexdigest()[:32]
    if (folder / SPEC_FILE).is_file() and (folder / SPEC_FILE).read_bytes() == spec:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for key in location.objects(remote.fs, remote.path):
            rel = key[len(remote.path) + 1:]
            if rel != SPEC_FILE:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                remote.fs.get_file(key, str(tmp / rel))
        (tmp / SPEC_FILE).write_bytes(spec)  # the version read first: files are checked against it
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp made it 0700
        try:
            os.rename(tmp, folder)
        except OSError:  # another process made it a moment ago
            if not (folder / SPEC_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
