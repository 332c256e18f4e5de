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
                  "duplicate_frame", "F001_T1.csv:6: frame 2 is listed again", 1, 7),
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


# -- Aff-Wild2 (ABAW) ------------------------------------------------------------------------
ABAW_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
AW_VIDEOS = {"Train_Set": ("vidA_left", "vidA_right"), "Validation_Set": ("vidB",)}
AW_FRAMES = 4


def aw_value(video: str, frame: int, j: int) -> str:
    if (video, frame) == ("vidB", 3):
        return "-1"  # a no-face frame: -1 throughout and no crop in the release
    return ("-1", "0", "1")[(frame + j + len(video)) % 3]


def _aw_file(root: Path, split: str, video: str) -> Path:
    return root / split / f"{video}.txt"


@pytest.fixture
def affwild2(tmp_path, write_image):
    root = tmp_path / "AffWild2"
    for split, videos in AW_VIDEOS.items():
        for v in videos:
            rows = [",".join(aw_value(v, f, j) for j in range(12)) for f in range(1, AW_FRAMES + 1)]
            p = _aw_file(root, split, v)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("\n".join([ABAW_HEADER, *rows]) + "\n")
            for f in range(1, AW_FRAMES + 2 if v == "vidA_left" else AW_FRAMES + 1):
                if (v, f) != ("vidB", 3):
                    write_image(root / "cropped_aligned" / v / f"{f:05d}.jpg", seed=f)
    return lambda: DatasetConfig(name="aw", layout=Layout.AFFWILD2, root=root, au_set=AUSet.ABAW12,
                                 folds=FoldScheme.COLUMN)


@pytest.mark.parametrize("au_set", [AUSet.ABAW12, AUSet.AFFWILD2_PAPER])
def test_affwild2_reads_back_exactly(affwild2, tmp_path, au_set):
    df, report = build(affwild2().model_copy(update={"au_set": au_set}), tmp_path)
    expect = [(v, f) for v in ("vidA_left", "vidA_right", "vidB") for f in range(1, AW_FRAMES + 1)
              if (v, f) != ("vidB", 3)]
    assert list(zip(df.video_id, df.frame)) == expect
    assert list(df.subject) == ["vidA"] * 8 + ["vidB"] * 3  # _left / _right are one person
    assert list(df.fold) == [0] * 8 + [1] * 3  # Validation_Set is the test fold
    assert df.image_path[0].endswith("cropped_aligned/vidA_left/00001.jpg")
    header = [int(h[2:]) for h in ABAW_HEADER.split(",")]
    want = np.array([[NAN if n not in header else
                      {"-1": NAN, "0": 0, "1": 1}[aw_value(v, f, header.index(n))]
                      for n in au_set.numbers] for v, f in expect])
    np.testing.assert_array_equal(label_matrix(df, au_set), want)
    if au_set is AUSet.AFFWILD2_PAPER:
        assert df.AU20.isna().all()  # not in the ABAW header: unknown
    assert report.left_out == {}
    assert report.notes["frames labelled -1 throughout with no image (no face; left out)"] == 1
    assert report.notes["images without labels (only a stretch of each task is coded; normal)"] == 1


AW_BAD = {
    "alphabet": (lambda r: _set_line(_aw_file(r, "Train_Set", "vidA_left"), 3, "2" + ",0" * 11),
                 "label_out_of_alphabet", "vidA_left.txt:3", 1, 10),
    "columns": (lambda r: _set_line(_aw_file(r, "Train_Set", "vidA_right"), 5, "0,1"),
                "wrong_column_count", "vidA_right.txt:5", 1, 10),
    "no_image": (lambda r: (r / "cropped_aligned/vidA_right/00002.jpg").unlink(),
                 "no_image", "vidA_right.txt:3", 1, 10),
    "header": (lambda r: _set_line(_aw_file(r, "Validation_Set", "vidB"), 1, "AU1,AU2,Foo"),
               "bad_header", "vidB.txt:1", AW_FRAMES, 8),
    "both_splits": (lambda r: shutil.copy(_aw_file(r, "Validation_Set", "vidB"),
                                          _aw_file(r, "Train_Set", "vidB")),
                    "video_in_both_splits", "Validation_Set/vidB.txt", AW_FRAMES, 11),
    "unreadable": (lambda r: _aw_file(r, "Train_Set", "vidC").write_bytes(b"\xff\xfe\x00\x81"),
                   "unreadable_label_file", "vidC.txt", 1, 11),
}


@pytest.mark.parametrize("case", sorted(AW_BAD))
def test_affwild2_bad_input(affwild2, tmp_path, case):
    check_bad(affwild2, *AW_BAD[case], tmp_path)


def test_affwild2_empty(tmp_path):
    cfg = DatasetConfig(name="aw", layout=Layout.AFFWILD2, root=tmp_path, au_set=AUSet.ABAW12,
                        folds=FoldScheme.COLUMN)
    with pytest.raises(ManifestError, match="Train_Set.*empty dataset"):
        read_dataset(cfg, ManifestReport())


