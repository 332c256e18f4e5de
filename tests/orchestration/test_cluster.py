"""A real Dask cluster, started as a user starts one: `dask scheduler` and two `dask worker`
processes on 127.0.0.1, a Prefect API they all report to, then `aunet run` with `dask.address`
set, with the store in a folder and in an S3 bucket (SeaweedFS; the workers get only the AWS
variables, no shared folder for the store). Both workers must have run units, and every report
table must equal a local run's."""
from __future__ import annotations

import pytest

from dask_cluster import aunet_run, dask_cluster, tasks_per_worker
from pipeline.config import load_config
from run_tables import assert_same_tables, report_tables

from .conftest import tiny_config

pytestmark = pytest.mark.slow
N_WORKERS = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    with dask_cluster(tmp_path_factory.mktemp("cluster"), N_WORKERS, s3_server.env) as c:
        yield c


def test_two_worker_cluster_run_equals_a_local_run(cluster, tmp_path):
    config = tiny_config(tmp_path)
    local, remote = tmp_path / "local", tmp_path / "remote"
    aunet_run(config, cluster.env, f"store={local}")  # a local cluster of the config's two workers
    aunet_run(config, cluster.env, f"store={remote}", f"dask.address={cluster.address}")

    ran = tasks_per_worker(cluster.address)
    assert sorted(ran) == [f"w{i}" for i in range(N_WORKERS)], ran
    assert all(keys.get("unit_task") for keys in ran.values()), ran
    print("tasks per worker:", ran)
    assert load_config(config).dask.address is None  # the local run really was local
    assert_same_tables(report_tables(local), report_tables(remote), "cluster")


def test_two_worker_cluster_run_on_s3_equals_a_local_run(cluster, tmp_path, s3_bucket):
    config = tiny_config(tmp_path)
    local, url = tmp_path / "local", f"s3://{s3_bucket}/team/store"
    aunet_run(config, cluster.env, f"store={local}")
    before = tasks_per_worker(cluster.address)
    aunet_run(config, cluster.env, f"store={url}", f"dask.address={cluster.address}")
    after = tasks_per_worker(cluster.address)
    ran = {w: after[w].get("unit_task", 0) - before.get(w, {}).get("unit_task", 0) for w in after}
    print("units per worker on S3:", ran)
    assert sorted(ran) == [f"w{i}" for i in range(N_WORKERS)] and all(ran.values()), ran
    assert_same_tables(report_tables(local), report_tables(url), "cluster on S3")
