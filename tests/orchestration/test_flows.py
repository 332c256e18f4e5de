"""Every flow, in-process under Prefect's test harness, on the tiny demo dataset."""
import pytest
from pydantic import ValidationError

from flows.params import FullParams, StageParams, TrainParams
from pipeline.config import load_config
from store.catalog import Catalog

from .conftest import snapshot, tiny_config


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def full_run(harness, tiny):
    from flows.full import full_flow

    result = full_flow(FullParams(config=str(tiny)))
    return result


def test_params_reject_unknown_keys():
    with pytest.raises(ValidationError, match="bogus"):
        StageParams(config="x.yaml", bogus=1)
    with pytest.raises(ValidationError):
        TrainParams(config="x.yaml", variants=["not_a_variant"])


def test_full_flow_writes_reports(full_run, tiny):
    from store import tables

    cfg = load_config(tiny)
    catalog = Catalog(cfg.store)
    assert full_run["stages"] == ["manifest", "faces", "features", "prior", "train", "evaluate", "report"]
    run = tables.latest_run(catalog, "demo")
    m = tables.read_run(catalog, "metrics", "demo", run).to_pandas()
    avg = m[(m.au == "Avg") & (m.fold == "mean")].set_index("variant").f1
    assert sorted(avg.index) == ["all_positive", "au_fan", "aunet"] and avg.between(0, 1).all()
    pred = tables.read_run(catalog, "predictions", "demo", run).to_pandas()
    assert len(pred) == 2 * 36 and set(pred.fold) == {1, 2, 3}  # 2 variants x every frame once
    md = (catalog.rendered("demo") / "report.md").read_text()
    assert f"run {run}" in md and "UNTRAINED BACKBONE" in md
    assert list(catalog.rendered("demo").glob("*.png"))


@pytest.mark.parametrize("stage", ["manifest", "faces", "features", "prior", "train", "evaluate"])
def test_stage_flow_rerun_is_skipped(full_run, tiny, stage):
    """A rerun with the same inputs, parameters and code recomputes nothing."""
    from flows.stage_flows import STAGE_FLOWS

    cfg = load_config(tiny)
    root = Catalog(cfg.store).root
    # evaluate appends a new run partition by design; everything else must stay byte-identical
    before = {k: v for k, v in snapshot(root).items() if not k.startswith("reports")}
    params = (TrainParams if stage == "train" else StageParams)(config=str(tiny))
    STAGE_FLOWS[stage](params)
    after = {k: v for k, v in snapshot(root).items() if not k.startswith("reports")}
    assert after == before


def test_forced_stage_changes_only_its_outputs(full_run, tiny):
    from flows.stage_flows import train_flow

    cfg = load_config(tiny)
    root = Catalog(cfg.store).root
    before = snapshot(root)
    train_flow(TrainParams(config=str(tiny), variants=["au_fan"], folds=[1], force=True))
    after = snapshot(root)
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed, "a forced train run rewrote nothing"
    assert all(k.startswith("demo/models/au_fan/fold1/") for k in changed), sorted(changed)


def test_concurrent_run_is_refused(full_run, tiny):
    from flows.stage_flows import manifest_flow

    cfg = load_config(tiny)
    with Catalog(cfg.store).lock("demo", "manifest"):
        state = manifest_flow(StageParams(config=str(tiny), force=True), return_state=True)
    assert state.is_failed() and "another run is writing or reading stage 'manifest'" in state.message