# -- community list format -------------------------------------------------------------------
# (path as written in the list, absolute?, expected subject, session, frame)
LIST_ROWS = [("F001/T1/1.jpg", False, "F001", "T1", 1), ("F001/T1/2.jpg", False, "F001", "T1", 2),
             ("M003/T2/5.jpg", True, "M003", "T2", 5), ("flat/a.jpg", False, "flat", "", 4),
             ("SN001/7.png", False, "SN001", "", 7)]


def list_labels(i: int) -> list[int]:
    return [(i + j) % 2 for j in range(12)]


@pytest.fixture
def listfmt(tmp_path, write_image):
    root = tmp_path / "list"
    lines = []
    for rel, absolute, *_ in LIST_ROWS:
        write_image(root / rel)
        lines.append(str(root / rel) if absolute else rel)
    (tmp_path / "paths.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "labels.txt").write_text(
        "".join(" ".join(map(str, list_labels(i))) + "\n" for i in range(len(LIST_ROWS))))
    return lambda: DatasetConfig(name="lst", layout=Layout.LIST, root=root, au_set=AUSet.BP4D,
                                 list_paths=tmp_path / "paths.txt", list_labels=tmp_path / "labels.txt",
                                 folds=FoldScheme.KFOLD, n_folds=3)


def test_list_reads_back_exactly(listfmt, tmp_path):
    df, report = build(listfmt(), tmp_path)
    got = {(s, se, f): (p, tuple(y)) for s, se, f, p, y in
           zip(df.subject, df.session, df.frame, df.image_path, label_matrix(df, AUSet.BP4D))}
    want = {(s, se, f): (str(tmp_path / "list" / rel), tuple(list_labels(i)))
            for i, (rel, _, s, se, f) in enumerate(LIST_ROWS)}
    assert got == want
    assert df.groupby("subject")["fold"].nunique().max() == 1  # subject-exclusive
    assert set(df.fold) == {1, 2, 3} and report.left_out == {}


LIST_BAD = {
    "columns": (lambda r: _set_line(r.parent / "labels.txt", 2, "0 1 0"), "wrong_column_count",
                "labels.txt:2", 1, 4),
    "alphabet": (lambda r: _set_line(r.parent / "labels.txt", 3, "9" + " 0" * 11),
                 "label_out_of_alphabet", "labels.txt:3", 1, 4),
    "no_image": (lambda r: (r / "F001/T1/1.jpg").unlink(), "no_image", "paths.txt:1", 1, 4),
}


@pytest.mark.parametrize("case", sorted(LIST_BAD))
def test_list_bad_input(listfmt, tmp_path, case):
    check_bad(listfmt, *LIST_BAD[case], tmp_path)


@pytest.mark.parametrize("policy", list(OnBadInput))
def test_list_line_count_mismatch_is_always_an_error(listfmt, policy):
    cfg = listfmt().model_copy(update={"on_bad_input": policy})
    _append(cfg.list_labels, "0" + " 0" * 11 + "\n")
    with pytest.raises(ManifestError, match=r"labels\.txt:6: .*row-aligned.*5 lines.*6"):
        read_dataset(cfg, ManifestReport(policy=policy))


# -- generic CSV manifest --------------------------------------------------------------------
@pytest.fixture
def generic(tmp_path, write_image, write_video):
    root = tmp_path / "mine"
    write_image(root / "img" / "a.jpg")
    write_video(root / "vid" / "clip.mp4", 5)
    (root / "manifest.csv").write_text("subject,image_path,video_path,fold,AU01,AU02\n"
                                       "S1,img/a.jpg,,1,1,\n"
                                       "S2,,vid/clip.mp4,2,0,1\n")
    return lambda: DatasetConfig(name="mine", layout=Layout.MANIFEST, root=root, au_set=AUSet.BP4D,
                                 manifest_file=root / "manifest.csv", folds=FoldScheme.COLUMN)


def test_generic_manifest_expands_a_video_row(generic, tmp_path):
    df, report = build(generic(), tmp_path)
    assert list(df.subject) == ["S1"] + ["S2"] * 5
    assert list(df.video_id) == ["S1/"] + ["S2/clip"] * 5
    assert list(df.frame) == [0, 0, 1, 2, 3, 4]
    assert df.video_frame[1:].tolist() == [0, 1, 2, 3, 4] and pd.isna(df.video_frame[0])
    assert df.image_path[0].endswith("img/a.jpg") and df.video_path[1].endswith("vid/clip.mp4")
    assert list(df.fold) == [1, 2, 2, 2, 2, 2]
    y = label_matrix(df, AUSet.BP4D)  # (6, 12): only AU01 and AU02 given
    np.testing.assert_array_equal(y[:, :2], [[1, NAN]] + [[0, 1]] * 5)
    assert np.isnan(y[:, 2:]).all() and report.left_out == {}


def test_generic_manifest_bad_label(generic, tmp_path):
    check_bad(generic, lambda r: _set_line(r / "manifest.csv", 2, "S1,img/a.jpg,,1,2,"),
              "label_out_of_alphabet", "manifest.csv:2", 1, 5, tmp_path)


