"""Publishing a bundle whole: built in a temporary folder beside its place, renamed in at the end
(store.provenance.atomic_dir), so a failed export or import leaves the old bundle loadable. An
existing bundle of another model is replaced only on purpose (`--force`); a folder that is not a
bundle is never replaced. An `s3://` destination is built locally and uploaded with model.json
last (store.remote_bundles), under the same rules.
"""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.predict.bundle import DETECTOR_DIR, FAN_FILE, HEAD_FILE, SPEC_FILE, BundleError
from store import location, remote_bundles
from store.provenance import atomic_dir, output_folder

BUNDLE_NAMES = {SPEC_FILE, HEAD_FILE, FAN_FILE, DETECTOR_DIR}


def _recorded(raw: dict, key: str):
    """A model-identity field of an existing model.json: from its provenance, else top level."""
    prov = raw.get("provenance") if isinstance(raw.get("provenance"), dict) else {}
    return prov.get(key, raw.get(key))


def check_replaceable(out: Path, model: dict, force: bool) -> None:
    """Refuse to replace `out` unless it is empty, a half-written bundle, a bundle of the same
    model (`model`'s fields equal its recorded ones), or `force` is given for another model's."""
    names = {p.name for p in out.iterdir()}
    try:
        raw = json.loads((out / SPEC_FILE).read_text()) if SPEC_FILE in names else None
    except (OSError, ValueError):
        raw = {}
    _check(str(out), names, raw, model, force)


def _check(out: str, names: set[str], raw, model: dict, force: bool) -> None:
    if not names or (SPEC_FILE not in names and names <= BUNDLE_NAMES):
        return  # empty, or what a killed old-style export left
    if SPEC_FILE not in names:
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise BundleError(f"--out {out} is a folder that is not a bundle (it holds {shown}); "
                          "give a new or empty folder for the bundle")
    if not isinstance(raw, dict):
        raw = {}
    if all(_recorded(raw, k) == v for k, v in model.items()) or force:
        return
    what = ", ".join(f"{k} {_recorded(raw, k)!r}" for k in model)
    raise BundleError(f"--out {out} holds the bundle of another model ({raw.get('name', '?')}: "
                      f"{what}); pass --force to replace it, or choose another --out")


@contextmanager
def publish(out: Path, model: dict, force: bool) -> Iterator[Path]:
    """Yield a temporary folder to build the bundle in; it replaces `out` when the block ends
    without an error (the old bundle stays as it was otherwise)."""
    if location.is_url(out):
        remote = location.as_path(out)
        names = {k[len(remote.path) + 1:].split("/")[0] for k in location.objects(remote.fs, remote.path)}
        _check(str(out), names, remote_bundles.read_spec(str(out)), model, force)
        with tempfile.TemporaryDirectory(prefix="aunet-bundle-") as tmp:
            yield Path(tmp) / "bundle"
            remote_bundles.upload(Path(tmp) / "bundle", str(out))
        return
    out = Path(out)
    output_folder(out.parent)
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} is a file, not a folder; give a folder for the bundle")
    if out.is_dir():
        check_replaceable(out, model, force)
    with atomic_dir(out) as tmp:
        yield tmp
