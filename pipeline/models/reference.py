"""The paper's released AUNet head files, read into our `TDNHead` by position.

The reference repository (github.com/jingyang2017/AU-Net) ships `checkpoints/bp4d_split{1,2,3}.pth`
(12 AUs), `checkpoints/disfa_split{1,2,3}.pth` (8 AUs) and `checkpoints/cross_model.pth` (15 AUs).
Each is the bare state dict of its head module, 103 entries in the head's module order:

  conv1x1          Conv2d 768->256, 1x1                 (our reduce)
  ConvNet_1.0      ConvBlock 256->256 (1 is a max-pool) (our stage1.0)
  ConvNet_diff.0   ConvBlock 256->256                   (our stage1_diff.0)
  ConvNet_2.{0,2,4} three ConvBlocks (odd: max-pools)   (our body.{0,1,2}.0)
  predictor.0/1/3  Linear 256->128, BatchNorm1d, Linear 128->n (2 is a ReLU) (our classifier)
  conv1x1_diff     Conv2d 1536->256, 1x1, last          (our reduce_diff)

The reference's own test script ignores key names and copies tensors by position, because its
older training code named the same layers differently (`conv1x1_input_emo_2`, `emo_net_2`,
`emo_fc_2`). Names in a released file are therefore not guaranteed; order and shapes are. We do
the same, but check every shape and refuse a file that does not fit, saying where.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from pipeline.errors import UserError
from pipeline.models.heads import TDNHead

# The reference's test script builds its head with alpha=0.9, beta=0.1 (the class defaults are
# 0.5/0.5, but the released models were evaluated with these).
RELEASED_ALPHA = 0.9
RELEASED_BETA = 0.1
RELEASED_ENTRIES = 103  # tensors in a released head file (parameters, BN buffers, counters)
MODULE_PREFIX = "module."  # added by nn.DataParallel when a wrapped model is saved
MAX_LISTED = 3  # mismatches named in an error message

# (released module, our TDNHead module) in the released file's order. The released head is
# ordered by its own __init__, which registers the 1536->256 difference conv last.
RELEASED_MODULES: tuple[tuple[str, str], ...] = (
    ("conv1x1", "reduce"),
    ("ConvNet_1.0", "stage1.0"),
    ("ConvNet_diff.0", "stage1_diff.0"),
    ("ConvNet_2.0", "body.0.0"),
    ("ConvNet_2.2", "body.1.0"),
    ("ConvNet_2.4", "body.2.0"),
    ("predictor.0", "classifier.fc1"),
    ("predictor.1", "classifier.bn"),
    ("predictor.3", "classifier.fc2"),
    ("conv1x1_diff", "reduce_diff"),
)


class ReferenceFormatError(UserError, ValueError):
    """A file or state dict that is not a released AUNet head (a ValueError: bad user input)."""


def _layout() -> tuple[tuple[str, str], ...]:
    """(released key, our key) for every entry, from our modules' own state-dict order.

    Built on the meta device: module structure only, no memory and no initialisation cost.
    """
    with torch.device("meta"):
        head = TDNHead(n_aus=1)
    pairs = []
    for released, ours in RELEASED_MODULES:
        for name in head.get_submodule(ours).state_dict():  # e.g. bn1.weight, ..., conv3.weight
            pairs.append((f"{released}.{name}", f"{ours}.{name}"))
    if len(pairs) != RELEASED_ENTRIES or {o for _, o in pairs} != set(head.state_dict()):
        raise AssertionError("RELEASED_MODULES does not cover TDNHead exactly")  # a code bug
    return tuple(pairs)


RELEASED_LAYOUT: tuple[tuple[str, str], ...] = _layout()  # 103 x (released key, our key)
# Positions of the final Linear (n_AU, 128) and its bias (n_AU,): the file says how many AUs.
_FC2 = tuple([ours for _, ours in RELEASED_LAYOUT].index(f"classifier.fc2.{n}")
             for n in ("weight", "bias"))
N_AU = None  # in an expected shape: any number of AUs (>= 1), while it is not yet known


def released_state_dict(head: TDNHead) -> "OrderedDict[str, torch.Tensor]":
    """`head`'s state in exactly the released names and order (tensors shared, as state_dict)."""
    if not isinstance(head, TDNHead):
        raise TypeError("only the AUNet (TDN) head has a released layout, not "
                        f"{type(head).__name__}")
    own = head.state_dict()
    return OrderedDict((released, own[ours]) for released, ours in RELEASED_LAYOUT)


def _expected_shapes(n_aus: Optional[int]) -> list[tuple]:
    """Shape per released position; N_AU for the AU dimension while n_aus is unknown."""
    with torch.device("meta"):  # shapes only
        own = TDNHead(1 if n_aus is None else n_aus).state_dict()
    shapes = [tuple(own[ours].shape) for _, ours in RELEASED_LAYOUT]
    if n_aus is None:
        for i in _FC2:
            shapes[i] = (N_AU,) + shapes[i][1:]
    return shapes


