"""The demo config with its store in an S3 bucket (a real SeaweedFS server): `aunet run` to the
end, then `aunet query` answers over the bucket, and every report table equals the same run's on
a local folder. Prints each stage's time on both stores (docs/orchestration.md)."""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from .conftest import REPO
from procs import BIN
from run_tables import assert_same_tables, report_tables

RUN_S = 1800
# two full demo runs: about 5-7 min each on 2 cores (over the suite's 900 s default)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2 * RUN_S + 300)]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # bit-identity between the runs
STAGE_TIME = re.compile(r"stage (\w+) took ([0-9.]+) s")


def _run(*args: str) -> tuple[str, float]:
    t0 = time.monotonic()
    cp = subprocess.run([str(BIN / "aunet"), *args], cwd=REPO, capture_output=True, text=True,
                        timeout=RUN_S, env={**os.environ, **ONE_THREAD})
    assert cp.returncode == 0, f"aunet {args[0]} failed ({cp.returncode}):\n{cp.stdout[-3000:]}\n{cp.stderr[-5000:]}"
    return cp.stdout + cp.stderr, time.monotonic() - t0


def test_the_demo_runs_on_seaweedfs_and_equals_the_local_run(tmp_path, s3_bucket):
    config = str(REPO / "configs" / "demo.yaml")
    url = f"s3://{s3_bucket}/demo"
    times = {}
    for where, store in (("local", str(tmp_path / "store")), ("s3", url)):
        log, total = _run("run", "--config", config, "--set", f"store={store}")
        times[where] = dict(STAGE_TIME.findall(log)) | {"total": f"{total:.1f}"}
    print("\nstage times (s), local folder vs SeaweedFS on 127.0.0.1:")
    for stage in times["local"]:
        print(f"  {stage:<10}{times['local'][stage]:>8}{times['s3'].get(stage, '-'):>8}")
    assert len(times["s3"]) == 8, times  # seven stages and the total

    out, _ = _run("query", "--store", url, "SELECT variant, round(100*f1, 1) AS f1 FROM metrics "
                  "WHERE fold = 'mean' AND au = 'Avg' ORDER BY variant")
    assert "aunet" in out and "au_fan" in out and "rows)" in out, out
    assert_same_tables(report_tables(str(tmp_path / "store")), report_tables(url), "S3")
