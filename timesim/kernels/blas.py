"""numpy's own BLAS sgemm, callable from numba kernels without the GIL.

The analog MVM runs its tiles on numba's threads (kernels/mvm.py), and each thread multiplies
its crossbar blocks with the same single-threaded sgemm that np.matmul would call.
``sgemm_handle()`` finds that function in the library numpy loaded (through threadpoolctl) and
gives its address, which the kernels take as a plain integer, so they stay in numba's on-disk
cache, and call through the intrinsic ``kernels.mvm._call_sgemm``; ``single_threaded()`` pins
the library to one thread meanwhile (its own threads would compete with ours).

numpy's own library is preferred. Only symbols whose integer width is known are used:
``scipy_cblas_sgemm64_`` and ``cblas_sgemm64_`` (64-bit integers: numpy's wheels),
``scipy_cblas_sgemm`` (32-bit: scipy's), and a plain ``cblas_sgemm`` only from an OpenBLAS not
named *64* or an MKL in its default LP64 interface. The first use multiplies a small product
and compares it with np.matmul; on any doubt the kernels fall back to np.matmul from Python.
The same library's dgemm (same name with a d) is found and checked alongside: the MVM kernels
use it for bit-serial inputs, several input slices packed into one float64 (kernels/mvm.py).
"""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

_SYMBOLS = (("scipy_cblas_sgemm64_", True), ("cblas_sgemm64_", True),
            ("scipy_cblas_sgemm", False), ("cblas_sgemm", False))


@dataclass
class Sgemm:
    address: int
    ilp64: int                       # 1: 64-bit BLAS integers
    get_threads: object              # () -> int, the library's thread count
    set_threads: object              # (int) -> None
    dgemm: int = 0                   # the same library's cblas_dgemm (same integers), 0: none
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _users: int = 0
    _saved: int = 1

    @contextmanager
    def single_threaded(self):
        """BLAS at one thread while any caller is inside; the first in saves the count, the
        last out restores it (MVMs may run from several Python threads at once)."""
        with self._lock:
            if self._users == 0:
                self._saved = self.get_threads() or 1
                if self._saved != 1:
                    self.set_threads(1)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._saved != 1:
                    self.set_threads(self._saved)


_handle: Sgemm | bool | None = None


def sgemm_handle() -> Sgemm | None:
    """numpy's sgemm, checked once; None where it cannot be used safely."""
    global _handle
    if _handle is None:
        _handle = _find() or False
    return _handle or None


def _find() -> Sgemm | None:
    try:
        from threadpoolctl import ThreadpoolController
        libs = ThreadpoolController().select(user_api="blas").lib_controllers
    except Exception:                                   # noqa: BLE001 - optional speed-up
        return None
    # numpy's own library first (others may be loaded by scipy, torch, ...)
    here = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    libs = sorted(libs, key=lambda lib: not _inside_numpy(str(lib.filepath), here))
    for lib in libs:
        dll = getattr(lib, "dynlib", None)
        if dll is None:
            continue
        for name, ilp64 in _SYMBOLS:
            if name == "cblas_sgemm" and not _plain_is_lp64(lib):
                continue
            try:
                fn = getattr(dll, name)
            except AttributeError:
                continue
            get, set_ = _thread_calls(dll, lib)
            h = Sgemm(ctypes.cast(fn, ctypes.c_void_p).value, int(ilp64), get, set_)
            if not _works(h):
                return None
            d = getattr(dll, name.replace("sgemm", "dgemm"), None)
            if d is not None:
                h.dgemm = ctypes.cast(d, ctypes.c_void_p).value
                h.dgemm = h.dgemm if _works(h, double=True) else 0
            return h
    return None


def _inside_numpy(path: str, site: str) -> bool:
    rel = os.path.relpath(os.path.abspath(path), site)
    return rel.split(os.sep)[0] in ("numpy", "numpy.libs", "numpy.dylibs")


def _plain_is_lp64(lib) -> bool:
    """An unsuffixed cblas_sgemm has 32-bit integers in OpenBLAS builds not named *64* and in
    MKL's default interface; other libraries (BLIS often has 64-bit ones) are not trusted."""
    api = getattr(lib, "internal_api", "")
    name = os.path.basename(str(getattr(lib, "filepath", "")))
    return (api == "openblas" and "64" not in name) or (
        api == "mkl" and os.environ.get("MKL_INTERFACE_LAYER", "LP64").upper().startswith("LP64"))


def _thread_calls(dll, controller):
    """OpenBLAS's own get/set_num_threads through ctypes (a fraction of a microsecond, where
    threadpoolctl's takes several), else threadpoolctl's."""
    for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")):
        try:
            get = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}")
            set_ = getattr(dll, f"{prefix}openblas_set_num_threads{suffix}")
        except AttributeError:
            continue
        get.restype, get.argtypes = ctypes.c_int, []
        set_.restype, set_.argtypes = None, [ctypes.c_int]
        return get, set_
    return controller.get_num_threads, controller.set_num_threads


def _works(h: Sgemm, double: bool = False) -> bool:
    """A small product through the kernels' call equals np.matmul's (sgemm, or dgemm)."""
    from .mvm import _dgemm_probe, _sgemm_probe
    dtype = np.float64 if double else np.float32
    rng = np.random.default_rng(7)
    a = rng.integers(-9, 10, (5, 7)).astype(dtype)
    b = rng.integers(-9, 10, (7, 3)).astype(dtype)
    c = np.zeros((5, 3), dtype)
    if double:
        _dgemm_probe(h.dgemm, h.ilp64, a, b, c)
    else:
        _sgemm_probe(h.address, h.ilp64, a, b, c)
    return bool(np.array_equal(c, a @ b))
