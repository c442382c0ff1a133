"""Analog MVM kernels in numba: input quantization into DAC slices, and the ADC stage (read
noise, quantization, clipping, digital shift-and-add of every partial sum).

Currents arrive in integer units (Σ input-slice level × cell-level difference, exact in float32
for the sizes used), so the result does not depend on the summation order of the matmul that
produced them. The ADC stage works in float32 (one multiply by 1/step, one add of the noise, in
that order, no fused multiply-add); codes are summed over row blocks as exact integers (in
float32, float64 where needed) and shifted into a float64 accumulator;
``tests/reference.py::ref_mvm`` repeats the same float32 operations in numpy and matches bit for
bit.

Read noise comes from a counter-based generator (splitmix64's finalizer over (key, pair index))
that gives two normals per 64-bit hash: each is an Irwin–Hall sum of four bytes, centred and
scaled to unit variance (1021 levels, ±3.45σ; excess kurtosis −0.3). Element (b, j) of a
stream of width W uses pair (b >> 1)·W + j, the low half for even b and the high half for odd
b, so a kernel can take two batch rows at a time with contiguous loads, and the values do not
depend on how the columns are split between threads. ``noise`` returns them as an array; the
test suite checks it against a numpy implementation of the same hash.

All kernels release the GIL; ``_mvm_run`` runs one MVM on numba's threads in tiles (batch rows ×
column chunks), each calling numpy's sgemm single-threaded (kernels/blas.py). Bit-serial inputs
with integer conductances (the default chip) go P input slices at a time through one dgemm of
packed inputs (``_mvm_tile``; analog.py's ``_packing`` chooses P), exactly.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

# Batch rows per tile (even: read-noise pairs never straddle tiles). With column chunks of at
# most 128 (analog.py) a tile's currents, 128 x 128 x 4 bytes per row block, stay in L2.
TILE_ROWS = 128

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_BYTES = np.uint64(0x00FF00FF00FF00FF)
_HALVES = np.uint64(0x0000FFFF0000FFFF)
_LOW32 = np.uint64(0xFFFFFFFF)
_MEAN = np.float32(510.0)                          # 4 × 127.5
_INV_SD = np.float32(1.0 / np.sqrt(4 * (256**2 - 1) / 12))


@njit(cache=True, inline="always")
def _mix64(z):
    """splitmix64's finalizer. kernels/synth.py has the same one: repeated on purpose, since a
    jitted call into another file is not seen by numba's on-disk cache (STYLE.md)."""
    z = (z ^ (z >> np.uint64(30))) * _C1
    z = (z ^ (z >> np.uint64(27))) * _C2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _stream_key(seed, stream):
    """The 64-bit key of read-noise stream ``stream`` under ``seed``."""
    k = _mix64(np.uint64(seed) + _GOLDEN)
    return _mix64(k ^ (np.uint64(stream) + _GOLDEN))


@njit(cache=True, inline="always")
def _normal_pair(key, p):
    """Two unit normals (Irwin–Hall of 4 bytes each) from pair index p of stream ``key``."""
    z = _mix64(key + p * _GOLDEN)
    a = (z & _BYTES) + ((z >> np.uint64(8)) & _BYTES)          # four sums of two bytes
    s = (a & _HALVES) + ((a >> np.uint64(16)) & _HALVES)       # two sums of four bytes
    lo = (np.float32(np.int32(s & _LOW32)) - _MEAN) * _INV_SD
    hi = (np.float32(np.int32(s >> np.uint64(32))) - _MEAN) * _INV_SD
    return lo, hi


_ROW_MAJOR, _NO_TRANS = 101, 111