def _fits(t: Any, shape: tuple) -> bool:
    return (isinstance(t, torch.Tensor) and t.dim() == len(shape)
            and all(s == g if s is not N_AU else g >= 1 for s, g in zip(shape, t.shape)))


def _show(shape: tuple) -> str:
    """As str(tuple), with n_AU for an open AU dimension: (256, 768, 1, 1), (256,), (n_AU, 128)."""
    dims = ["n_AU" if s is N_AU else str(s) for s in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _mismatches(items: list[tuple[str, Any]], shapes: list[tuple]) -> list[str]:
    """'position i: file key (shape), expected released key (shape)' for each misfit position."""
    out = []
    for i in range(max(len(items), len(RELEASED_LAYOUT))):
        got = items[i] if i < len(items) else None
        want = RELEASED_LAYOUT[i] if i < len(RELEASED_LAYOUT) else None
        if got and want and _fits(got[1], shapes[i]):
            continue
        file_side = "file has no entry" if got is None else (
            f"file '{got[0]}' " + (_show(tuple(got[1].shape)) if isinstance(got[1], torch.Tensor)
                                   else type(got[1]).__name__))
        want_side = (f"expected '{want[0]}' {_show(shapes[i])} (our {want[1]})" if want
                     else "expected no entry")
        out.append(f"position {i}: {file_side}, {want_side}")
    return out


def _refuse(source: str, n_items: int, problems: list[str]) -> ReferenceFormatError:
    count = ("" if n_items == RELEASED_ENTRIES
             else f"it has {n_items} entries, expected {RELEASED_ENTRIES}; ")
    shown = "; ".join(problems[:MAX_LISTED])
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    return ReferenceFormatError(
        f"{source} is not a released AUNet head: {count}first mismatches: {shown}{more}. "
        f"Released head files hold {RELEASED_ENTRIES} tensors in the order conv1x1, ConvNet_1.0, "
        f"ConvNet_diff.0, ConvNet_2.{{0,2,4}}, predictor.{{0,1,3}}, conv1x1_diff and are read by "
        f"position (names are ignored); this project's own head checkpoints use our module names "
        f"and load with load_state_dict instead.")


def load_released_head(state: Mapping[str, torch.Tensor], n_aus: Optional[int] = None, *,
                       source: str = "state dict") -> TDNHead:
    """A TDNHead (eval mode, a=0.9, b=0.1) holding a released head's tensors, copied by position.

    `n_aus` is read from the final Linear when not given. Every entry's shape is checked; any
    misfit (or an entry count other than 103) raises ReferenceFormatError naming the first
    mismatching positions with the file's key and shape and the expected key and shape.
    """
    if not isinstance(state, Mapping):
        raise ReferenceFormatError(f"{source}: expected a mapping of names to tensors, got "
                                   f"{type(state).__name__}")
    if n_aus is not None and n_aus < 1:
        raise ValueError(f"n_aus must be at least 1, got {n_aus}")
    items = list(state.items())  # position i = i-th entry as saved (dicts keep insertion order)
    if n_aus is None:  # check with the AU dimension open, then read it from the final Linear
        problems = _mismatches(items, _expected_shapes(None))
        if problems:
            raise _refuse(source, len(items), problems)
        n_aus = int(items[_FC2[0]][1].shape[0])
    problems = _mismatches(items, _expected_shapes(n_aus))  # weight and bias agree on n_aus
    if problems:
        raise _refuse(source, len(items), problems)
    head = TDNHead(n_aus, a=RELEASED_ALPHA, b=RELEASED_BETA)
    # copy_ into our tensors: a float16/float64 file becomes the head's float32; counters stay int
    head.load_state_dict({ours: items[i][1] for i, (_, ours) in enumerate(RELEASED_LAYOUT)},
                         strict=True)
    return head.eval()


def read_released_file(path: Path | str) -> "OrderedDict[str, torch.Tensor]":
    """The ordered tensors of a head file: a bare state dict, {'state_dict': ...}, or keys
    prefixed 'module.'. Read with weights_only=True: no arbitrary objects are unpickled."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceFormatError(f"released head file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a usable head file"
        raise ReferenceFormatError(f"{path}: cannot read as a torch state dict: {e}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        what = type(obj).__name__
    elif not obj:
        what = "an empty mapping"
    elif not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        what = "a mapping with non-tensor values"
    else:
        what = None
    if what is not None:
        raise ReferenceFormatError(f"{path}: not a head state dict (expected a non-empty mapping "
                                   f"of names to tensors, or a dict with 'state_dict'); got {what}")
    return OrderedDict((k[len(MODULE_PREFIX):] if k.startswith(MODULE_PREFIX) else k, v)
                       for k, v in obj.items())


def load_released_file(path: Path | str, n_aus: Optional[int] = None) -> TDNHead:
    """read_released_file + load_released_head, errors naming the file."""
    return load_released_head(read_released_file(path), n_aus, source=str(path))
