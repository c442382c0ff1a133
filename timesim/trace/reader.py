"""Streaming reader of trace directories: one memory-mapped chunk per layer at a time."""

from __future__ import annotations

import io
import mmap
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .. import yamlio
from ..errors import TraceError
from ..kernels.crc import crc32
from .format import STORAGE, TraceMeta, chunk_name, parse_manifest


@dataclass
class Chunk:
    """Iterations ``t0 .. t0+n-1`` of every layer, in storage dtype, shape (n, rows, cols)."""

    index: int
    t0: int
    n: int
    arrays: Mapping[str, np.ndarray]     # a dict, or checked as used (``_CheckedChunk``)


class _CheckedChunk(Mapping):
    """One chunk's layers by name, each file checked (checksum, header, shape) and mapped
    when its array is first asked for; a bad file raises the reader's TraceError there."""

    def __init__(self, trace: TraceDir, index: int, indices: list[int]):
        self._trace, self._index = trace, index
        self._where = {trace.meta.layers[i].name: i for i in indices}
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = self._trace.load_chunk(self._where[name], self._index)
        return arr

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _check_rest(arrays: Mapping) -> None:
    """Once the caller is done with a chunk: check the layers it did not use (iterating a
    trace checks every file, whatever the caller read)."""
    if isinstance(arrays, _CheckedChunk):
        for name in arrays:
            arrays[name]


