"""One exit-code rule for every `aunet` command (flows/cli.py): 0 done, 1 a unit failed on a
bug, 2 the user's input or state (bad config or option, bad or missing input, missing or stale
artifact, a store path that is a file), said in one line without a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import set_csv_cell, write_mini_dataset
from flows.cli import main

STAGES = ["manifest", "faces", "features", "prior", "train", "evaluate", "report"]


@pytest.fixture()
def bad_config(tmp_path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("dataset:\n  name: x\n  layout: demo\n  root: .\n  au_set: bp4d\n  colour: red\n")
    return path


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines and lines[0].startswith(f"aunet {command}: error:"), err
    return err


@pytest.mark.parametrize("command", STAGES + ["run"])
def test_bad_config_exits_2_for_every_config_command(capsys, bad_config, command):
    assert main([command, "--config", str(bad_config)]) == 2
    assert "dataset.colour" in _one_line_error(capsys, command)


def test_bad_config_exits_2_for_export(capsys, bad_config, tmp_path):
    assert main(["export", "--config", str(bad_config), "--variant", "aunet", "--fold", "1",
                 "--out", str(tmp_path / "b")]) == 2
    _one_line_error(capsys, "export")


def test_bad_override_exits_2_for_demo(capsys):
    assert main(["demo", "--set", "train.epochs=-1"]) == 2
    assert "train.epochs" in _one_line_error(capsys, "demo")


@pytest.mark.parametrize("argv,said", [
    (["train", "--config", "c.yaml", "--variant", "bogus"], "unknown variant 'bogus'"),
    (["export", "--config", "c.yaml", "--variant", "bogus", "--fold", "1", "--out", "o"],
     "unknown variant 'bogus'"),
    (["import-reference", "--head", "h.pth", "--aus", "1,2,x", "--out", "o"], "1,2,x"),
    (["train", "--config", "c.yaml", "--fold", "zero"], "a fold is a number"),
    (["nosuchcommand"], "invalid choice"),
])
def test_bad_options_are_one_line_exit_2(capsys, argv, said):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "Traceback" not in err


def test_predict_bad_option_value_exits_2(capsys, tmp_path):
    assert main(["predict", str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--fps", "0"]) == 2
    assert "--fps" in _one_line_error(capsys, "predict")


def test_missing_model_and_inputs_exit_2(capsys, tmp_path):
    assert main(["predict", str(tmp_path / "none.mp4"), "--model", str(tmp_path / "nobundle"),
                 "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "predict")
    assert main(["import-reference", str(tmp_path / "no-clone"), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "import-reference")


def test_models_and_query(capsys, tmp_path):
    assert main(["models", str(tmp_path)]) == 0
    assert main(["query", "--store", str(tmp_path / "store"), "SELECT 42"]) == 0
    assert "42" in capsys.readouterr().out
    assert main(["query", "--store", str(tmp_path / "store"), ""]) == 2
    _one_line_error(capsys, "query")
    (tmp_path / "afile").write_text("x")
    assert main(["query", "--store", str(tmp_path / "afile"), "SELECT 1"]) == 2
    assert "is a file" in _one_line_error(capsys, "query")


def _mini(tmp_path: Path, **changes) -> Path:
    config = write_mini_dataset(tmp_path / "mini", n_subjects=3, n_frames=3)
    cfg = yaml.safe_load(config.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".") if "." in dotted else (None, dotted)
        (cfg[section] if section else cfg)[key] = value
    config.write_text(yaml.safe_dump(cfg))
    return config


def test_manifest_ok_then_bad_inputs_exit_2(capsys, tmp_path):
    config = _mini(tmp_path)
    assert main(["manifest", "--config", str(config), "--quiet"]) == 0
    capsys.readouterr()
    # a missing dataset root
    gone = _mini(tmp_path / "gone", **{"dataset.root": str(tmp_path / "nowhere")})
    assert main(["manifest", "--config", str(gone), "--quiet"]) == 2
    assert "nowhere" in capsys.readouterr().err
    # a label error inside the manifest unit
    csv = Path(yaml.safe_load(config.read_text())["dataset"]["manifest_file"])
    if not csv.is_absolute():
        csv = config.parent / csv
    set_csv_cell(csv, 2, "AU01", "yes")
    assert main(["manifest", "--config", str(config), "--quiet", "--force"]) == 2
    err = capsys.readouterr().err
    assert "AU01 = 'yes'" in err and "Traceback" not in err


def test_store_path_that_is_a_file_exits_2(capsys, tmp_path):
    (tmp_path / "store-file").write_text("not a folder")
    config = _mini(tmp_path, store=str(tmp_path / "store-file"))
    assert main(["manifest", "--config", str(config), "--quiet"]) == 2
    assert "is a file" in _one_line_error(capsys, "manifest")


def test_a_bug_in_a_unit_exits_1(capsys, tmp_path, monkeypatch):
    from stages import manifest

    def buggy(*a, **k):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(manifest, "run_unit", buggy)
    assert main(["manifest", "--config", str(_mini(tmp_path)), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "TypeError: unsupported operand" in err and "Traceback" in err  # a bug keeps its trace


HEAVY = ("torch", "prefect", "sklearn", "pandas", "distributed", "zarr", "duckdb")


@pytest.mark.parametrize("argv", [["--help"], ["manifest", "--config", "{bad}"],
                                  ["train", "--config", "{bad}", "--variant", "aunet"]])
def test_help_and_config_errors_import_no_heavy_library(bad_config, argv):
    """`aunet --help` and a config error answer without torch, Prefect, scikit-learn ... (they
    took 7-8 s to import here before any message)."""
    import subprocess
    import sys

    code = ("import sys\nfrom flows.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n"
            "    pass\nprint('HEAVY', sorted(m for m in %r if m in sys.modules))"
            % ([a.format(bad=bad_config) for a in argv], HEAVY))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)}, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout[-500:] + out.stderr[-500:]


def test_an_object_store_that_does_not_answer_is_one_line(capsys, tmp_path, monkeypatch):
    """A store URL whose endpoint is down: one line naming the variable to check, exit 2."""
    from procs import HOST, free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{HOST}:{free_port()}")  # nothing listens
    for k, v in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    config = _mini(tmp_path, store="s3://bucket/prefix")
    assert main(["manifest", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the object store" in err, err
    assert "AWS_ENDPOINT_URL" in err and "Traceback" not in err


def test_an_object_store_without_the_s3_api_is_refused_in_one_line(capsys, tmp_path):
    """Stage locks need S3's conditional writes: another fsspec URL is one line, exit 2."""
    config = _mini(tmp_path, store="memory://team/store")
    assert main(["manifest", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "need the S3 API" in err, err
