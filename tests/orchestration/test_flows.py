"""Every flow, in-process under Prefect's test harness, on the tiny demo dataset."""
import pytest
from pydantic import ValidationError

from flows.params import FullParams, StageParams, TrainParams
from pipeline.config import load_config
from store.catalog import Catalog

from .conftest import snapshot


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
    cfg = load_config(tiny)
    catalog = Catalog(cfg.store)
    assert catalog.manifest("demo").exists()
    parts = list(catalog.table_dir("metrics").rglob("*.parquet"))
    assert parts, "evaluate wrote no metrics partition"
    rendered = catalog.rendered("demo")
    assert list(rendered.glob("*.md")) and list(rendered.glob("*.png"))


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