def _checked_array(path: Path, want: str, where: str) -> np.ndarray:
    """A .npy chunk mapped once, its pages populated in one call (the checksum reads every
    page anyway), checked against ``want`` (crc32:…), then viewed as its array (read-only;
    the mapping lives as long as the array). One mapping instead of one for the checksum and
    one for the array: half the page faults, which the threads of a replay take in turn."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        mm = _mapped(fh) if size else b""
    got = f"crc32:{crc32(mm):08x}"
    if got != want:
        raise TraceError(f"{where}: checksum mismatch (manifest {want}, file {got}): the "
                         f"chunk is corrupted")
    head = io.BytesIO(mm[:min(size, 1 << 16)])
    version = np.lib.format.read_magic(head)
    shape, fortran, dtype = (np.lib.format.read_array_header_1_0(head) if version == (1, 0)
                             else np.lib.format.read_array_header_2_0(head))
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed (pickled data)")
    count = int(np.prod(shape, dtype=np.int64))
    if head.tell() + count * dtype.itemsize != size:
        raise ValueError(f"{size} bytes, expected {head.tell() + count * dtype.itemsize} for "
                         f"{dtype} {shape}")
    arr = np.frombuffer(mm, dtype=dtype, count=count, offset=head.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def _mapped(fh) -> mmap.mmap:
    """A read-only mapping of the whole open file, its pages populated in one call where
    the platform can (MAP_POPULATE: a checksum reads every page anyway)."""
    if hasattr(mmap, "PROT_READ"):
        return mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ,
                         flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def crc32_file(path: Path) -> str:
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return f"crc32:{crc32(b''):08x}"
        with _mapped(fh) as mm:
            return f"crc32:{crc32(mm):08x}"


def read_manifest(path: Path) -> TraceMeta:
    mpath = path / "manifest.yaml"
    try:
        text = mpath.read_text(encoding="utf-8")
    except FileNotFoundError:
        if any(path.iterdir()):
            raise TraceError(f"{path}: incomplete trace: no manifest.yaml (the writer did not "
                             f"finish; chunks without a manifest are not a trace)") from None
        raise TraceError(f"{path}: not a trace: no manifest.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{mpath}: cannot read: {exc}") from None
    try:
        raw = yamlio.load(text)
    except yamlio.DuplicateKeyError as exc:
        raise TraceError(f"{mpath}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise TraceError(f"{mpath}: invalid YAML: {str(exc).splitlines()[0]}") from None
    except (ValueError, RecursionError, OverflowError) as exc:   # e.g. a date 2001-13-45
        raise TraceError(f"{mpath}: invalid YAML: {exc}") from None
    return parse_manifest(raw, str(mpath))


class TraceDir:
    """A trace directory (DESIGN §6). ``chunks()`` streams it; memory does not grow with length."""

    def __init__(self, path: str | Path, allow_incomplete: bool = False):
        path = Path(path)
        try:
            resolved = path.resolve(strict=True)
        except FileNotFoundError:
            raise TraceError(f"{path}: no such trace directory") from None
        except (OSError, RuntimeError) as exc:
            raise TraceError(f"{path}: cannot resolve trace path: {exc}") from None
        if not resolved.is_dir():
            raise TraceError(f"{path}: not a directory; a trace is a directory with "
                             f"manifest.yaml")
        self.path = path
        self.meta = read_manifest(path)
        if not self.meta.complete and not allow_incomplete:
            raise TraceError(
                f"{path}: incomplete trace: the writer stopped after {self.meta.iterations} "
                f"iterations ({self.meta.n_chunks} complete chunks); `timesim trace seal "
                f"{path}` keeps them as a trace")

    @property
    def label(self) -> str:
        return str(self.path)

    def chunk_path(self, layer: str, index: int) -> Path:
        return self.path / layer / chunk_name(index)

    def load_chunk(self, layer_index: int, index: int, verify: bool = True) -> np.ndarray:
        """Memory-map one chunk of one layer after checking header, size and checksum."""
        meta = self.meta
        layer = meta.layers[layer_index]
        path = self.chunk_path(layer.name, index)
        rel = f"{layer.name}/{chunk_name(index)}"
        where = f"{self.path}: layer {layer.name}: chunk {rel}"
        if not path.is_file():
            raise TraceError(f"{where}: missing")
        try:
            if verify and rel in meta.checksums:
                arr = _checked_array(path, meta.checksums[rel], where)
            else:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except TraceError:
            raise
        except Exception as exc:  # a damaged header can raise anything literal_eval raises
            raise TraceError(f"{where}: not a readable .npy file "
                             f"({type(exc).__name__}: {exc})") from None
        want_shape = (meta.chunk_len(index), layer.rows, layer.cols)
        if arr.shape != want_shape:
            raise TraceError(f"{where}: shape {arr.shape}, expected {want_shape}")
        want = STORAGE[meta.dtype]
        if arr.dtype != want:
            raise TraceError(f"{where}: dtype {arr.dtype}, expected {want} for "
                             f"dtype {meta.dtype}")
        if arr.ndim and not arr.flags.c_contiguous:
            raise TraceError(f"{where}: Fortran-ordered array; chunks must be C-ordered")
        return arr

    def _load_all(self, index: int, verify: bool,
                  only: frozenset | None = None) -> Mapping[str, np.ndarray]:
        """Every layer's chunk ``index`` (or the layers named in ``only``), the kernel asked
        to read its pages ahead. With ``verify``, each layer's file is checked (crc32) and
        mapped when its array is first asked for, in the thread that asks: the layers'
        threads check the files they are about to use, in parallel and spread as their work
        is (a reader thread checking everything competed with them for the cores)."""
        indices = [i for i, layer in enumerate(self.meta.layers)
                   if only is None or layer.name in only]
        for i in indices:
            if hasattr(os, "posix_fadvise"):
                try:
                    fd = os.open(self.chunk_path(self.meta.layers[i].name, index), os.O_RDONLY)
                except OSError:
                    continue                    # load_chunk says what is wrong with it
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                finally:
                    os.close(fd)
        if verify:
            return _CheckedChunk(self, index, indices)
        return {self.meta.layers[i].name: self.load_chunk(i, index, False) for i in indices}

    def chunks(self, start_chunk: int = 0, verify: bool = True,
               prefetch: bool = True, layers=None) -> Iterator[Chunk]:
        """Chunks in order. With ``prefetch`` a reader thread asks for the next chunk's files
        to be read in while the caller works on this one (memory: the page cache of two
        chunks; the mapped arrays stay the only copies). With ``verify`` each layer's file
        is checked against the manifest's crc32 when its array is first used (``_load_all``).
        ``layers``: read only these layer names (a shard of a distributed run)."""
        meta = self.meta
        only = frozenset(layers) if layers is not None else None
        if meta.timing_only:
            raise TraceError(f"{self.path}: timing-only manifest: it has no gradients to read")
        if not prefetch or meta.n_chunks - start_chunk < 2:
            for index in range(start_chunk, meta.n_chunks):
                arrays = self._load_all(index, verify, only)
                yield Chunk(index, index * meta.chunk_iterations, meta.chunk_len(index), arrays)
                _check_rest(arrays)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="timesim-reader") as reader:
            ahead = reader.submit(self._load_all, start_chunk, verify, only)
            for index in range(start_chunk, meta.n_chunks):
                arrays = ahead.result()          # a reader error surfaces here, in order
                if index + 1 < meta.n_chunks:
                    ahead = reader.submit(self._load_all, index + 1, verify, only)
                yield Chunk(index, index * meta.chunk_iterations, meta.chunk_len(index), arrays)
                _check_rest(arrays)

    def validate(self) -> dict:
        """Check every chunk (shape, dtype, checksum, finite values); raise on the first problem."""
        meta = self.meta
        if meta.timing_only:
            return {"chunks": 0, "layers": len(meta.layers), "checksums": 0, "extra_dirs": [],
                    "extra_files": []}
        extra = sorted(p.name for p in self.path.iterdir()
                       if p.is_dir() and p.name not in {l.name for l in meta.layers})
        # chunk files the manifest does not count (a stray copy, or a manifest of fewer
        # iterations than were written): never read, so a wrong manifest would go unseen
        wanted = {chunk_name(i) for i in range(meta.n_chunks)}
        stray = sorted(f"{layer.name}/{p.name}" for layer in meta.layers
                       if (self.path / layer.name).is_dir()
                       for p in (self.path / layer.name).glob("*.npy") if p.name not in wanted)
        for index in range(meta.n_chunks):
            for li, layer in enumerate(meta.layers):
                arr = self.load_chunk(li, index, verify=True)
                bad = _first_nonfinite(arr, meta.dtype)
                if bad is not None:
                    it, r, c = bad
                    raise TraceError(
                        f"{self.path}: layer {layer.name}: chunk {chunk_name(index)}: "
                        f"iteration {index * meta.chunk_iterations + it}: non-finite gradient "
                        f"(NaN or Inf) at row {r}, col {c}")
        return {"chunks": meta.n_chunks, "layers": len(meta.layers),
                "checksums": len(meta.checksums), "extra_dirs": extra, "extra_files": stray}


def _first_nonfinite(arr: np.ndarray, dtype: str) -> tuple[int, int, int] | None:
    """Index (iteration, row, col) of the first NaN/Inf, scanning one iteration at a time."""
    for it in range(arr.shape[0]):
        x = np.asarray(arr[it])
        if dtype == "bfloat16":
            bad = (x & 0x7F80) == 0x7F80
        else:
            bad = ~np.isfinite(x)
        if bad.any():
            r, c = np.unravel_index(int(np.argmax(bad)), bad.shape)
            return it, int(r), int(c)
    return None
