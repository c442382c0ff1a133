"""Trace format v1 (DESIGN §6): the manifest model, its validation, and chunk naming."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..config import SELECTIONS
from ..errors import TraceError
from ..units import parse_integer

FORMAT = "timesim-trace"
VERSION = 1
DTYPES = ("float32", "float16", "bfloat16")
# bfloat16 is stored as its uint16 bit pattern (numpy has no bfloat16).
STORAGE = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2")}
KINDS = ("linear", "conv2d")
MAX_DIM = 1 << 24           # rows or cols of one layer matrix
MAX_CELLS = 1 << 32         # rows x cols of one layer matrix
MAX_ITERATIONS = 1 << 40
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def chunk_name(index: int) -> str:
    return f"{index:06d}.npy"


# manifest ``updates``: dense (the user's optimizer applied every gradient), the policy
# SparseUpdate applied (config SELECTIONS), or mixed (some layers or iterations one, some other)
UPDATES = tuple(dict.fromkeys(("dense", *SELECTIONS, "mixed")))


@dataclass(frozen=True)
class LayerInfo:
    """One layer's matrix (rows = k²·C_in inputs, cols = outputs) and, for conv2d, its geometry."""

    name: str
    kind: str
    rows: int
    cols: int
    kernel: tuple[int, int] | None = None
    in_channels: int | None = None
    out_channels: int | None = None
    input_hw: tuple[int, int] | None = None
    output_hw: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None
    input_activity: float | None = None     # fraction of input bits that are 1 (optional)
    pool: tuple[int, int] | None = None     # pooling window after the layer (optional)
    # input vectors per sample (tokens of a sequence, or a conv's output positions): replaces
    # the positions read off output_hw (optional; absent: 1 for linear, H_out·W_out for conv2d)
    vectors_per_sample: int | None = None
    # conv2d groups (optional; absent: 1): a block-diagonal matrix, group g's weights in rows
    # [g·C_in/groups·kh·kw, ...) x cols [g·C_out/groups, ...), every other cell held at 0
    groups: int | None = None

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def weights(self) -> int:
        """The layer's weights (cells off a grouped layer's diagonal blocks excluded)."""
        return self.rows * self.cols // (self.groups or 1)

    def to_dict(self) -> dict[str, Any]:
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class TraceMeta:
    """What manifest.yaml says; also describes synthetic streams."""

    model: str
    source: str
    dataset: str
    batch_size: int
    iterations: int
    chunk_iterations: int
    dtype: str
    layers: tuple[LayerInfo, ...]
    checksums: dict[str, str] = field(default_factory=dict)
    complete: bool = True           # False: a writer checkpoint; the writer was still running
    timing_only: bool = False       # shapes and geometry, no gradient chunks
    skipped: tuple = ()             # [{name, reason, parameters}]: weights not recorded
    left_out: tuple = ()            # [{name, work, macs}]: digital work not timed (attention)
    updates: str = ""               # how training applied the gradients: dense, or the
                                    # SparseUpdate policy's selection ("": not said)

    @property
    def n_chunks(self) -> int:
        return -(-self.iterations // self.chunk_iterations)

    def chunk_len(self, index: int) -> int:
        return min(self.chunk_iterations, self.iterations - index * self.chunk_iterations)

    def to_dict(self) -> dict[str, Any]:
        out = {"format": FORMAT, "version": VERSION, "model": self.model, "source": self.source,
               "dataset": self.dataset, "batch_size": self.batch_size,
               "iterations": self.iterations, "chunk_iterations": self.chunk_iterations,
               "dtype": self.dtype, "layers": [layer.to_dict() for layer in self.layers]}
        if self.checksums:
            out["checksums"] = dict(self.checksums)
        if not self.complete:
            out["complete"] = False
        if self.timing_only:
            out["timing_only"] = True
        if self.skipped:
            out["skipped"] = [dict(d) for d in self.skipped]
        if self.left_out:
            out["left_out"] = [dict(d) for d in self.left_out]
        if self.updates:
            out["updates"] = self.updates
        return out


def _int(value: Any, where: str, lo: int = 1, hi: int = MAX_ITERATIONS) -> int:
    """An integer in the one number syntax of hwconfigs and synth: (units.parse_integer:
    ``64_000``, ``5e6``)."""
    try:
        value = parse_integer(value)
    except ValueError:
        raise TraceError(f"{where}: must be an integer, got {value!r}") from None
    if not lo <= value <= hi:
        raise TraceError(f"{where}: must be in [{lo}, {hi}], got {value}")
    return value


def _pair(value: Any, where: str, lo: int) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TraceError(f"{where}: must be a pair [a, b], got {value!r}")
    return (_int(value[0], where, lo, MAX_DIM), _int(value[1], where, lo, MAX_DIM))


def _layer(raw: Any, where: str) -> LayerInfo:
    if not isinstance(raw, dict):
        raise TraceError(f"{where}: must be a mapping with name, kind, rows, cols, got {raw!r}")
    allowed = {f for f in LayerInfo.__dataclass_fields__}
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise TraceError(f"{where}: unknown key {unknown[0]!r}; expected {', '.join(allowed)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise TraceError(f"{where}.name: must be letters, digits, '_', '.', '-' (not starting "
                         f"with '.' or '-'), got {name!r}")
    where = f"{where} ({name})"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise TraceError(f"{where}.kind: must be one of {'|'.join(KINDS)}, got {kind!r}")
    rows = _int(raw.get("rows"), f"{where}.rows", 1, MAX_DIM)
    cols = _int(raw.get("cols"), f"{where}.cols", 1, MAX_DIM)
    if rows * cols > MAX_CELLS:
        raise TraceError(f"{where}: rows x cols = {rows * cols} exceeds {MAX_CELLS}")
    geo: dict[str, Any] = {}
    if kind == "conv2d":
        for key in ("kernel", "in_channels", "out_channels"):
            if key not in raw:
                raise TraceError(f"{where}.{key}: missing (required for conv2d)")
        geo["kernel"] = _pair(raw["kernel"], f"{where}.kernel", 1)
        geo["in_channels"] = _int(raw["in_channels"], f"{where}.in_channels", 1, MAX_DIM)
        geo["out_channels"] = _int(raw["out_channels"], f"{where}.out_channels", 1, MAX_DIM)
        kh, kw = geo["kernel"]
        if rows != geo["in_channels"] * kh * kw or cols != geo["out_channels"]:
            raise TraceError(f"{where}: rows x cols = {rows} x {cols} does not match "
                             f"in_channels*kh*kw x out_channels = "
                             f"{geo['in_channels'] * kh * kw} x {geo['out_channels']}")
        if raw.get("output_hw") is None:
            raise TraceError(f"{where}.output_hw: missing (required for conv2d: the number of "
                             f"output positions sets the layer's input vectors)")
        for key, lo in (("input_hw", 1), ("output_hw", 1), ("stride", 1), ("padding", 0)):
            if raw.get(key) is not None:
                geo[key] = _pair(raw[key], f"{where}.{key}", lo)
        if raw.get("groups") is not None:
            g = geo["groups"] = _int(raw["groups"], f"{where}.groups", 1, MAX_DIM)
            if geo["in_channels"] % g or geo["out_channels"] % g:
                raise TraceError(f"{where}.groups: {g} must divide in_channels "
                                 f"{geo['in_channels']} and out_channels {geo['out_channels']}")
    else:
        if raw.get("groups") is not None:
            raise TraceError(f"{where}.groups: only a conv2d layer has groups")
        for key in ("input_hw", "output_hw"):
            if raw.get(key) is not None:
                geo[key] = _pair(raw[key], f"{where}.{key}", 1)
    if raw.get("pool") is not None:
        geo["pool"] = _pair(raw["pool"], f"{where}.pool", 1)
    if raw.get("vectors_per_sample") is not None:
        geo["vectors_per_sample"] = _int(raw["vectors_per_sample"], f"{where}.vectors_per_sample",
                                         1, MAX_ITERATIONS)
    act = raw.get("input_activity")
    if act is not None:
        if isinstance(act, bool) or not isinstance(act, (int, float)) or not 0 <= act <= 1:
            raise TraceError(f"{where}.input_activity: must be a fraction in [0, 1], got {act!r}")
        geo["input_activity"] = float(act)
    return LayerInfo(name=name, kind=kind, rows=rows, cols=cols, **geo)


def _entries(raw: dict, key: str, text: set, counts: set, where: str) -> tuple:
    """A list of {text fields, integer count fields} (``skipped``, ``left_out``)."""
    items = raw.get(key) or []
    want = "{" + ", ".join(sorted(text) + sorted(counts)) + "}"
    if not isinstance(items, list):
        raise TraceError(f"{where}: {key}: must be a list of {want}")
    for i, d in enumerate(items):
        if (not isinstance(d, dict) or not set(d) <= text | counts
                or not all(isinstance(d.get(k, ""), str) for k in text)):
            raise TraceError(f"{where}: {key}[{i}]: must be a mapping {want}, got {d!r}")
        for k in counts & set(d):
            _int(d[k], f"{where}: {key}[{i}].{k}", 0, 1 << 62)
    return tuple(dict(d) for d in items)


def parse_manifest(raw: Any, where: str) -> TraceMeta:
    """Validate a parsed manifest.yaml; every problem names the key."""
    if not isinstance(raw, dict):
        raise TraceError(f"{where}: manifest must be a YAML mapping, got {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise TraceError(f"{where}: format: must be {FORMAT!r}, got {raw.get('format')!r}")
    if raw.get("version") != VERSION or isinstance(raw.get("version"), bool):
        raise TraceError(f"{where}: version: only version {VERSION} is known, "
                         f"got {raw.get('version')!r}")
    known = {"format", "version", "model", "source", "dataset", "batch_size", "iterations",
             "chunk_iterations", "dtype", "layers", "checksums", "complete", "timing_only",
             "skipped", "left_out", "updates"}
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise TraceError(f"{where}: {unknown[0]}: unknown key")
    for key in ("model", "source", "dataset", "updates"):
        if not isinstance(raw.get(key, ""), str):
            raise TraceError(f"{where}: {key}: must be a string, got {raw.get(key)!r}")
    batch = raw.get("batch_size", 0)
    batch = _int(batch, f"{where}: batch_size", 0) if batch is not None else 0
    iterations = _int(raw.get("iterations"), f"{where}: iterations")
    chunk = _int(raw.get("chunk_iterations"), f"{where}: chunk_iterations")
    dtype = raw.get("dtype")
    if dtype not in DTYPES:
        raise TraceError(f"{where}: dtype: must be one of {'|'.join(DTYPES)}, got {dtype!r}")
    layers_raw = raw.get("layers")
    if not isinstance(layers_raw, list) or not layers_raw:
        raise TraceError(f"{where}: layers: must be a non-empty list")
    layers = tuple(_layer(item, f"{where}: layers[{i}]") for i, item in enumerate(layers_raw))
    names = [layer.name for layer in layers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TraceError(f"{where}: layers: duplicate layer name {dup[0]!r}")
    checksums = raw.get("checksums") or {}
    if not isinstance(checksums, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in checksums.items()):
        raise TraceError(f"{where}: checksums: must map 'layer/NNNNNN.npy' to 'crc32:xxxxxxxx'")
    flags = {}
    for key in ("complete", "timing_only"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise TraceError(f"{where}: {key}: must be true or false, got {raw[key]!r}")
            flags[key] = raw[key]
    flags["skipped"] = _entries(raw, "skipped", {"name", "reason"}, {"parameters"}, where)
    flags["left_out"] = _entries(raw, "left_out", {"name", "work", "layer"}, {"macs"}, where)
    updates = raw.get("updates") or ""
    if updates and updates not in UPDATES:
        raise TraceError(f"{where}: updates: must be one of {'|'.join(UPDATES)} (how the "
                         f"recorded training applied its gradients), got {updates!r}")
    flags["updates"] = updates
    return TraceMeta(model=raw.get("model") or "", source=raw.get("source") or "",
                     dataset=raw.get("dataset") or "", batch_size=batch, iterations=iterations,
                     chunk_iterations=chunk, dtype=dtype, layers=layers, checksums=checksums,
                     **flags)
