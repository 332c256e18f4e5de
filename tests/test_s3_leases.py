"""Stage locks on an S3 store (store/leases.py) against a real S3 server: a second writer and a
reader of a stage being written are refused, a dead holder's lease runs out and is taken over
by exactly one run, and a lease is renewed while its holder lives."""
from __future__ import annotations

import json
import threading
import time

import pytest

from pipeline.errors import StoreLocked
from store import leases
from store.catalog import Catalog


@pytest.fixture()
def cat(s3_bucket) -> Catalog:
    return Catalog(f"s3://{s3_bucket}/store")


def _lease(cat: Catalog, stage: str = "features"):
    return cat.dataset_dir("demo") / ".locks" / f"{stage}.lease"


def test_second_writer_is_refused_then_admitted_after_release(cat):
    with cat.lock("demo", "features"):
        assert _lease(cat).exists()
        with pytest.raises(StoreLocked, match="another run is writing or reading stage 'features'"):
            with cat.lock("demo", "features"):
                pass
    assert not _lease(cat).exists()
    with cat.lock("demo", "features"):  # free again
        pass


def test_reader_and_writer_exclude_each_other(cat):
    with cat.lock("demo", "train", reads=[("demo", "features")]):  # reads features
        with pytest.raises(StoreLocked, match="stage 'features'"):
            with cat.lock("demo", "features"):
                pass
    with cat.lock("demo", "features"):
        with pytest.raises(StoreLocked, match="reads stage 'features'.*which another run is writing"):
            with cat.lock("demo", "train", reads=[("demo", "features")]):
                pass
    assert not list((cat.dataset_dir("demo") / ".locks" / "features.readers").glob("*"))


def _dead_holder(cat: Catalog, expires: float) -> None:
    """A lease left by a run that was killed (nobody renews it)."""
    body = {"holder": "aunet features pid 1 on gone", "token": "x", "expires": expires}
    _lease(cat).write_bytes(json.dumps(body).encode())


def test_a_dead_holders_lease_refuses_until_it_runs_out(cat):
    _dead_holder(cat, time.time() + 30)
    with pytest.raises(StoreLocked, match="pid 1 on gone, lease until"):
        with cat.lock("demo", "features"):
            pass
    _dead_holder(cat, time.time() - 1)  # ran out
    with cat.lock("demo", "features"):
        assert "on gone" not in _lease(cat).read_text()


def test_of_two_runs_taking_over_an_expired_lease_one_wins(cat):
    _dead_holder(cat, time.time() - 1)
    outcomes, start = [], threading.Barrier(2)

    def run():
        start.wait()
        try:
            with cat.lock("demo", "features"):
                outcomes.append("held")
                time.sleep(2)
        except StoreLocked:
            outcomes.append("refused")

    threads = [threading.Thread(target=run) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcomes) == ["held", "refused"]


def test_a_live_holder_renews_its_lease(cat, monkeypatch):
    monkeypatch.setattr(leases, "RENEW_S", 0.2)
    with cat.lock("demo", "features"):
        first = json.loads(_lease(cat).read_text())["expires"]
        time.sleep(1.0)
        assert json.loads(_lease(cat).read_text())["expires"] > first


def test_a_lease_of_a_dead_process_on_this_machine_is_dead_at_once(cat):
    """As a flock dies with its process: a kill -9 on this machine does not block the rerun for
    the lease's 60 s; a live process's lease here still refuses."""
    import socket
    import subprocess
    import sys

    from store.leases import _started

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        body = {"holder": f"aunet features pid {proc.pid} on here", "host": socket.gethostname(),
                "pid": proc.pid, "started": _started(proc.pid), "token": "x",
                "expires": time.time() + 30}
        _lease(cat).write_bytes(json.dumps(body).encode())
        with pytest.raises(StoreLocked, match=f"pid {proc.pid} on here"):
            with cat.lock("demo", "features"):
                pass
    finally:
        proc.kill()
        proc.wait()
    with cat.lock("demo", "features"):  # its process is gone: taken over at once
        assert f"pid {proc.pid}" not in _lease(cat).read_text()
