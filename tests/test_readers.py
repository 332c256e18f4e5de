"""Dataset readers: tiny datasets in each real release layout, read back exactly.

Every test writes its own dataset (real JPEG / PNG / video files by OpenCV) under tmp_path, runs
reader -> folds -> finalize -> Parquet, and compares the manifest row by row. Bad-input cases run
in both policies: raise names the file and line; skip counts the rows by reason and keeps the
rest.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.aus import AUSet
from pipeline.config import DatasetConfig, FoldScheme, Layout, OnBadInput
from pipeline.datasets import WITH_INTENSITY, read_dataset
from pipeline.folds import assign_folds
from pipeline.manifest import ManifestError, ManifestReport, au_set_of, finalize, label_matrix
from store.provenance import write_table

NAN = np.nan


def build(cfg: DatasetConfig, tmp_path: Path) -> tuple[pd.DataFrame, ManifestReport]:
    """reader -> folds -> finalize -> Parquet -> back: what the manifest stage writes."""
    report = ManifestReport(policy=cfg.on_bad_input)
    df = assign_folds(read_dataset(cfg, report), cfg, report)
    table = finalize(df, cfg.name, cfg.au_set, report, intensity=cfg.layout in WITH_INTENSITY)
    out = tmp_path / "manifest.parquet"
    write_table(out, table)
    back = pq.read_table(out)
    assert back.schema.equals(table.schema)  # fields and types; metadata checked below
    assert au_set_of(back) is cfg.au_set
    return back.to_pandas(), report


def check_bad(make_cfg, mutate, reason: str, where: str, n: int, kept: int, tmp_path: Path):
    """Raise mode names `where` and the reason; skip mode counts `n` and keeps `kept` rows."""
    cfg = make_cfg()
    mutate(cfg.root)
    with pytest.raises(ManifestError, match=rf"{where}.*\[{reason}\]"):
        build(cfg, tmp_path)
    df, report = build(cfg.model_copy(update={"on_bad_input": OnBadInput.SKIP}), tmp_path)
    assert report.left_out == {reason: n}
    assert len(df) == kept
    assert where in report.examples[reason][0]


# -- BP4D ------------------------------------------------------------------------------------
def bp4d_value(frame: int, au: int) -> str:
    """The label the fixture writes: a pattern per AU, 9 (unknown) for frame 2 of AU02."""
    if au not in AUSet.BP4D.numbers:
        return "9"  # uncoded AUs are 9 in the release
    if (frame, au) == (2, 2):
        return "9"
    return str((frame + AUSet.BP4D.numbers.index(au)) % 2)


def write_bp4d_csv(path: Path, frames, override: dict | None = None) -> None:
    lines = [",".join(["0", *[str(n) for n in range(1, 100)]])]
    for f in frames:
        vals = [(override or {}).get((f, n), bp4d_value(f, n)) for n in range(1, 100)]
        lines.append(",".join([str(f), *vals]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# (subject, task): (labelled frames, image frames, file-name format). F001 fold 3, M003 fold 1.
BP4D_VIDEOS = {("F001", "T1"): (range(1, 5), range(1, 7), "{:04d}"),
               ("M003", "T2"): (range(7, 10), range(7, 10), "{}")}


@pytest.fixture
def bp4d(tmp_path, write_image):
    root = tmp_path / "BP4D"
    for (s, t), (frames, images, fmt) in BP4D_VIDEOS.items():
        write_bp4d_csv(root / "AUCoding" / "AU_OCC" / f"{s}_{t}.csv", frames)
        for f in images:
            write_image(root / "images" / s / t / f"{fmt.format(f)}.jpg", seed=f)
    return lambda: DatasetConfig(name="bp4d", layout=Layout.BP4D, root=root,
                                 frames_dir=root / "images", au_set=AUSet.BP4D)


def test_bp4d_reads_back_exactly(bp4d, tmp_path):
    df, report = build(bp4d(), tmp_path)
    expect = [(s, t, f) for (s, t), (frames, _, _) in BP4D_VIDEOS.items() for f in frames]
    assert list(zip(df.subject, df.session, df.frame)) == expect
    assert list(df.row) == list(range(7)) and list(df.video_id[:1]) == ["F001/T1"]
    assert list(df.fold) == [3, 3, 3, 3, 1, 1, 1]
    assert df.image_path[0].endswith("images/F001/T1/0001.jpg")
    assert df.image_path[4].endswith("images/M003/T2/7.jpg")
    y = label_matrix(df, AUSet.BP4D)  # (7, 12)
    want = np.array([[NAN if bp4d_value(f, n) == "9" else int(bp4d_value(f, n))
                      for n in AUSet.BP4D.numbers] for _, _, f in expect])
    np.testing.assert_array_equal(y, want)
    assert np.isnan(y[1, 1])  # the 9 is unknown, never positive
    assert report.left_out == {}
    assert report.notes["images without labels (only a stretch of each task is coded; normal)"] == 2


def _append(path: Path, text: str):
    path.write_text(path.read_text() + text)


OCC = Path("AUCoding/AU_OCC")
BP4D_BAD = {  # name: (mutation of the root, reason, where, left out, rows kept)
    "alphabet": (lambda r: write_bp4d_csv(r / OCC / "F001_T1.csv", range(1, 5), {(3, 4): "2"}),
                 "label_out_of_alphabet", "F001_T1.csv:4", 1, 6),
    "no_image": (lambda r: (r / "images/F001/T1/0003.jpg").unlink(), "no_image", "F001_T1.csv:4", 1, 6),
    "no_folder": (lambda r: shutil.rmtree(r / "images/M003/T2"), "no_image", "M003_T2.csv:2", 3, 4),
    "ambiguous": (lambda r: shutil.copy(r / "images/F001/T1/0001.jpg", r / "images/F001/T1/1.jpg"),
                  "ambiguous_image", "F001_T1.csv:2", 1, 6),
    "header": (lambda r: (r / OCC / "M003_T2.csv").write_text(
        "frame,1,2\n7,0,0\n8,0,0\n9,0,0\n"), "bad_header", "M003_T2.csv:1", 3, 4),
    "columns": (lambda r: _append(r / OCC / "F001_T1.csv", "5,1,0\n"),
                "wrong_column_count", "F001_T1.csv:6", 1, 7),
    "frame": (lambda r: _append(r / OCC / "F001_T1.csv", "x" + ",0" * 99 + "\n"),
              "bad_frame_number", "F001_T1.csv:6", 1, 7),
    "unreadable": (lambda r: (r / OCC / "F002_T1.csv").write_bytes(b"\xff\xfe\x00\x81"),
                   "unreadable_label_file", "F002_T1.csv", 1, 7),
    "file_name": (lambda r: (r / OCC / "F001T1.csv").write_text("0,1\n"),
                  "bad_file_name", "F001T1.csv", 1, 7),
    "duplicate": (lambda r: _append(r / OCC / "F001_T1.csv", "2" + ",0" * 99 + "\n"),
                  "duplicate_frame", "video F001/T1 frame 2", 1, 7),
    "no_fold": (lambda r: (write_bp4d_csv(r / OCC / "X999_T1.csv", [1]),
                           shutil.copytree(r / "images/F001", r / "images/X999")),
                "subject_in_no_fold", "subject X999", 1, 7),
}


@pytest.mark.parametrize("case", sorted(BP4D_BAD))
def test_bp4d_bad_input(bp4d, tmp_path, case):
    check_bad(bp4d, *BP4D_BAD[case], tmp_path)


def test_bp4d_missing_or_empty_label_folder(bp4d):
    cfg = bp4d()
    shutil.rmtree(cfg.root / OCC)
    with pytest.raises(FileNotFoundError, match="AU_OCC"):
        read_dataset(cfg, ManifestReport())
    (cfg.root / OCC).mkdir()
    with pytest.raises(ManifestError, match="empty dataset"):
        read_dataset(cfg, ManifestReport())


# -- DISFA -----------------------------------------------------------------------------------
DISFA_N = 5  # labelled frames per subject (1-based indices 1..5)


def disfa_value(sn: str, au: int, frame: int) -> int:
    return (frame + au + int(sn[2:])) % 6  # every intensity 0-5 appears


@pytest.fixture
def disfa(tmp_path, write_image, write_video):
    root = tmp_path / "DISFA"
    for sn in ("SN001", "SN003"):  # folds 3 and 1
        for n in AUSet.DISFA.numbers + (5,):  # the release has AUs outside the set too
            p = root / "ActionUnit_Labels" / sn / f"{sn}_au{n}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("".join(f"{f},{disfa_value(sn, n, f)}\n" for f in range(1, DISFA_N + 1)))
        write_video(root / "Videos_LeftCamera" / f"LeftVideo{sn}_comp.avi", DISFA_N + 1)
        for i in range(DISFA_N):
            write_image(root / "frames" / sn / f"{i}.png", seed=i)

    def make(source: str = "video"):
        return DatasetConfig(name="disfa", layout=Layout.DISFA, root=root, au_set=AUSet.DISFA,
                             disfa_source=source, frames_dir=root / "frames")
    return make


@pytest.mark.parametrize("source", ["video", "frames"])
def test_disfa_reads_back_exactly(disfa, tmp_path, source):
    df, report = build(disfa(source), tmp_path)
    assert list(df.subject) == ["SN001"] * DISFA_N + ["SN003"] * DISFA_N
    assert list(df.frame) == list(range(DISFA_N)) * 2  # 0-based, as in the label tables
    assert list(df.fold) == [3] * DISFA_N + [1] * DISFA_N
    for n in AUSet.DISFA.numbers:
        want = [disfa_value(sn, n, f) for sn in ("SN001", "SN003") for f in range(1, DISFA_N + 1)]
        assert list(df[f"AU{n:02d}_intensity"]) == want
        assert list(df[f"AU{n:02d}"]) == [int(v >= 2) for v in want]
    if source == "video":
        assert df.video_path[0].endswith("Videos_LeftCamera/LeftVideoSN001_comp.avi")
        assert list(df.video_frame) == list(df.frame) and df.image_path.isna().all()
        assert sum(report.notes.values()) == 2  # one undecoded-but-unlabelled frame per video
    else:
        assert df.image_path[6].endswith("frames/SN003/1.png") and df.video_path.isna().all()
    assert report.left_out == {}


def test_disfa_threshold_is_configurable(disfa, tmp_path):
    df, _ = build(disfa().model_copy(update={"occurrence_threshold": 4}), tmp_path)
    assert list(df.AU01) == [int(v >= 4) for v in df.AU01_intensity]


def _au(r: Path, sn: str, n: int) -> Path:
    return r / "ActionUnit_Labels" / sn / f"{sn}_au{n}.txt"


def _set_line(path: Path, line_no: int, text: str):
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


DISFA_BAD = {
    "missing_file": (lambda r: _au(r, "SN003", 9).unlink(), "missing_label_file",
                     "SN003_au9.txt", DISFA_N, DISFA_N),
    "not_integer": (lambda r: _set_line(_au(r, "SN001", 2), 3, "3,2.5"),
                    "label_out_of_alphabet", "SN001_au2.txt:3", 1, 2 * DISFA_N - 1),
    "out_of_range": (lambda r: _set_line(_au(r, "SN001", 4), 2, "2,6"),
                     "label_out_of_alphabet", "SN001_au4.txt:2", 1, 2 * DISFA_N - 1),
    "bad_line": (lambda r: _set_line(_au(r, "SN001", 4), 2, "2;1"), "bad_line",
                 "SN001_au4.txt:2", 1, 2 * DISFA_N - 1),
    "lengths": (lambda r: _append(_au(r, "SN003", 1), "6,0\n7,1\n"), "frame_count_mismatch",
                "SN003_au1.txt:6", 2, 2 * DISFA_N),
    "past_video_end": (lambda r: [_append(_au(r, "SN001", n), "9,0\n") for n in AUSet.DISFA.numbers],
                       "no_image", "SN001_au1.txt:6", 1, 2 * DISFA_N),
    "no_video": (lambda r: (r / "Videos_LeftCamera/LeftVideoSN001_comp.avi").unlink(),
                 "no_video", "SN001_au1.txt:1", DISFA_N, DISFA_N),
}


@pytest.mark.parametrize("case", sorted(DISFA_BAD))
def test_disfa_bad_input(disfa, tmp_path, case):
    check_bad(disfa, *DISFA_BAD[case], tmp_path)


def test_disfa_frames_source_missing_image(disfa, tmp_path):
    check_bad(lambda: disfa("frames"), lambda r: (r / "frames/SN003/2.png").unlink(), "no_image",
              "SN003_au1.txt:3", 1, 2 * DISFA_N - 1, tmp_path)