def _write_rows(root: Path, header: str, rows: list[str]) -> None:
    (root / "manifest.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


def test_generic_text_label_fails_only_its_row(generic, tmp_path):
    """A 'yes' in one row is that row's problem: raise names its line and value, skip keeps the
    other rows (it used to turn the whole AU column into text and blame line 2)."""
    def mutate(root):
        _write_rows(root, "subject,image_path,fold,AU01", [
            "S1,img/a.jpg,1,1", "S2,img/a.jpg,2,0", "S3,img/a.jpg,3,yes", "S4,img/a.jpg,1,"])
    cfg = generic()
    mutate(cfg.root)
    with pytest.raises(ManifestError, match=r"manifest\.csv:4: AU01 = 'yes'"):
        build(cfg, tmp_path)
    df, report = build(cfg.model_copy(update={"on_bad_input": OnBadInput.SKIP}), tmp_path)
    assert report.left_out == {"label_out_of_alphabet": 1} and list(df.subject) == ["S1", "S2", "S4"]
    np.testing.assert_array_equal(label_matrix(df, AUSet.BP4D)[:, 0], [1, 0, NAN])


@pytest.mark.parametrize("column", ["au01", "AU2", "AU_12", "au 4"])
def test_generic_misspelt_au_column_is_refused_by_name(generic, tmp_path, column):
    cfg = generic()
    _write_rows(cfg.root, f"subject,image_path,fold,{column}", ["S1,img/a.jpg,1,1"])
    with pytest.raises(ManifestError, match=rf"rename '{column}' \(write 'AU\d\d'\)"):
        build(cfg, tmp_path)


def test_generic_non_integer_fold_names_file_row_and_column(generic, tmp_path):
    check_bad(generic, lambda r: _write_rows(r, "subject,image_path,fold,AU01",
                                             ["S1,img/a.jpg,1,1", "S2,img/a.jpg,two,0"]),
              "bad_fold", "manifest.csv:3: column fold = 'two'", 1, 1, tmp_path)


@pytest.mark.parametrize("frame,reason", [("-1", "bad_video_frame"), ("5", "frame_out_of_range")])
def test_generic_video_frame_outside_the_video_is_refused(generic, tmp_path, frame, reason):
    check_bad(generic, lambda r: _write_rows(r, "subject,video_path,video_frame,fold,AU01",
                                             ["S2,vid/clip.mp4,0,2,1", f"S2,vid/clip.mp4,{frame},2,0"]),
              reason, "manifest.csv:3", 1, 1, tmp_path)


def test_bp4d_header_only_label_file_is_reported(bp4d, tmp_path):
    def mutate(root):
        (root / "AUCoding" / "AU_OCC" / "F001_T1.csv").write_text(
            ",".join(["0", *[str(n) for n in range(1, 100)]]) + "\n")
    check_bad(bp4d, mutate, "empty_label_file", "F001_T1.csv", 1, 3, tmp_path)


def test_bp4d_duplicate_frame_names_file_and_line(bp4d, tmp_path):
    def mutate(root):
        path = root / "AUCoding" / "AU_OCC" / "M003_T2.csv"
        path.write_text(path.read_text() + path.read_text().splitlines()[1] + "\n")
    check_bad(bp4d, mutate, "duplicate_frame", "M003_T2.csv:5: frame 7 is listed again", 1, 7,
              tmp_path)
    with pytest.raises(ManifestError, match=r"first at line 2"):
        build(bp4d(), tmp_path)


@pytest.mark.parametrize("header,row,reason,where", [
    ("subject,image_path,fold,box_x0,box_y0,box_x1,box_y1,AU01",
     "S2,img/a.jpg,1,abc,0,10,10,0", "bad_box", "manifest.csv:3: column box_x0 = 'abc'"),
    ("subject,image_path,fold,landmarks,AU01",
     "S2,img/a.jpg,1,left eye right eye,0", "bad_landmarks", "manifest.csv:3: column landmarks"),
    ("subject,image_path,fold,AU01", "S2,img/a.jpg,300,0", "bad_fold",
     "manifest.csv:3: column fold = '300'"),
])
def test_generic_text_in_numeric_columns_names_file_row_and_column(generic, tmp_path, header,
                                                                   row, reason, where):
    first = {"bad_box": "S1,img/a.jpg,1,0,0,10,10,1", "bad_landmarks": "S1,img/a.jpg,1,,1"}
    check_bad(generic, lambda r: _write_rows(r, header, [first.get(reason, "S1,img/a.jpg,1,1"), row]),
              reason, where, 1, 1, tmp_path)


def test_list_frame_names_with_non_ascii_digits(tmp_path, write_image):
    from pipeline.datasets.listfmt import identity

    assert identity(Path("S1/T1/0012.jpg"), 7) == ("S1", "T1", 12)
    assert identity(Path("S1/T1/\u00b2.jpg"), 7) == ("T1", "", 7)  # '²' is no frame number
