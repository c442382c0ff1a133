"""Trace writer: never leaves a half-written trace that looks valid.

Each chunk is written under a temporary name and renamed when complete; its CRC-32 goes into the
manifest, which is written last (also via a rename). A directory without manifest.yaml is not a
trace, so an interrupted writer leaves nothing that ``timesim trace validate`` accepts.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from ..errors import TraceError
from .format import DTYPES, STORAGE, LayerInfo, TraceMeta, chunk_name, parse_manifest
from .reader import crc32_file


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) and return the uint16 bit patterns."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    out = rounded.astype(np.uint16)
    out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)   # keep NaNs quiet NaNs
    return out


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """float arrays -> the on-disk representation of ``dtype``."""
    if dtype == "bfloat16":
        if x.dtype == np.uint16:
            return x
        return float32_to_bfloat16_bits(np.asarray(x, dtype=np.float32))
    return np.asarray(x, dtype=STORAGE[dtype])


def check_chunk_iterations(value) -> int:
    """Iterations per chunk file: an integer >= 1 (TraceError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TraceError(f"chunk_iterations: must be an integer >= 1 (iterations per chunk "
                         f"file), got {value!r}")
    return int(value)


class TraceWriter:
    """Write a trace iteration by iteration (``append``) or chunk by chunk (``append_chunk``).

    Use as a context manager: the manifest is written only when the block ends without error.
    """

    def __init__(self, path: str | Path, layers: Sequence[LayerInfo], *, model: str,
                 source: str, dataset: str = "", batch_size: int = 0, dtype: str = "float32",
                 chunk_iterations: int = 64, overwrite: bool = False,
                 checkpoint: bool = False):
        if dtype not in DTYPES:
            raise TraceError(f"dtype: must be one of {'|'.join(DTYPES)}, got {dtype!r}")
        check_chunk_iterations(chunk_iterations)
        self.path = Path(path)
        self.layers = tuple(layers)
        self.info = dict(model=model, source=source, dataset=dataset, batch_size=batch_size)
        self.dtype = dtype
        self.chunk_iterations = chunk_iterations
        self._prepare_dir(overwrite)
        # a grouped layer's buffer starts at 0: its cells off the diagonal blocks stay 0, so
        # a recorder fills only the blocks in place (``slot``)
        self._buffers = {layer.name: (np.zeros if (layer.groups or 1) > 1 else np.empty)(
            (chunk_iterations, layer.rows, layer.cols), dtype=STORAGE[dtype])
            for layer in self.layers}
        self._fill = 0
        self._chunks = 0
        self._iterations = 0
        self._checksums: dict[str, str] = {}
        self._closed = False
        self._short = False             # a short chunk was written: it must be the last
        self.updates = ""                       # TraceMeta.updates (TraceRecorder sets it)
        self.skipped: tuple[dict, ...] = ()     # weights not recorded, with why
        self.left_out: tuple[dict, ...] = ()    # digital work not timed (attention products)
        # checkpoint: after every chunk, a manifest marked `complete: false` that covers the
        # chunks on disk, so a killed recording keeps its finished chunks (`trace seal`)
        self.checkpoint = checkpoint

    def _prepare_dir(self, overwrite: bool) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise TraceError(f"{p}: exists and is not a directory")
        if p.is_dir() and any(p.iterdir()):
            if not overwrite:
                raise TraceError(f"{p}: directory exists and is not empty; choose another "
                                 f"output or remove it")
            if not (p / "manifest.yaml").is_file():
                # overwrite replaces a trace, never an arbitrary folder
                raise TraceError(f"{p}: not a trace directory (no manifest.yaml); refusing to "
                                 f"empty it, choose another output")
            # Drop the manifest first so the old trace stops being valid before chunks change.
            (p / "manifest.yaml").unlink(missing_ok=True)
            for child in p.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        try:
            p.mkdir(parents=True, exist_ok=True)
            for layer in self.layers:
                (p / layer.name).mkdir(exist_ok=True)
        except OSError as exc:
            raise TraceError(f"{p}: cannot create trace directory: {exc}") from None

    def _check_open(self) -> None:
        if self._short:
            raise TraceError(f"{self.path}: a chunk of fewer than chunk_iterations = "
                             f"{self.chunk_iterations} iterations was already written; only the "
                             f"last chunk may be short")

    def slot(self, name: str) -> np.ndarray:
        """The (rows, cols) storage of layer ``name`` in the next ``append``, to be filled in
        place (values in the storage dtype: ``to_storage``); pass its name in ``filled``."""
        self._check_open()
        return self._buffers[name][self._fill]

    def append(self, grads: Mapping[str, np.ndarray], filled=()) -> None:
        """Add one iteration: ``grads[name]`` is the (rows, cols) gradient matrix of each layer
        (or the layer is in ``filled``: written in place through ``slot``)."""
        self._check_open()
        for layer in self.layers:
            if layer.name in filled:
                continue
            g = grads.get(layer.name)
            if g is None:
                raise TraceError(f"layer {layer.name}: no gradient given for this iteration")
            g = np.asarray(g)
            if g.shape != (layer.rows, layer.cols):
                raise TraceError(f"layer {layer.name}: gradient shape {g.shape}, expected "
                                 f"{(layer.rows, layer.cols)}")
            self._buffers[layer.name][self._fill] = to_storage(g, self.dtype)
        self._fill += 1
        if self._fill == self.chunk_iterations:
            self._flush()

    def append_chunk(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Add a block of iterations (n ≤ chunk_iterations, only when the buffer is empty)."""
        if self._fill:
            raise TraceError("append_chunk after a partial append: buffer not empty")
        self._check_open()
        n = None
        for layer in self.layers:
            a = np.asarray(arrays[layer.name])
            if n is None:
                n = a.shape[0]
            if a.shape != (n, layer.rows, layer.cols) or n > self.chunk_iterations:
                raise TraceError(f"layer {layer.name}: chunk shape {a.shape} invalid")
            self._buffers[layer.name][:n] = to_storage(a, self.dtype)
        self._fill = n or 0
        short = 0 < self._fill < self.chunk_iterations
        self._flush()
        self._short = short

    def _flush(self) -> None:
        if not self._fill:
            return
        for layer in self.layers:
            final = self.path / layer.name / chunk_name(self._chunks)
            tmp = final.with_name(final.name + ".tmp")
            with open(tmp, "wb") as fh:
                np.lib.format.write_array(fh, self._buffers[layer.name][:self._fill],
                                          allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            self._checksums[f"{layer.name}/{final.name}"] = crc32_file(final)
        self._iterations += self._fill
        self._chunks += 1
        self._fill = 0
        if self.checkpoint:
            self._write_manifest(complete=False)

    @property
    def iterations(self) -> int:
        return self._iterations + self._fill

    def close(self) -> TraceMeta:
        """Flush the last chunk and write the manifest; the trace is valid from here on."""
        if self._closed:
            raise TraceError(f"{self.path}: writer already closed")
        self._flush()
        if self._iterations == 0:
            raise TraceError(f"{self.path}: no iterations written")
        meta = self._write_manifest(complete=True)
        self._closed = True
        return meta

    def abandon(self) -> None:
        """After a failure: a writer that has written no chunk removes the (empty) layer
        folders it made, and the folder if that leaves it empty, so the same path can be
        recorded again; one that has keeps its chunks and checkpointed manifest (``timesim
        trace seal``)."""
        if self._chunks or self._closed:
            return
        for layer in self.layers:
            try:
                (self.path / layer.name).rmdir()        # only an empty folder goes
            except OSError:
                pass
        try:
            self.path.rmdir()
        except OSError:
            pass
        self._closed = True

    def _write_manifest(self, complete: bool) -> TraceMeta:
        meta = TraceMeta(iterations=self._iterations, chunk_iterations=self.chunk_iterations,
                         dtype=self.dtype, layers=self.layers, checksums=dict(self._checksums),
                         skipped=tuple(self.skipped), left_out=tuple(self.left_out),
                         complete=complete, updates=self.updates, **self.info)
        doc = meta.to_dict()
        parse_manifest(doc, str(self.path / "manifest.yaml"))
        tmp = self.path / "manifest.yaml.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path / "manifest.yaml")
        return meta

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._closed:
            self.close()


def seal(path: str | Path) -> TraceMeta:
    """Turn the checkpoint of an interrupted writer into a complete trace of its whole chunks."""
    from .reader import TraceDir

    trace = TraceDir(path, allow_incomplete=True)
    if trace.meta.complete:
        raise TraceError(f"{path}: already complete; nothing to seal")
    trace.validate()
    meta = TraceMeta(**{**trace.meta.__dict__, "complete": True})
    tmp = Path(path) / "manifest.yaml.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(meta.to_dict(), fh, sort_keys=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, Path(path) / "manifest.yaml")
    return meta