def _emit_gemm(context, builder, sig, args, ftype):
    """A cblas_?gemm call (row-major, no transposes, alpha 1, beta 0) through a function
    address; ftype: the element type (float for sgemm, double for dgemm). The matrices are
    passed as arrays and element offsets, and the call gets pointers derived from the arrays'
    own data pointers: the optimizer then knows the call reads A and B and writes C (given
    addresses as integers, it dropped the stores that filled an array only BLAS read)."""
    fn_, ilp, m, n, k, a, ao, la, b, bo, lb, c, co, lc = args
    i32, i64 = ir.IntType(32), ir.IntType(64)
    ptr = ir.IntType(8).as_pointer()

    def at(i, off):                                     # &array[flat offset], as i8*
        ary = context.make_array(sig.args[i])(context, builder, args[i])
        return builder.bitcast(builder.gep(ary.data, [off]), ptr)

    pa, pb, pc = at(5, ao), at(8, bo), at(11, co)

    def emit(width):
        it = ir.IntType(width)

        def arg(v):
            return v if width == 64 else builder.trunc(v, i32)

        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, it, it, it, ftype, ptr, it, ptr,
                                               it, ftype, ptr, it])
        f = builder.inttoptr(fn_, fnty.as_pointer())
        builder.call(f, [ir.Constant(i32, _ROW_MAJOR), ir.Constant(i32, _NO_TRANS),
                         ir.Constant(i32, _NO_TRANS), arg(m), arg(n), arg(k),
                         ir.Constant(ftype, 1.0), pa, arg(la), pb, arg(lb),
                         ir.Constant(ftype, 0.0), pc, arg(lc)])

    wide = builder.icmp_signed("!=", ilp, ir.Constant(i64, 0))
    with builder.if_else(wide) as (then, otherwise):
        with then:
            emit(64)
        with otherwise:
            emit(32)
    return context.get_dummy_value()


def _sgemm_codegen(context, builder, sig, args):
    return _emit_gemm(context, builder, sig, args, ir.FloatType())


def _dgemm_codegen(context, builder, sig, args):
    return _emit_gemm(context, builder, sig, args, ir.DoubleType())


def _gemm_sig(dtype, a, b, c):
    """The signature of a ?gemm intrinsic call, or None (numba then reports a typing error)
    unless a, b and c are C-contiguous arrays of dtype."""
    if not all(isinstance(t, types.Array) and t.dtype == dtype and t.layout == "C"
               for t in (a, b, c)):
        return None
    i = types.int64
    return types.void(i, i, i, i, i, a, i, i, b, i, i, c, i, i)


@intrinsic
def _call_sgemm(typingctx, fn, ilp64, M, N, K, a, a0, lda, b, b0, ldb, c, c0, ldc):
    """C (M×N, row stride ldc) = A (M×K, lda) @ B (K×N, ldb), row-major float32, through the
    cblas_sgemm at address ``fn`` (ilp64 != 0: 64-bit BLAS integers); A starts at element a0
    of the C-contiguous array a (flat), B at b0 of b, C at c0 of c; integers are int64.
    It lives here, not in blas.py, because numba caches the kernels that inline it per file."""
    return _gemm_sig(types.float32, a, b, c), _sgemm_codegen


@intrinsic
def _call_dgemm(typingctx, fn, ilp64, M, N, K, a, a0, lda, b, b0, ldb, c, c0, ldc):
    """_call_sgemm in float64, through a cblas_dgemm."""
    return _gemm_sig(types.float64, a, b, c), _dgemm_codegen


