"""A bundle's frozen FAN and head on one runtime: features, landmarks and probabilities of crops.

`Engine(folder, spec, ..., runtime, exports)` loads the bundle's networks in torch; with the
onnx runtime it also gets each network's ONNX export from `exports(name, identity, write)` (the
store's cache, store/onnx_cache.py: exported once per bundle files' hashes and library versions),
runs both on probe crops and refuses the export when they disagree (pipeline/predict/runtime.py),
then drops the torch networks (`fan`, `fan_outputs` and `head` are None on the onnx runtime).
On ONNX Runtime the head runs split in two (pipeline/predict/split.py): its per-frame stem on
each crop after its FAN batch, its rest per item. On CUDA the torch FAN runs under fp16 autocast.
`features(crops)` gives what the head reads of each crop (torch: the features, float16, kept
small for the temporal buffers; onnx: the stem's outputs, `split.Stems`) and each crop's 68
landmarks in crop pixels, decoded from the FAN's own heatmaps (pipeline/faces/landmarks.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from pipeline.config import CropMode, FeatureDtype, Runtime, TemporalMode
from pipeline.faces import landmarks
from pipeline.faces.align import face_transform, reference_centre_transform
from pipeline.predict import runtime as rt
from pipeline.predict import split
from pipeline.models.fan import N_LANDMARKS
from pipeline.predict.bundle import BundleSpec, load_backbone_of, load_head_of
from pipeline.quantise import roundtrip

PIXEL_SCALE = 255.0
PROBE_CROPS = 3  # crops the exports are checked on when they load (3: t, t-T and t+T differ)
Exports = Callable[[str, dict, Callable[[Path], None]], Path]


class Engine:
    """A bundle's FAN and head on one device and runtime."""

    def __init__(self, folder, spec: BundleSpec, *, temporal: TemporalMode, tta_flip: bool,
                 batch_size: int = 8, device: str = "cpu", allow_random_weights: bool = False,
                 runtime: Runtime = Runtime.TORCH, exports: Optional[Exports] = None):
        self.spec, self.temporal, self.tta = spec, TemporalMode(temporal), tta_flip
        self.device = torch.device(device)
        fan, self.weights_id = load_backbone_of(folder, spec, allow_random_weights)
        self.fan = fan.to(self.device)
        self.fan_outputs = rt.FanOutputs(self.fan).eval()
        self.head = load_head_of(folder, spec).to(self.device)
        self.is_temporal = bool(getattr(self.head, "temporal", False))
        self.T, self.batch = spec.temporal_offset, batch_size
        self.timing = {"fan": 0.0, "head": 0.0}
        self.runtime = rt.resolve(runtime, device)
        self.onnx_fan = self.onnx_stem = self.onnx_rest = None
        self.check_error: dict[str, float] = {}
        if self.runtime is Runtime.ONNX:
            if exports is None:
                raise ValueError("the onnx runtime needs an export cache (store.onnx_cache)")
            self._load_onnx(folder, exports)
            self.fan = self.fan_outputs = self.head = None  # checked: torch's copies are not run

    def transform(self, box: np.ndarray, kp: np.ndarray) -> np.ndarray:
        c = self.spec.crop
        if c.mode is CropMode.REFERENCE:
            return reference_centre_transform(box, c.size)
        return face_transform(kp, box, size=c.size, eye_distance=c.eye_distance, margin=c.box_margin)

    def _identity(self, name: str, half: bool) -> dict:
        import onnx  # noqa: F401  (the exporter needs it: fail here, by name, if absent)

        s = self.spec
        return {"network": name, "fan": s.backbone.sha256 or self.weights_id,
                "backbone": s.backbone.variant.value, "head": s.head_sha256,
                "head_layout": s.head_layout.value, "variant": s.variant.value, "aus": s.aus,
                "crop": s.crop.size, "features": "float16" if half else "float32",
                "torch": torch.__version__,
                "onnxruntime": rt.onnxruntime_version(), "opset": rt.OPSET,
                "export": rt.EXPORT_VERSION}

    @torch.inference_mode()
    def _load_onnx(self, folder, exports: Exports) -> None:
        """The FAN's export gives float16 features (a head trained on a uint8 cache: float32,
        quantised outside, then float16), the head's stem takes them as they come and its rest
        the stems; the pair is checked against the unsplit head in torch."""
        size, half = self.spec.crop.size, self.spec.feature_dtype is not FeatureDtype.UINT8
        x = torch.from_numpy(rt.probe_crops(PROBE_CROPS, size)).permute(0, 3, 1, 2).float() / PIXEL_SCALE
        feats, heat = self.fan_outputs(x)  # float32: the export's float16 is checked against it
        fan = rt.FanOutputs(self.fan, half=half).eval()
        fan_path = exports("fan", self._identity("fan", half), lambda p: rt.export(
            fan, [x], ["crops"], ["features", "heatmaps"], p))
        self.onnx_fan = rt.OnnxNet(fan_path)
        self.check_error["fan"] = rt.check([feats.numpy(), heat.numpy()],
                                           self.onnx_fan(x.numpy()), f"{folder}: the FAN")
        f = feats.half()  # (3, 768, h, w): what the head gets
        frames = [f, f.roll(1, 0), f.roll(-1, 0)] if self.is_temporal else [f]  # t, t-T, t+T
        stem, rest = split.HeadStem(self.head).eval(), split.HeadRest(self.head).eval()
        stem_path = exports("stem", self._identity("stem", half), lambda p: rt.export(
            stem, [f], ["features"], split.stem_outputs(self.head), p))
        self.onnx_stem = rt.OnnxNet(stem_path)
        rest_path = exports("rest", self._identity("rest", half), lambda p: rt.export(
            rest, split.rest_args(*[stem(g) for g in frames]), split.rest_inputs(self.head),
            ["logits"], p))
        self.onnx_rest = rt.OnnxNet(rest_path)
        got = self.onnx_rest(*split.rest_args(*[self.onnx_stem(g.numpy()) for g in frames]))
        self.check_error["head"] = rt.check([rt.FloatInputs(self.head)(*frames).numpy()], got,
                                            f"{folder}: the head")

    def _fan_batch(self, xb: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """(features float16 on the CPU, heatmaps float32) of one batch of float crops."""
        if self.onnx_fan is not None:
            f, h = self.onnx_fan(xb.numpy())
            f = torch.from_numpy(f)  # float16 from the graph, or float32 for a uint8 head
            return (f if f.dtype == torch.float16 else self._as_trained(f).to(torch.float16)), h
        xb = xb.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            f, h = self.fan_outputs(xb)
        return self._as_trained(f).to("cpu", torch.float16), h.float().cpu().numpy()

    def _as_trained(self, f: torch.Tensor) -> torch.Tensor:
        """Features as the head's training cache held them: a head trained on a uint8 cache
        gets them quantised and dequantised the same way (pipeline.quantise.roundtrip)."""
        return roundtrip(f) if self.spec.feature_dtype is FeatureDtype.UINT8 else f

    def _read_by_head(self, f: torch.Tensor):
        """What the head reads of a batch's features: the features themselves (torch), or its
        stem's outputs, crop by crop (onnx)."""
        if self.onnx_stem is None:
            return f
        return split.Stems(tuple(tuple(self.onnx_stem(f[i:i + 1].numpy())) for i in range(len(f))))

    @torch.inference_mode()
    def features(self, crops: np.ndarray):
        """crops (B, S, S, 3) uint8 -> (what the head reads: features (B, 768, h, w) float16, or
        on onnx their `split.Stems`; landmarks (B, 68, 2) crop pixels); with TTA flip, the
        flipped crops' follow as a second block: 2B items (landmarks are the unflipped crops'
        only)."""
        t0, stem_s = time.perf_counter(), 0.0  # the stem's seconds count as the head's
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)
        n = len(x)
        if self.tta:
            x = torch.cat([x, x.flip(-1)])
        out, heat = [], []
        for i in range(0, len(x), self.batch):
            f, h = self._fan_batch(x[i:i + self.batch].float().div_(PIXEL_SCALE))
            t1 = time.perf_counter()
            out.append(self._read_by_head(f))
            stem_s += time.perf_counter() - t1
            heat.append(h[:max(0, min(len(h), n - i))])
        self.timing["fan"] += time.perf_counter() - t0 - stem_s
        self.timing["head"] += stem_s
        if not out:
            return torch.zeros(0), np.zeros((0, N_LANDMARKS, 2), np.float32)
        hm = np.concatenate(heat)
        pts = landmarks.to_crop(landmarks.decode(hm), hm.shape[-1], self.spec.crop.size)
        return (split.Stems.cat(out) if self.onnx_stem is not None else torch.cat(out)), pts

    def probs_of(self, cols: list[list[torch.Tensor]]) -> np.ndarray:
        """(B, L) probabilities of B items; cols: per head input (t[, t-T, t+T]), each item's
        features() entry (1 crop, or 2 with its flip under TTA). The head runs item by item on the
        features as they are (torch: views of their FAN batch; onnx: each crop's own stem
        arrays): no batch of inputs is copied
        together, and both runtimes' heads ran faster at batch 1 than at 8 (measured, AUNet
        head at 256 px, 2 cores: ONNX Runtime 28.2 against 26.3 items/s, torch 21.1 against
        18.5; the copies of a batch of 8 cost 0.46 s of 10.4 s on single_face.mp4)."""
        return np.concatenate([self.probs(*[col[i] for col in cols]) for i in range(len(cols[0]))])

    @torch.inference_mode()
    def probs(self, f_t: torch.Tensor, f_prev=None, f_next=None) -> np.ndarray:
        """(B, L) probabilities; with TTA flip the inputs hold both halves and the logits of a
        crop and its flip are averaged."""
        t0 = time.perf_counter()
        args = [f_t] if not self.is_temporal else [f_t, f_prev, f_next]
        if self.onnx_rest is not None:  # Stems of frames t, t-T, t+T
            logits = torch.from_numpy(self.onnx_rest(*split.rest_args(*[a.parts for a in args]))[0])
        else:
            logits = self.head(*[a.to(self.device).float() for a in args]).float().cpu()
        if self.tta:
            half = len(logits) // 2
            logits = (logits[:half] + logits[half:]) / 2
        self.timing["head"] += time.perf_counter() - t0
        return torch.sigmoid(logits).numpy()

