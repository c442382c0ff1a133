"""Half-precision inputs to float32 inside numba (numba has no float16/bfloat16 arrays).

Both take the uint16 bit patterns and write float32 bit patterns into a uint32 view of the output.
bfloat16 is the top half of a float32, so it is a 16-bit shift; float16 needs re-biasing the
exponent and normalizing subnormals.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@njit(cache=True, nogil=True)
def _bf16_to_f32_bits(src, dst):
    for i in range(src.shape[0]):
        dst[i] = np.uint32(src[i]) << np.uint32(16)


@njit(cache=True, nogil=True)
def _f16_to_f32_bits(src, dst):
    for i in range(src.shape[0]):
        h = np.uint32(src[i])
        sign = (h & np.uint32(0x8000)) << np.uint32(16)
        exp = (h >> np.uint32(10)) & np.uint32(0x1F)
        man = h & np.uint32(0x3FF)
        if exp == 0x1F:                                   # Inf / NaN
            bits = sign | np.uint32(0x7F800000) | (man << np.uint32(13))
        elif exp != 0:                                    # normal: re-bias 15 -> 127
            bits = sign | ((exp + np.uint32(112)) << np.uint32(23)) | (man << np.uint32(13))
        elif man == 0:                                    # signed zero
            bits = sign
        else:                                             # subnormal: normalize
            e = np.uint32(113)
            while (man & np.uint32(0x400)) == 0:
                man <<= np.uint32(1)
                e -= np.uint32(1)
            bits = sign | (e << np.uint32(23)) | ((man & np.uint32(0x3FF)) << np.uint32(13))
        dst[i] = bits


@intrinsic
def _f32_bits(typingctx, x):
    """The bit pattern of a float32 as uint32 (an LLVM bitcast: free, vectorizes)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


_SUBNORMAL = np.float32(2.0 ** -24)


@njit(cache=True, nogil=True)
def _f16_to_f32_fast(src, dst):
    """The same bits as ``_f16_to_f32_bits`` without branches or loops, so it vectorizes:
    normal halves re-biased (+112 in the exponent; Inf/NaN +224, keeping NaN payloads),
    subnormals (and zero) converted exactly as float32(mantissa) · 2^-24; then selects."""
    for i in range(src.shape[0]):
        h = np.uint32(src[i])
        em = h & np.uint32(0x7FFF)
        sign = (h & np.uint32(0x8000)) << np.uint32(16)
        bits = (em << np.uint32(13)) + np.uint32(0x38000000)
        if em >= np.uint32(0x7C00):
            bits += np.uint32(0x38000000)
        if em < np.uint32(0x0400):
            bits = _f32_bits(np.float32(np.int32(em)) * _SUBNORMAL)
        dst[i] = sign | bits


def to_float32(x: np.ndarray, dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """A float32 copy (or view for float32) of a chunk stored as ``dtype`` (DESIGN §6)."""
    if dtype == "float32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if out is None or out.shape != x.shape:
        out = np.empty(x.shape, dtype=np.float32)
    src = np.ascontiguousarray(x).reshape(-1).view(np.uint16)
    dst = out.reshape(-1).view(np.uint32)
    if dtype == "bfloat16":
        _bf16_to_f32_bits(src, dst)
    elif dtype == "float16":
        _f16_to_f32_fast(src, dst)
    else:
        raise ValueError(f"unknown dtype {dtype!r}")
    return out
