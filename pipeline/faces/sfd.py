"""SFD (S3FD, face-alignment's network and decoding) at full image resolution: boxes only."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.config import FacesConfig
from pipeline.faces.geometry import NMS_IOU, plausible
from pipeline.faces.types import Detections, Detector, DetectorError


class SFD(Detector):
    """S3FD at full image resolution (face-alignment's network and decoding): boxes only."""

    def __init__(self, cfg: FacesConfig, files: dict[str, Path], min_score: float):
        import torch
        from face_alignment.detection.sfd.net_s3fd import s3fd

        super().__init__(cfg, files, min_score)
        try:
            net = s3fd()
            net.load_state_dict(torch.load(self.files["weights"], map_location="cpu", weights_only=True))
        except Exception as e:
            raise DetectorError(f"{self.files['weights']}: not S3FD weights ({e})") from None
        self.net = net.eval()

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        from face_alignment.detection.sfd.bbox import nms as sfd_nms
        from face_alignment.detection.sfd.detect import detect

        out = []
        for img in images:  # frames may differ in size: one at a time
            cand = np.asarray(detect(self.net, img, device="cpu")[0], np.float32).reshape(-1, 5)
            if len(cand):
                cand = cand[sfd_nms(cand, NMS_IOU)]
                cand = cand[cand[:, 4] > self.min_score]
            kp = np.full((len(cand), 5, 2), np.nan, np.float32)
            # boxes only: plausibility passes keypoint-less faces, applied for the one contract
            out.append(plausible(Detections(cand[:, :4].copy(), kp, cand[:, 4].copy()), self.max_roll_deg))
        return out
