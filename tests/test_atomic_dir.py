"""atomic_dir replaces a folder kill-safely: a SIGKILL between its steps leaves the old folder or
the new one, whole, once the store's cleanup (or a reader's lock) has run."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from store.catalog import Catalog
from store.provenance import atomic_dir

ROOT = Path(__file__).resolve().parents[1]

# Run atomic_dir in a child process that SIGKILLs itself at one point of the replacement:
# "new_in": just before the new folder is renamed onto `final` (the old one has already left
# `final`: deleted by the old code, set aside by the new); "old_out": just before the folder set
# aside is deleted (the new one is in place).
CHILD = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    import store.provenance as pv

    final, point = Path(sys.argv[1]), sys.argv[2]
    kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
    real = {"replace": os.replace, "rename": os.rename, "rmtree": shutil.rmtree}

    def moving(name):
        def move(src, dst, *a, **k):
            if point == "new_in" and pv.BUILD_MARK in Path(src).name and Path(dst) == final:
                kill()
            return real[name](src, dst, *a, **k)
        return move

    def rmtree(path, *a, **k):
        if point == "old_out" and Path(path).name.startswith("." + final.name):
            kill()
        return real["rmtree"](path, *a, **k)

    os.replace, os.rename, shutil.rmtree = moving("replace"), moving("rename"), rmtree
    with pv.atomic_dir(final) as tmp:
        (tmp / "data").write_text("new")
""")


def _store(tmp_path: Path) -> tuple[Catalog, Path]:
    cat = Catalog(tmp_path / "store")
    final = cat.dataset_dir("ds") / "faces" / "blazeface-abc" / "crops.zarr"
    with atomic_dir(final) as tmp:
        (tmp / "data").write_text("old")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "chunk").write_text("old chunk")
    return cat, final


def _kill_at(final: Path, point: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(final), point], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # it was killed where asked, not finished


def test_kill_before_the_new_folder_is_in_keeps_the_old_one(tmp_path):
    cat, final = _store(tmp_path)
    _kill_at(final, "new_in")
    cat.clean("ds", "faces")  # what the next run of the stage does first
    assert (final / "data").read_text() == "old"
    assert (final / "sub" / "chunk").read_text() == "old chunk"  # whole, not half
    assert sorted(p.name for p in final.parent.iterdir()) == ["crops.zarr"]  # no debris left


def test_kill_before_the_old_folder_is_deleted_keeps_the_new_one(tmp_path):
    cat, final = _store(tmp_path)
    _kill_at(final, "old_out")
    assert (final / "data").read_text() == "new"
    cat.clean("ds", "faces")
    assert (final / "data").read_text() == "new" and not (final / "sub").exists()
    assert sorted(p.name for p in final.parent.iterdir()) == ["crops.zarr"]


def test_a_reader_taking_its_lock_restores_the_old_folder(tmp_path):
    cat, final = _store(tmp_path)
    _kill_at(final, "new_in")
    with cat.lock("ds", "features", reads=[("ds", "faces")]):  # e.g. the features stage
        assert (final / "data").read_text() == "old"


def test_replacement_succeeds_and_a_failed_build_keeps_the_old(tmp_path):
    cat, final = _store(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "data").write_text("half")
            raise RuntimeError("build failed")
    assert (final / "data").read_text() == "old"
    with atomic_dir(final) as tmp:
        (tmp / "data").write_text("new")
    assert (final / "data").read_text() == "new" and not (final / "sub").exists()
    assert sorted(p.name for p in final.parent.iterdir()) == ["crops.zarr"]