def test_aunet_run_on_bad_input_fails_in_one_line(harness, tmp_path, capsys):
    from conftest import set_csv_cell, write_mini_dataset
    from flows.cli import main

    config = write_mini_dataset(tmp_path)
    set_csv_cell(tmp_path / "data" / "manifest.csv", 3, "AU01", "yes")
    code = main(["run", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err  # bad input: exit 2, as the stage command
    said = [line for line in err.splitlines() if "| INFO" not in line and line.strip()
            and not line.startswith("See https")]  # Prefect's and Dask's progress logs aside
    assert len(said) == 1 and said[0].startswith("aunet run: FAILED: bad input: stage manifest failed")
    assert "manifest.csv:4: AU01 = 'yes'" in said[0]


def test_local_dask_dashboard_binds_loopback(tiny):
    from flows.stage_flows import task_runner

    cfg = load_config(tiny)
    runner = task_runner(cfg, "faces")
    assert runner.cluster_kwargs["dashboard_address"] == "127.0.0.1:8787"
    assert cfg.dask.dashboard_address.startswith("127.0.0.1:")


def test_local_workers_keep_adaptive_malloc_and_their_share_of_the_cores(tiny, monkeypatch):
    """Dask's nanny would export MALLOC_TRIM_THRESHOLD_ (training 1.6x slower on a worker) and
    OMP_NUM_THREADS=1, also into this process, where a task would read it as the user's choice."""
    import os

    from distributed import Client, LocalCluster

    from flows.stage_flows import prepare_workers
    from stages import runner

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")  # no server for this check
    for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)
    cfg = load_config(tiny)
    prepare_workers()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as lc, Client(lc) as client:
        threads = client.submit(runner.task_threads, cfg, pure=False).result()
        trim = client.submit(os.environ.get, "MALLOC_TRIM_THRESHOLD_", pure=False).result()
    slots = cfg.dask.n_workers * cfg.dask.threads_per_worker
    assert threads == max(1, (os.cpu_count() or 1) // slots) and trim is None
    assert "OMP_NUM_THREADS" not in os.environ


def test_predict_flow_fans_out_per_input_and_fails_by_name(harness, tmp_path):
    from conftest import SHARED, run_stages, write_mini_dataset
    from flows.predict_flow import PredictParams, predict_flow
    from pipeline.config import FacesConfig
    from stages.bundles import export

    blaze = SHARED / "weights" / "blazeface" / "blazeface.pth"
    if not blaze.exists():
        pytest.skip(f"{SHARED} absent")
    cfg = load_config(write_mini_dataset(tmp_path, train={"epochs": 1, "max_steps_per_epoch": 1,
                                                          "variants": ["au_fan"], "folds": [1]}))
    run_stages(cfg, "manifest", "faces", "features", "train")
    bundle = export(cfg, Catalog(cfg.store), "au_fan", 1, tmp_path / "bundle",
                    detector=FacesConfig(detector_weights=blaze))
    (tmp_path / "broken.mp4").write_bytes(b"")
    params = PredictParams(inputs=[str(SHARED / "media" / "videos" / "single_face.mp4"),
                                   str(tmp_path / "broken.mp4")],
                           model=str(bundle), out=str(tmp_path / "out"), allow_random_weights=True)
    state = predict_flow(params, return_state=True)
    assert state.is_failed() and "broken" in state.message and "1 input(s) failed" in state.message
    assert (tmp_path / "out" / "single_face.csv").exists()
    with pytest.raises(ValidationError, match="bogus"):
        PredictParams(inputs=[], model="m", out="o", bogus=1)


@pytest.mark.parametrize("error,calls,ok", [
    (lambda: OSError(5, "Input/output error (a flaky mount)"), 2, True),  # transient: retried
    (lambda: PermissionError(13, "Permission denied"), 1, False),  # permanent: never retried
])
def test_flow_units_retry_only_transient_io_errors(harness, tmp_path, monkeypatch, error, calls, ok):
    """The manifest stage's unit runs in the flow's own process (a thread pool), so a patched
    unit function is the one the task calls: it fails once, then does the real work."""
    from flows import tasks
    from flows.stage_flows import manifest_flow
    from stages import manifest

    monkeypatch.setattr(tasks.unit_task, "retry_delay_seconds", 0)
    real, seen = manifest.run_unit, []

    def flaky(*args, **kwargs):
        seen.append(1)
        if len(seen) == 1:
            raise error()
        return real(*args, **kwargs)

    monkeypatch.setattr(manifest, "run_unit", flaky)
    config = tiny_config(tmp_path)
    state = manifest_flow(StageParams(config=str(config)), return_state=True)
    assert len(seen) == calls
    assert state.is_completed() is ok
    if not ok:
        assert "permission denied" in state.message.lower()
