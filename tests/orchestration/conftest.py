"""Fixtures for the Prefect flow tests: project-local Prefect home, no telemetry, a tiny demo
config. The environment is set here, before any test module imports Prefect."""
import os
import tempfile
from pathlib import Path

import pytest
import yaml

_HOME = Path(tempfile.mkdtemp(prefix="aunet-prefect-home-"))
os.environ["PREFECT_HOME"] = str(_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.pop("PREFECT_API_URL", None)  # never talk to a user's server from tests

REPO = Path(__file__).resolve().parents[2]


def tiny_config(tmp: Path, **extra) -> Path:
    """The demo dataset at its smallest: 3 subjects (one per fold), 12 frames each."""
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["dataset"].update(root=str(tmp / "data"), demo_subjects=3, demo_frames_per_subject=12)
    cfg["store"] = str(tmp / "store")
    cfg["features"].update(batch_size=4, frames_per_shard=8)
    cfg["prior"].update(epochs=5, lambdas=[0.1, 0.2])
    cfg["train"].update(epochs=1, max_steps_per_epoch=1, batch_size=4,
                        variants=["au_fan", "aunet"])
    cfg["eval"].update(bootstrap=20)
    for key, value in extra.items():
        cfg.setdefault(key, {}).update(value)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every artifact under root (locks and the file-hash cache excluded)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")
            and ".cache" not in p.relative_to(root).parts}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return tiny_config(tmp_path_factory.mktemp("tiny"))