@njit(cache=True, nogil=True)
def _quantize_row(x, b, top, db, v, scale, vsum, maxbits):
    """Input row b into DAC slices; False if it holds a NaN or an Inf.

    The largest |x| is found on the int32 bits (sign cleared: finite floats then order as
    integers, and integer max reductions vectorize where float ones do not), kept in
    maxbits[b] and read back as a float. scale[b] = max|x| / top in float32 (1/top for an
    all-zero row); magnitudes m = rint(|x| · inv), inv = float32(1 / scale) rounded once from
    float64, a float32 product; for each of the v.shape[0] input slices k:
    v[k, b, r] = sign(x) · ((m >> db·k) & (2^db − 1)); vsum[b] = Σ_r sign(x) · m.
    """
    n_in = v.shape[0]
    row = x[b]
    R = row.shape[0]
    bits = row.view(np.int32)
    m = np.int32(0)
    for r in range(R):
        m = max(m, bits[r] & np.int32(0x7FFFFFFF))
    if m >= np.int32(0x7F800000):                     # +Inf's bits; NaNs lie above
        return False
    maxbits[b] = m
    mx = maxbits.view(np.float32)[b]
    sc = np.float32((mx if mx > 0 else np.float32(1.0)) / top)
    scale[b] = sc
    inv = np.float32(1.0 / np.float64(sc))
    tot = 0
    if n_in == 1:
        out = v[0, b]
        for r in range(R):
            q = np.rint(abs(row[r]) * inv)
            out[r] = q if row[r] >= 0 else -q
        for r in range(R):
            tot += np.int64(out[r])
    else:
        mask = (1 << db) - 1
        for r in range(R):
            q = np.int64(np.rint(abs(row[r]) * inv))
            tot += q if row[r] >= 0 else -q
        for k in range(n_in):
            out = v[k, b]
            sh = db * k
            for r in range(R):
                d = np.float32((np.int64(np.rint(abs(row[r]) * inv)) >> sh) & mask)
                out[r] = d if row[r] >= 0 else -d
    vsum[b] = tot
    return True


@njit(cache=True, nogil=True)
def _quantize_inputs(x, top, db, v, scale, vsum):
    """_quantize_row for every row; False if x holds a NaN or an Inf."""
    maxbits = np.empty(x.shape[0], np.int32)
    for b in range(x.shape[0]):
        if not _quantize_row(x, b, top, db, v, scale, vsum, maxbits):
            return False
    return True


@njit(cache=True, nogil=True)
def _pack_inputs(v, b, P, base, v64):
    """Batch row b of the input slices v (n_in, B, rows) packed P to a float64:
    v64[g, b, r] = Σ_i v[g·P + i, b, r] · base^i (the last group may have fewer slices);
    exact: digits are small integers and base a power of two."""
    n_in = v.shape[0]
    for g in range(v64.shape[0]):
        out = v64[g, b]
        k0 = g * P
        k1 = min(k0 + P, n_in)
        top = v[k1 - 1, b]
        for r in range(out.shape[0]):
            out[r] = np.float64(top[r])
        for k in range(k1 - 2, k0 - 1, -1):
            src = v[k, b]
            for r in range(out.shape[0]):
                out[r] = out[r] * base + np.float64(src[r])


@njit(cache=True, nogil=True, inline="always")
def _unpack_row(src, sc0, sc1, base, out):
    """Digit i of packed sums T = Σ_i c_i·base^i (|c_i| < base/2 − 1/2, so each lower part is
    under half a unit): c_i = rint(T·base^−i) − base·rint(T·base^−(i+1)), exact in float64
    and in the float32 it is stored as."""
    for j in range(out.shape[0]):
        t = src[j]
        out[j] = np.float32(np.rint(t * sc0) - base * np.rint(t * sc1))


