"""Identities follow file contents for the life of a process (a long-lived Dask worker)."""
from __future__ import annotations

import os

import pytest

from pipeline.config import DetectorKind, FacesConfig
from pipeline.faces.types import DetectorError
from store.identity import detector_files


def test_a_replaced_detector_weights_file_changes_its_identity(tmp_path):
    weights = tmp_path / "mobilenet0.25_Final.pth"
    weights.write_bytes(b"A" * 64)
    faces = FacesConfig(detector=DetectorKind.RETINAFACE, detector_weights=weights)
    first = detector_files(faces)
    assert set(first) == {"weights"}
    st = weights.stat()
    new = tmp_path / "new.pth"
    new.write_bytes(b"B" * 64)  # same size ...
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the same mtime
    os.replace(new, weights)  # replaced under the same path, as a user or a sync tool does
    second = detector_files(faces)
    assert second != first and detector_files(faces) == second
    weights.unlink()
    with pytest.raises(DetectorError, match="file not found"):
        detector_files(faces)
