"""Where a bundle's FAN and head run: torch, or ONNX Runtime on exports checked against torch.

`resolve(asked, device)` turns `--runtime auto|torch|onnx` into torch or onnx (auto: ONNX Runtime
where it imports and the device is the CPU). `FanOutputs` is the FAN with its landmark heatmaps
as a second output (what is exported, with float16 features, and what the torch path runs);
`FloatInputs` a head taking float16 features (its export). `OnnxNet` is one ONNX Runtime session
set for this kind of machine: one intra-op thread pool of as many threads as the cores this
process may use, shared by all sessions, graph optimisation level ALL, sequential execution,
ONNX Runtime's CPU memory arena on (`MEMORY_ARENA`: faster, more memory). `export(module,
inputs, path)` writes an ONNX file (dynamic batch axis; the caller picks the path and writes it
atomically: the cache is the store's, store/onnx_cache.py). `check(reference, got, what)`
refuses an export whose outputs differ from torch's by more than `CHECK_TOLERANCE` of the
outputs' scale.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline.config import Runtime
from pipeline.errors import UserError

OPSET = 17  # ONNX opset of the exports (TorchScript-based exporter)
EXPORT_VERSION = 3  # bump when what is exported changes (outputs, names, axes, the head split)
# An export is refused when max |onnx - torch| > CHECK_TOLERANCE * max(1, max |torch|): float32
# reorderings of a 27.8 GFLOP network differ by ~1e-6 relative; a wrong graph by far more.
CHECK_TOLERANCE = 1e-4
PROBE_SEED = 20  # the probe crops the exports are checked on
F16_ROUNDING = 2.0 ** -11  # float16's rounding error relative to the value (half its epsilon)


class RuntimeUnavailable(UserError):
    """The ONNX runtime cannot be used for this bundle (missing, or an export that disagrees)."""


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def resolve(asked: Runtime, device: str) -> Runtime:
    """torch or onnx for `--runtime`; onnx asked where it cannot run is one line saying why."""
    asked = Runtime(asked)
    cpu = torch.device(device).type == "cpu"
    if asked is Runtime.AUTO:
        return Runtime.ONNX if cpu and onnxruntime_version() else Runtime.TORCH
    if asked is Runtime.ONNX and not cpu:
        raise RuntimeUnavailable(f"--runtime onnx runs on the CPU only; with --device {device} use "
                            "--runtime torch (or auto)")
    if asked is Runtime.ONNX and onnxruntime_version() is None:
        raise RuntimeUnavailable("--runtime onnx: onnxruntime is not installed (pip install "
                            "onnxruntime); --runtime torch works")
    return asked


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


class FanOutputs(torch.nn.Module):
    """x (B, 3, S, S) in [0, 1] -> (features (B, 768, S/4, S/4), heatmaps (B, 68, S/4, S/4));
    half: the features as float16 (what the head's training cache held), cast in the graph."""

    def __init__(self, fan: torch.nn.Module, half: bool = False):
        super().__init__()
        self.fan, self.half = fan, half

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.fan.taps(x)
        a = t["attention"]
        f = torch.cat([t["F_l"], t["H1"] * a, t["H2"] * a], dim=1)
        return (f.half() if self.half else f), t["heatmaps"]


class FloatInputs(torch.nn.Module):
    """A head that takes float16 features and casts them to float32 in its graph: the float16
    features the FAN's export gives go in as they are, with no copy or conversion in Python."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.head(*[x.float() for x in xs])


def export(module: torch.nn.Module, inputs: Sequence[torch.Tensor], names: Sequence[str],
           outputs: Sequence[str], path: Path) -> None:
    """Write `module` as ONNX to `path`, batch axis dynamic for every input and output."""
    import warnings

    axes = {n: {0: "batch"} for n in [*names, *outputs]}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), tuple(inputs), str(path), input_names=list(names),
                          output_names=list(outputs), dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)


# ONNX Runtime's CPU memory arena. An arena per session keeps that session's largest plan for
# the process's life, so the FAN's and the head's add up in peak memory; without it every run
# page-faults its buffers in again, which cost more than a third of the head's time (measured,
# single_face.mp4, crop 256: 4.41 against 3.65 frames/s, torch 3.07; peak memory 3568 MB with
# it, 2293 MB without, torch 1997 MB; docs/predict.md, "Peak memory").
MEMORY_ARENA = True
_POOL: list[int] = []  # the process-wide thread pool's size, once set


def _global_pool() -> bool:
    """One intra-op pool shared by every session of the process (set before the first one):
    with a pool per session, the FAN's spinning threads slow the head's and back (measured,
    2 cores, batch 8: FAN 1.41 s and head 0.73 s alternating with two pools, 1.17 s and 0.46 s
    with one). False where ONNX Runtime was already set up without it."""
    import onnxruntime as ort

    if not _POOL:
        try:
            ort.set_global_thread_pool_sizes(cores(), 1)
            _POOL.append(cores())
        except Exception:  # an environment made earlier by other code: per-session pools
            _POOL.append(0)
    return _POOL[0] > 0


class OnnxNet:
    """One ONNX Runtime session on the CPU: `net(*arrays) -> list of arrays` (float32)."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads is None and _global_pool():
            opts.use_per_session_threads = False
        else:
            opts.intra_op_num_threads = threads or cores()
            opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = MEMORY_ARENA
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # a cached file that is not a model: say which
            raise RuntimeUnavailable(f"{path}: ONNX Runtime cannot load it ({e}); delete it to export "
                                "again") from None
        inputs = self.session.get_inputs()
        self.names = [i.name for i in inputs]
        self.dtypes = [_DTYPES[i.type] for i in inputs]

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Outputs for inputs given in any float type (cast to what the graph takes, float32 or
        float16; no copy where they are already that and contiguous)."""
        feed = {n: np.ascontiguousarray(a, dtype=d) for n, d, a in zip(self.names, self.dtypes, arrays)}
        return self.session.run(None, feed)


_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def probe_crops(n: int, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8: smooth random images (a face's range of values, not noise)."""
    rng = np.random.default_rng(PROBE_SEED)
    small = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(small).permute(0, 3, 1, 2), size=size,
                                         mode="bilinear", align_corners=False)
    return up.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()


def check(reference: Sequence[np.ndarray], got: Sequence[np.ndarray], what: str) -> float:
    """Largest |got - reference| relative to the outputs' scale; RuntimeUnavailable past tolerance.
    A float16 output is checked against torch's float32 beyond its own rounding (half a float16
    step, 2**-11 of each value: float32 reorderings move a value across a rounding boundary)."""
    worst = 0.0
    for r, g in zip(reference, got):
        scale = max(1.0, float(np.abs(r).max()))
        r = np.asarray(r, np.float64)
        rounding = np.abs(r) * F16_ROUNDING if g.dtype == np.float16 else 0.0
        d = np.maximum(np.abs(np.asarray(g, np.float64) - r) - rounding, 0.0)
        worst = max(worst, float(d.max()) / scale if np.isfinite(d).all() else float("inf"))
    if not worst <= CHECK_TOLERANCE:
        raise RuntimeUnavailable(f"{what}: the ONNX export's outputs differ from torch's by {worst:.2e} "
                            f"of their scale (tolerance {CHECK_TOLERANCE:g}); run with --runtime "
                            "torch, and report the bundle, torch and onnxruntime versions")
    return worst
