"""CRC-32 (the zlib / gzip / PNG checksum of the trace manifests) at memory speed.

zlib's crc32 reads 2.4-3.7 GB/s on one core here, which bounded replaying a float16 trace
with its checksums checked (docs/performance.md). On x86-64 with PCLMULQDQ the buffer is
folded instead, four 128-bit accumulators 64 bytes at a time by carry-less multiplication
(the method of Gopal et al., "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ
Instruction", Intel, 2009; the folding constants x^(4·128±32) and x^(128±32) mod P for the
bit-reflected polynomial 0xEDB88320 are those published there), then the last 128 bits and
the tail bytes go through the byte-wise table: 9-10 GB/s. The same numbers as zlib.crc32
(tests/test_trace.py compares them on random buffers of every length and alignment); other
machines use zlib.
"""

from __future__ import annotations

import platform
import zlib

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _clmul(typingctx, a, b):
    """Carry-less product of two 64-bit words (LLVM's x86 pclmulqdq): the (low, high) words
    of the 128-bit result."""
    if a != types.uint64 or b != types.uint64:
        return None
    sig = types.UniTuple(types.uint64, 2)(a, b)

    def codegen(context, builder, sig, args):
        v2 = ir.VectorType(ir.IntType(64), 2)
        lane0 = ir.Constant(ir.IntType(32), 0)
        lane1 = ir.Constant(ir.IntType(32), 1)
        va = builder.insert_element(ir.Constant(v2, None), args[0], lane0)
        vb = builder.insert_element(ir.Constant(v2, None), args[1], lane0)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v2, [v2, v2, ir.IntType(8)]), "llvm.x86.pclmulqdq")
        r = builder.call(fn, [va, vb, ir.Constant(ir.IntType(8), 0)])
        return context.make_tuple(builder, sig.return_type,
                                  [builder.extract_element(r, lane0),
                                   builder.extract_element(r, lane1)])

    return sig, codegen


def _byte_table() -> np.ndarray:
    t = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0xEDB88320 if c & 1 else 0)
        t[i] = c
    return t


_TABLE = _byte_table()
# fold 4 x 128 bits forward (x^(4·128+32), x^(4·128-32) mod P, reflected) and 128 bits
# (x^(128+32), x^(128-32) mod P): Gopal et al. 2009, the gzip CRC's constants
_K1 = np.uint64(0x154442BD4)
_K2 = np.uint64(0x1C6E41596)
_K3 = np.uint64(0x1751997D0)
_K4 = np.uint64(0x0CCAA009E)
_BYTE = np.uint32(0xFF)


@njit(cache=True, inline="always")
def _fold(lo, hi, klo, khi):
    a0, a1 = _clmul(lo, klo)
    b0, b1 = _clmul(hi, khi)
    return a0 ^ b0, a1 ^ b1


@njit(cache=True, inline="always")
def _bytes_in(c, word, table):
    """The table-driven CRC register after the 8 bytes of ``word`` (little-endian)."""
    for k in range(8):
        b = np.uint32((word >> np.uint64(8 * k)) & np.uint64(0xFF))
        c = table[(c ^ b) & _BYTE] ^ (c >> np.uint32(8))
    return c


@njit(cache=True, nogil=True)
def _crc32_clmul(buf, crc, table):
    """zlib.crc32(buf, crc) of a uint8 array (any length and alignment)."""
    c = np.uint32(crc) ^ np.uint32(0xFFFFFFFF)
    n = buf.shape[0]
    done = 0
    if n >= 64:
        w = buf[:n - n % 16].view(np.uint64)
        nw = w.shape[0]
        # the register enters as the message's first 32 bits, xored in
        x0l, x0h = w[0] ^ np.uint64(c), w[1]
        x1l, x1h, x2l, x2h, x3l, x3h = w[2], w[3], w[4], w[5], w[6], w[7]
        q = 8
        while q + 8 <= nw:
            a, b = _fold(x0l, x0h, _K1, _K2)
            x0l, x0h = a ^ w[q], b ^ w[q + 1]
            a, b = _fold(x1l, x1h, _K1, _K2)
            x1l, x1h = a ^ w[q + 2], b ^ w[q + 3]
            a, b = _fold(x2l, x2h, _K1, _K2)
            x2l, x2h = a ^ w[q + 4], b ^ w[q + 5]
            a, b = _fold(x3l, x3h, _K1, _K2)
            x3l, x3h = a ^ w[q + 6], b ^ w[q + 7]
            q += 8
        a, b = _fold(x0l, x0h, _K3, _K4)
        xl, xh = a ^ x1l, b ^ x1h
        a, b = _fold(xl, xh, _K3, _K4)
        xl, xh = a ^ x2l, b ^ x2h
        a, b = _fold(xl, xh, _K3, _K4)
        xl, xh = a ^ x3l, b ^ x3h
        while q + 2 <= nw:
            a, b = _fold(xl, xh, _K3, _K4)
            xl, xh = a ^ w[q], b ^ w[q + 1]
            q += 2
        # the folded 128 bits are congruent to the message so far: their CRC from a zero
        # register is the message's register
        c = _bytes_in(_bytes_in(np.uint32(0), xl, table), xh, table)
        done = 8 * q
    for j in range(done, n):
        c = table[(c ^ np.uint32(buf[j])) & _BYTE] ^ (c >> np.uint32(8))
    return c ^ np.uint32(0xFFFFFFFF)


def _has_clmul() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        from llvmlite import binding

        return bool(binding.get_host_cpu_features().get("pclmul"))
    except Exception:                  # noqa: BLE001 - no feature list: use zlib
        return False


FAST = _has_clmul()


def crc32(data, crc: int = 0) -> int:
    """zlib.crc32(data, crc) of a bytes-like object (bytes, mmap, numpy array)."""
    if not FAST:
        return zlib.crc32(data, crc)
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else data.reshape(-1).view(np.uint8)
    if buf.shape[0] < 4096:            # the call costs more than zlib's loop there
        return zlib.crc32(buf, crc)
    return int(_crc32_clmul(buf, np.uint32(crc & 0xFFFFFFFF), _TABLE))
