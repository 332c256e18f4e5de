"""Stage locks on an object store: leases made of conditional writes (S3 has no flock).

A writer's lease is one object, `{dataset}/.locks/{stage}.lease`, created only if absent
(If-None-Match: *); a reader's is a uniquely named object under `{stage}.readers/`. Each holds
who holds it and until when (`expires`, LEASE_S ahead); a thread of the holder renews it every
RENEW_S, and the holder deletes it on release. Both sides create first and look second: a
writer that finds a live reader lease, or a reader that finds a live writer lease, withdraws its
own and is refused (StoreLocked), so a writer and a reader never both go ahead.

A holder that dies (kill -9, a lost machine) stops renewing: its lease expires LEASE_S later
and is then taken over by the next run, by a conditional overwrite (If-Match: the dead lease's
ETag), so of two runs that find it expired exactly one wins. Until then a new run is refused
with the holder's name and the time it expires, unless the holder ran on this very machine and
its process is gone (host name, pid and the process's start time all recorded): then its lease
is dead at once, as a flock is when its process dies, and a rerun after a kill -9 goes ahead.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from pipeline.errors import StoreLocked
from store import location

LEASE_S = 60.0  # a dead holder's lease blocks the stage this long at most
RENEW_S = LEASE_S / 4


class _Lease:
    """One lease object this process holds and renews until `release`."""

    def __init__(self, path, etag: str, body: dict):
        self.path, self.etag, self.body = path, etag, body
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True,
                                        name=f"lease-{path.name}")
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            body = dict(self.body, expires=time.time() + LEASE_S)
            try:
                self.etag = _put(self.path, body, IfMatch=self.etag)
            except OSError:  # taken over (we were thought dead) or the store is unreachable
                continue

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.path.fs.call_s3("delete_object", **_where(self.path), IfMatch=self.etag)
        except (OSError, FileNotFoundError):
            pass  # someone took it over after it expired: theirs now
        self.path.fs.invalidate_cache(self.path.parent.path)


def _where(path) -> dict:
    bucket, _, key = path.path.partition("/")
    return {"Bucket": bucket, "Key": key}


def _body(what: str) -> dict:
    pid, host = os.getpid(), socket.gethostname()
    return {"holder": f"{what} pid {pid} on {host}", "host": host, "pid": pid,
            "started": _started(pid), "token": secrets.token_hex(8),
            "expires": time.time() + LEASE_S}


def _started(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux /proc; None elsewhere): with the
    pid, it names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _put(path, body: dict, **condition) -> str:
    """Write a lease object (with an S3 condition); its new ETag."""
    resp = path.fs.call_s3("put_object", **_where(path), Body=json.dumps(body).encode(),
                           **condition)
    path.fs.invalidate_cache(path.parent.path)
    return resp["ETag"]


def _read(path) -> tuple[dict, str] | None:
    """(body, ETag) of a lease object, None when there is none."""
    try:
        resp = path.fs.call_s3("get_object", **_where(path))
    except FileNotFoundError:
        return None
    data = _sync_read(path, resp["Body"])
    try:
        return json.loads(data), resp["ETag"]
    except ValueError:  # a torn or foreign object: treat it as expired
        return {"holder": "unknown", "expires": 0}, resp["ETag"]


def _sync_read(path, body) -> bytes:
    from fsspec.asyn import sync

    async def read():
        async with body as stream:
            return await stream.read()

    return sync(path.fs.loop, read)


def _refusal(refused: str, body: dict) -> StoreLocked:
    return StoreLocked(f"{refused} ({body.get('holder')}, lease until {_until(body)}); wait for "
                       "it to finish (a dead run's lease runs out by then), or point this run "
                       "at another store")


def _live(body: dict) -> bool:
    if float(body.get("expires", 0)) <= time.time():
        return False
    return not _gone_here(body)


def _gone_here(body: dict) -> bool:
    """Whether the holder ran on this machine and its process no longer runs."""
    if body.get("host") != socket.gethostname() or not isinstance(body.get("pid"), int):
        return False
    try:
        os.kill(body["pid"], 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists (another user's)
        pass
    now, then = _started(body["pid"]), body.get("started")
    return now is not None and then is not None and now != then  # the pid was reused


def _until(body: dict) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(float(body.get("expires", 0))))


def _take(path, what: str) -> _Lease | dict:
    """Create or take over the writer lease at `path`; the live holder's body when refused."""
    body = _body(what)
    for _ in range(2):
        try:
            return _Lease(path, _put(path, body, IfNoneMatch="*"), body)
        except OSError as e:
            if not location._precondition_failed(e):
                raise
        found = _read(path)
        if found is None:
            continue  # released a moment ago: create it again
        held, etag = found
        if _live(held):
            return held
        try:  # expired: a dead holder's; exactly one of the runs that saw it wins
            return _Lease(path, _put(path, body, IfMatch=etag), body)
        except OSError as e:
            if not location._precondition_failed(e):
                raise
    return _read(path)[0] if _read(path) else {"holder": "another run", "expires": 0}


def _live_readers(folder) -> list[dict]:
    out = []
    try:
        names = folder.fs.ls(folder.path, detail=False, refresh=True)
    except FileNotFoundError:
        return out
    for name in names:
        found = _read(type(folder)(f"{folder.protocol}://{name}"))
        if found and _live(found[0]):
            out.append(found[0])
    return out


@contextmanager
def writer(lease_path, readers_folder, what: str, refused: str) -> Iterator[None]:
    """Hold the writer lease of a stage; StoreLocked(`refused` + the holder) if another run
    writes it or reads it."""
    got = _take(lease_path, what)
    if isinstance(got, dict):
        raise _refusal(refused, got)
    readers = _live_readers(readers_folder)
    if readers:
        got.release()
        raise _refusal(refused, readers[0])
    try:
        yield
    finally:
        got.release()


@contextmanager
def reader(lease_path, readers_folder, what: str, refused: str) -> Iterator[None]:
    """Hold a reader lease of a stage; StoreLocked when a live writer lease exists."""
    body = _body(what)
    mine = readers_folder / f"{body['token']}.lease"
    lease = _Lease(mine, _put(mine, body), body)
    found = _read(lease_path)
    if found and _live(found[0]):
        lease.release()
        raise _refusal(refused, found[0])
    try:
        yield
    finally:
        lease.release()