@njit(cache=True, nogil=True)
def _adc_accumulate(cur, keys, width, row0, col0, noisy, noise_code, inv_step, levels, weights,
                   acc, t0, t1, first, last, fin, unpack):
    """The ADC stage for one input slice and one tile (batch rows row0 .., matrix columns
    col0 .. col0 + cc).

    cur (blocks, Bt, S·cc): column currents of every row block, weight slice s in columns
    [s·cc, (s+1)·cc). For each row block k, tile row b (batch row row0 + b), slice s and column
    j: code = clip(rint(cur · inv_step[s] + noise_code[s] · z), ±levels) with z the normal at
    (row0 + b, s·cols + col0 + j) of stream keys[k] (width = S·cols; row0 even), or no noise
    when ``noisy`` is false; then acc[b, j] += weights[s] · Σ_k code (slices in order), acc
    being the tile's (Bt, cc) float64 accumulator (``first``: the first input slice, acc is not
    read). For the ``last`` input slice the total goes to y instead (fin = (step, offset, vsum,
    x_scale, w_scale, y)): y[row0 + b, col0 + j] = float32(((total · step − offset · vsum) ·
    x_scale) · w_scale), with vsum and x_scale of batch row row0 + b.
    t0, t1: scratch of at least S·cc elements for the sums of codes over row blocks of two
    batch rows (0 + the first block's code, then the others in block order): float32 when
    they are exact in it (blocks × levels < 2^24), else float64 (exact to 2^53). Rows go two
    at a time (a read-noise hash gives both), every slice of a row block in one sweep of its
    currents.
    unpack = (packed, cur64, sc0, sc1, base, e0, e1): with ``packed`` the currents are digit i
    of the packed float64 products cur64 (blocks, Bt, S·cc), sc0 = base^−i, sc1 = base^−(i+1)
    (_unpack_row, into the scratch rows e0, e1 of S·cc float32); cur is then not read.
    """
    packed, cur64, sc0, sc1, pbase, e0, e1 = unpack
    nblk, B, w = cur64.shape if packed else cur.shape
    S = weights.shape[0]
    cc = w // S
    lo = np.float32(-levels)
    hi = np.float32(levels)
    zero = np.float32(0.0)
    step, offset, vsum, x_scale, w_scale, y = fin
    for b in range(0, B, 2):
        b1 = min(b + 1, B - 1)
        for k in range(nblk):
            if packed:
                _unpack_row(cur64[k, b], sc0, sc1, pbase, e0)
                _unpack_row(cur64[k, b1], sc0, sc1, pbase, e1)
                r0 = e0
                r1 = e1
            else:
                r0 = cur[k, b]
                r1 = cur[k, b1]
            for s in range(S):
                c0 = s * cc
                inv_s = inv_step[s]
                if noisy:
                    key = keys[k]
                    noise_s = noise_code[s]
                    base = np.uint64(((row0 + b) >> 1) * width + s * (width // S) + col0)
                    for j in range(cc):
                        z0, z1 = _normal_pair(key, base + np.uint64(j))
                        q0 = min(max(np.rint(r0[c0 + j] * inv_s + noise_s * z0), lo), hi)
                        q1 = min(max(np.rint(r1[c0 + j] * inv_s + noise_s * z1), lo), hi)
                        if k == 0:
                            t0[c0 + j] = zero + q0
                            t1[c0 + j] = zero + q1
                        else:
                            t0[c0 + j] += q0
                            t1[c0 + j] += q1
                elif k == 0:
                    for j in range(cc):
                        t0[c0 + j] = zero + min(max(np.rint(r0[c0 + j] * inv_s), lo), hi)
                    if b1 != b:
                        for j in range(cc):
                            t1[c0 + j] = zero + min(max(np.rint(r1[c0 + j] * inv_s), lo), hi)
                else:
                    for j in range(cc):
                        t0[c0 + j] += min(max(np.rint(r0[c0 + j] * inv_s), lo), hi)
                    if b1 != b:
                        for j in range(cc):
                            t1[c0 + j] += min(max(np.rint(r1[c0 + j] * inv_s), lo), hi)
        for q in range(2 if b1 != b else 1):
            bq = b + q
            t = t0 if q == 0 else t1
            a = acc[bq]
            for s in range(S):
                c0 = s * cc
                wt = weights[s]
                fresh = first and s == 0
                if last and s == S - 1:
                    out = y[row0 + bq]
                    off = np.float64(offset) * np.float64(vsum[row0 + bq])
                    xs = np.float64(x_scale[row0 + bq])
                    for j in range(cc):
                        tot = (wt * np.float64(t[c0 + j]) if fresh
                               else a[j] + wt * np.float64(t[c0 + j]))
                        out[col0 + j] = np.float32((tot * step - off) * xs * w_scale)
                elif fresh:
                    for j in range(cc):
                        a[j] = wt * np.float64(t[c0 + j])
                else:
                    for j in range(cc):
                        a[j] += wt * np.float64(t[c0 + j])


@njit(cache=True, nogil=True)
def _mvm_tile(i, fn, dfn, ilp64, v, v64, P, base, U, X, edges, S, keys, noisy, noise_code,
             inv_step, levels, weights, tproto, fin):
    """Tile i of an analog MVM: batch rows [TILE_ROWS·(i // chunks), ..) times the matrix columns
    of chunk i % chunks (edges[c] .. edges[c+1]). For every input slice k, the currents of every
    row block (cblas_sgemm at ``fn``, see kernels/blas.py), then the ADC stage, the last one
    into y (_adc_accumulate). v (input slices, B, rows); U (rows, S·cols): chunk c's columns at
    [S·edges[c], S·edges[c+1]), weight slices side by side; weights (input slices, S); tproto:
    an empty array with the dtype of the code sums.

    P > 1 (integer conductances, several input slices): the currents of P input slices come
    from one float64 product (cblas_dgemm at ``dfn``) of the packed inputs v64 (groups, B,
    rows; _pack_inputs) with the chunk's conductances in float64: every partial sum is an
    integer under 2^53, so the product is exact in any summation order and each slice's
    currents are recovered exactly (_unpack_row). Half the flops of sgemm per multiply-add and
    P slices at once: P/2 times fewer cycles, the same result bit for bit."""
    n_in, B, rows = v.shape
    width = U.shape[1]
    nblk = (rows + X - 1) // X
    nch = edges.shape[0] - 1
    row0 = (i // nch) * TILE_ROWS
    bt = min(TILE_ROWS, B - row0)
    c0 = edges[i % nch]
    cc = edges[i % nch + 1] - c0
    w = S * cc
    packed = P > 1          # the same run-time bool in both unpack tuples: one compiled
    #                         _adc_accumulate (literal True/False would type as two)
    cur = np.empty((0 if packed else nblk, bt, w), np.float32)
    cur64 = np.empty((nblk if packed else 0, bt, w), np.float64)
    acc = np.empty((bt, cc if n_in * S > 1 else 0), np.float64)     # unused for one (k, s)
    t0 = np.empty(w, tproto.dtype)
    t1 = np.empty(w, tproto.dtype)
    e0 = np.empty(w if packed else 0, np.float32)
    e1 = np.empty(w if packed else 0, np.float32)
    if packed:
        u64 = np.empty((rows, w), np.float64)           # the chunk's conductances in float64
        for r in range(rows):
            src = U[r, S * c0:S * c0 + w]
            dst = u64[r]
            for j in range(w):
                dst[j] = np.float64(src[j])
        for g in range((n_in + P - 1) // P):
            pv = (g * B + row0) * rows
            for blk in range(nblk):
                r0 = blk * X
                h = min(X, rows - r0)
                _call_dgemm(dfn, ilp64, bt, w, h, v64, pv + r0, rows, u64, r0 * w, w,
                            cur64, blk * bt * w, w)
            sc0 = 1.0                                   # base^-d, exact (a power of two)
            for k in range(g * P, min(g * P + P, n_in)):
                unpack = (packed, cur64, sc0, sc0 / base, base, e0, e1)
                sc0 /= base
                _adc_accumulate(cur, keys[k * nblk:(k + 1) * nblk], width, row0, c0, noisy,
                               noise_code[k], inv_step[k], levels, weights[k], acc, t0, t1,
                               k == 0, k == n_in - 1, fin, unpack)
        return
    unpack = (packed, cur64, 1.0, 0.0, base, e0, e1)       # packed is false here
    for k in range(n_in):
        pv = (k * B + row0) * rows
        for blk in range(nblk):
            r0 = blk * X
            h = min(X, rows - r0)
            _call_sgemm(fn, ilp64, bt, w, h, v, pv + r0, rows, U, S * c0 + r0 * width, width,
                       cur, blk * bt * w, w)
        _adc_accumulate(cur, keys[k * nblk:(k + 1) * nblk], width, row0, c0, noisy,
                       noise_code[k], inv_step[k], levels, weights[k], acc, t0, t1, k == 0,
                       k == n_in - 1, fin, unpack)


def tiles(batch: int, edges: np.ndarray) -> int:
    """How many tiles _mvm_run splits an MVM into (batch tiles × column chunks)."""
    return -(-batch // TILE_ROWS) * (len(edges) - 1)


@njit(cache=True, nogil=True, parallel=True)
def _mvm_run(fn, dfn, ilp64, x, U, X, edges, S, seed, P, base, n_in, db, top, noisy,
            noise_code, inv_step, levels, weights, tproto, step, offset, w_scale, y):
    """A whole analog MVM on numba's threads: the input rows into DAC slices (prange over the
    batch; packed P to a float64 when P > 1, see _mvm_tile), then every tile (prange; each
    writes its own block of y). Returns False, leaving y unwritten, if x holds a NaN or an
    Inf."""
    B, rows = x.shape
    nblk = (rows + X - 1) // X
    v = np.empty((n_in, B, rows), np.float32)
    v64 = np.empty(((n_in + P - 1) // P if P > 1 else 0, B, rows), np.float64)
    x_scale = np.empty(B, np.float32)
    vsum = np.empty(B, np.int64)
    maxbits = np.empty(B, np.int32)
    bad = 0
    for b in prange(B):
        if not _quantize_row(x, b, top, db, v, x_scale, vsum, maxbits):
            bad += 1
    if bad:
        return False
    if P > 1:
        for b in prange(B):
            _pack_inputs(v, b, P, base, v64)
    keys = np.empty(n_in * nblk, np.uint64)
    for i in range(n_in * nblk):
        keys[i] = _stream_key(seed, i)
    fin = (step, offset, vsum, x_scale, w_scale, y)
    for i in prange(((B + TILE_ROWS - 1) // TILE_ROWS) * (edges.shape[0] - 1)):
        _mvm_tile(i, fn, dfn, ilp64, v, v64, P, base, U, X, edges, S, keys, noisy, noise_code,
                 inv_step, levels, weights, tproto, fin)
    return True


@njit(cache=True)
def _sgemm_probe(fn, ilp64, a, b, c):
    """c = a @ b through _call_sgemm (kernels/blas.py checks the library once with it)."""
    _call_sgemm(fn, ilp64, a.shape[0], b.shape[1], a.shape[1], a, 0, a.shape[1], b, 0,
               b.shape[1], c, 0, c.shape[1])


@njit(cache=True)
def _dgemm_probe(fn, ilp64, a, b, c):
    """_sgemm_probe in float64, through _call_dgemm."""
    _call_dgemm(fn, ilp64, a.shape[0], b.shape[1], a.shape[1], a, 0, a.shape[1], b, 0,
               b.shape[1], c, 0, c.shape[1])


@njit(cache=True, nogil=True)
def _fill_noise(key, out):
    B, W = out.shape
    for b in range(0, B, 2):
        for j in range(W):
            lo, hi = _normal_pair(key, np.uint64((b >> 1) * W + j))
            out[b, j] = lo
            if b + 1 < B:
                out[b + 1, j] = hi


def noise(seed: int, stream: int, batch: int, width: int) -> np.ndarray:
    """The unit normals that read-noise stream ``stream`` under ``seed`` adds to a (batch,
    width) block of conversions (width = weight slices × columns), as float32."""
    out = np.empty((batch, width), dtype=np.float32)
    _fill_noise(np.uint64(_stream_key(np.uint64(int(seed) % 2**64), np.int64(stream))), out)
    return out
