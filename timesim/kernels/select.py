"""Update-policy kernels (DESIGN §2): local accumulation, selection, physical writes, ARS; they
consume a synthetic layer's gradient as kernels/generate.py makes it, in registers (fused
generate-and-select: ``_add_rows``), so a synthetic run never writes a gradient chunk to memory.

The policy kernels call the generator's jitted functions across files. numba's on-disk cache
keys a kernel on its own file only, so a changed generate.py would leave stale copies of its
functions inside the cached policy kernels: ``_GENERATE_SHA256`` below is generate.py's hash,
and tests/test_kernels.py fails until it is updated, and with it this file, whose cache then
invalidates.

Magnitude trick: for finite float32 values, the int32 bit pattern with the sign bit cleared orders
exactly like |x|, and an integer max vectorizes where a float max does not. A cleared pattern
>= 0x7F800000 is Inf or NaN, so the same max also detects non-finite accumulators for free.
Ties resolve to the lowest index because every scan is in index order with a strict ``>``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .generate import (
    _GOLDEN,
    _LITTLE,
    _M32,
    _MID2,
    _Z2_SCALE,
    _byte_sums,
    _mix64,
    _normal_row,
    _normal_row2_into,
    _normal_row_scaled,
    _stream_key,
    _z,
    _z2,
)

# added to a kernel's generator number (``fused``): STREAM, hash each row's values in the loop
# that adds them (``_add_row_streamed``), for accumulators streamed from memory; UNIT, the
# piece's P and Q are all 1 (a stationary stream), so M·P·Q is M (exact in float32: the same
# values, two multiplies and a load fewer per value; generator 2 then adds from its byte sums,
# ``_add_rows2_unit``)
STREAM = 4
UNIT = 8
# with UNIT under generator 2: W holds each cell's noise factor U[r]·V[c] (the same float32
# products, made once per piece: U and V do not change over its iterations), so a block is
# added in one flat loop (``_add_rows2_uv``) instead of row by row; set by
# LayerPolicy._generator for rows narrower than CELLUV_COLS (rows of 16 values spent more in
# their loop's set-up and scalar remainder than in their adds)
CELLUV = 16
CELLUV_COLS = 64

# sha256 of generate.py, whose jitted functions the kernels here call (see above)
_GENERATE_SHA256 = "907a3509d90d7cf448ddfd8bb4946f6a0ca20a165ae6fdf35485f9fa22083a04"

# stats[] slots, per layer
POLICY_CELLS = 0      # cells written by the update policy (ARS rewrites excluded)
SWAPS = 1             # ARS row swaps (pairs)
ARS_CELLS = 2         # cells rewritten by ARS
MAX_WRITES = 3        # running max of the physical write-count matrix
ROW_WRITES = 4        # write operations (a row's cells written in one iteration count once)
PULSES = 5            # write.pulses=delta: Σ over written weights of ⌈|Δw| / step⌉
CAPPED = 6            # write.pulses=delta: written weights whose pulses were capped
N_STATS = 7
# a pulse count beyond this is a runaway gradient: counted as this, and the weights it happens
# to are counted in stats[CAPPED] (reported, with a warning: writes.pulses_capped)
MAX_PULSES = 1 << 20
_MAX_PULSES = MAX_PULSES

_ABS = np.int32(0x7FFFFFFF)
_NONFINITE = np.int32(0x7F800000)

_ZBLOCK = 2048    # noise values generated per call: a long, vectorized loop; 8 KB stays in L1


@njit(cache=True, inline="always")
def _block_rows(cols):
    """Rows generated together, so the hashing loop stays long even for 16-column layers."""
    return max(1, _ZBLOCK // cols)


@intrinsic
def _bitcast32(typingctx, x):
    """float32 <-> uint32 bit pattern (LLVM bitcast). Here and not in convert.py: numba's
    on-disk cache keys a kernel on its own file only (see above)."""
    if x == types.float32:
        return types.uint32(x), lambda ctx, b, sig, a: b.bitcast(a[0], ir.IntType(32))
    if x == types.uint32:
        return types.float32(x), lambda ctx, b, sig, a: b.bitcast(a[0], ir.FloatType())
    return None


_HALF_SUBNORMAL = np.float32(2.0 ** -24)


@njit(cache=True, inline="always")
def _half_value(bits):
    """float16 bit pattern -> float32 value, exactly, without branches (vectorizes): normal
    halves re-biased, Inf/NaN kept, subnormals as float32(mantissa) · 2^-24 (convert.py
    decodes the same; tests compare all 65536 patterns)."""
    h = np.uint32(bits)
    em = np.uint32(h & np.uint32(0x7FFF))        # (numba widens uint32 arithmetic: cast back)
    out = np.uint32((em << np.uint32(13)) + np.uint32(0x38000000))
    if em >= np.uint32(0x7C00):
        out = np.uint32(out + np.uint32(0x38000000))
    if em < np.uint32(0x0400):
        out = _bitcast32(np.float32(np.int32(em)) * _HALF_SUBNORMAL)
    return _bitcast32(np.uint32(((h & np.uint32(0x8000)) << np.uint32(16)) | out))


def _grad_value(x):
    """A stored gradient value as float32: float32 as is, uint16 as float16 bits."""


@overload(_grad_value, inline="always")
def _grad_value_typed(x):
    if x == types.uint16:
        return lambda x: _half_value(x)
    if x == types.float32:
        return lambda x: x
    return None


@njit(cache=True, inline="always")
def _zbuf(cols, fused):
    """A policy kernel's block buffer: one block's values (``_block_rows``), and beyond them,
    from an even index, generator 2's scratch (``_noise_block``)."""
    return np.empty(2 * _block_rows(cols) * cols + 2 if fused else 0, dtype=np.float32)


@njit(cache=True, inline="always")
def _noise_block(key, r0, r1, cols, zbuf, W, gen):
    """The generator's values of rows r0 .. r1-1 of one iteration (stream ``key``), flat in
    zbuf's first (r1-r0)·cols entries: generator ``gen`` (1 or 2, generate.py), times each
    cell's noise scale W when W is not empty (fitted workloads)."""
    z = zbuf[:(r1 - r0) * cols]
    if gen == 2:
        # generator 2's scratch: the even-aligned second half of zbuf (``_zbuf``)
        _normal_row2_into(key, r0 * cols, z, zbuf[((zbuf.shape[0] >> 1) + 1) & ~1:])
        if W.shape[0] > 0:
            w = W.reshape(-1)[r0 * cols:r1 * cols]
            for j in range(z.shape[0]):
                z[j] = w[j] * z[j]
    elif W.shape[0] > 0:
        _normal_row_scaled(key, r0 * cols, z, W.reshape(-1)[r0 * cols:r1 * cols])
    else:
        _normal_row(key, r0 * cols, z)
    return z


@njit(cache=True, inline="always")
def _add_row_streamed(Ar, Mr, Qi, Vi, p, u, key, start, gen, unit):
    """Ar += one generated gradient row (element counters start ..), each value hashed in the
    loop that adds it: the same values and float32 operations as ``_noise_block`` then the
    add of ``_add_rows``, but the hashing overlaps the row's loads and stores. For rows that
    come from memory: 1.3-1.6x faster there, 0.9x on rows in L1/L2 (docs/performance.md).
    ``unit``: p and Qi are 1 (M·p·Qi is M exactly). Generator 2 (the stationary streams of
    synth:MODEL only) needs ``unit`` and an even ``start`` and row length (two values per
    hash)."""
    cols = Ar.shape[0]
    if gen == 2:
        ctr = key + np.uint64(start >> 1) * _GOLDEN
        for j in range(cols >> 1):
            s = _byte_sums(_mix64(ctr))
            ctr += _GOLDEN          # a counter, not j · golden: one vector multiply fewer
            c = 2 * j
            Ar[c] += Mr[c] + (u * Vi[c]) * _z2(s & _M32)
            Ar[c + 1] += Mr[c + 1] + (u * Vi[c + 1]) * _z2(s >> np.uint64(32))
    elif unit:
        ctr = key + np.uint64(start) * _GOLDEN
        for c in range(cols):
            Ar[c] += Mr[c] + (u * Vi[c]) * _z(_mix64(ctr))
            ctr += _GOLDEN
    else:
        ctr = key + np.uint64(start) * _GOLDEN
        for c in range(cols):
            Ar[c] += (Mr[c] * p) * Qi[c] + (u * Vi[c]) * _z(_mix64(ctr))
            ctr += _GOLDEN


@njit(cache=True, inline="always")
def _add_rows2_unit(A, r0, r1, key, M, Ui, Vi, zbuf):
    """A[r0:r1] += generator 2's rows with unit factors P, Q (a stationary stream): the
    block's byte sums hashed into zbuf as uint64 (one per hash, from the hash holding the
    block's first value), then each value read back as its int32 half (little-endian: the
    values in order) and scaled where it is added — the same float32 operations as
    ``_normal_row2_into`` then the add, without writing and reading back a float32 block."""
    cols = A.shape[1]
    start = r0 * cols
    h0 = start >> 1
    nh = ((start + (r1 - r0) * cols - 1) >> 1) - h0 + 1
    sums = zbuf[:2 * nh].view(np.uint64)
    ctr = key + np.uint64(h0) * _GOLDEN
    for j in range(nh):
        sums[j] = _byte_sums(_mix64(ctr))
        ctr += _GOLDEN
    halves = zbuf[:2 * nh].view(np.int32)
    off = start & 1                 # an odd first value is the high half of the first hash
    for r in range(r0, r1):
        Ar = A[r]
        Mr = M[r]
        hr = halves[off + (r - r0) * cols:off + (r - r0 + 1) * cols]
        u = Ui[r]
        for c in range(cols):
            Ar[c] += Mr[c] + (u * Vi[c]) * ((np.float32(hr[c]) - _MID2) * _Z2_SCALE)


@njit(cache=True, inline="always")
def _add_rows2_uv(A, r0, r1, key, M, UV, zbuf):
    """``_add_rows2_unit`` with each cell's noise factor UV[r, c] = U[r]·V[c] given
    (``CELLUV``): the block's values added in one flat loop, the same float32 operations."""
    cols = A.shape[1]
    start = r0 * cols
    nv = (r1 - r0) * cols
    h0 = start >> 1
    nh = ((start + nv - 1) >> 1) - h0 + 1
    sums = zbuf[:2 * nh].view(np.uint64)
    ctr = key + np.uint64(h0) * _GOLDEN
    for j in range(nh):
        sums[j] = _byte_sums(_mix64(ctr))
        ctr += _GOLDEN
    off = start & 1                 # an odd first value is the high half of the first hash
    hv = zbuf[:2 * nh].view(np.int32)[off:off + nv]
    a = A.reshape(-1)[start:start + nv]
    m = M.reshape(-1)[start:start + nv]
    w = UV.reshape(-1)[start:start + nv]
    for j in range(nv):
        a[j] += m[j] + w[j] * ((np.float32(hv[j]) - _MID2) * _Z2_SCALE)


@njit(cache=True, inline="always")
def _add_rows(A, chunk, i, r0, r1, fused, key, M, P, Q, U, V, W, zbuf):
    """A[r0:r1] += iteration i's gradient rows: from the chunk (``fused`` 0; float32, or
    uint16 holding float16 bits), or generated by generator ``fused & 3`` (1 or 2): first
    the block's noise in one flat loop (vectorized hashing), then the factors, row by row;
    with ``fused & STREAM`` (and no per-cell noise scale W) hashed row by row in the add;
    generator 2 with ``fused & UNIT`` (no W) from its byte sums (``_add_rows2_unit``)."""
    cols = A.shape[1]
    if fused:
        gen = fused & 3
        Qi = Q[i]
        Vi = V[i]
        if fused & CELLUV:
            _add_rows2_uv(A, r0, r1, key, M, W, zbuf)
            return
        if fused & STREAM and W.shape[0] == 0:
            for r in range(r0, r1):
                _add_row_streamed(A[r], M[r], Qi, Vi, P[i, r], U[i, r], key, r * cols, gen,
                                  fused & UNIT)
            return
        if gen == 2 and fused & UNIT and W.shape[0] == 0 and _LITTLE:
            _add_rows2_unit(A, r0, r1, key, M, U[i], Vi, zbuf)
            return
        z = _noise_block(key, r0, r1, cols, zbuf, W, gen)
        for r in range(r0, r1):
            Ar = A[r]
            Mr = M[r]
            zr = z[(r - r0) * cols:(r - r0 + 1) * cols]
            p = P[i, r]
            u = U[i, r]
            for c in range(cols):
                Ar[c] += (Mr[c] * p) * Qi[c] + (u * Vi[c]) * zr[c]
    else:
        for r in range(r0, r1):
            Ar = A[r]
            Gr = chunk[i, r]
            for c in range(cols):
                Ar[c] += _grad_value(Gr[c])     # a float16 chunk is decoded here, in L1


def ars_random_key(seed: int, layer: int) -> np.uint64:
    """Per-layer key of ars-random: mix64(mix64(seed + golden) ^ (layer + 1))."""
    m = 0xFFFFFFFFFFFFFFFF

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    return np.uint64(mix(mix((seed + 0x9E3779B97F4A7C15) & m) ^ (layer + 1)))


@njit(cache=True)
def _bump_row(writes, p, stats):
    """One write on every cell of physical row p; keeps the running max."""
    wrow = writes[p]
    m = stats[MAX_WRITES]
    for c in range(wrow.shape[0]):
        wrow[c] += 1
        m = max(m, wrow[c])
    stats[MAX_WRITES] = m


@njit(cache=True)
def _ars(counters, l2p, p2l, writes, block_rows, half, stats, rkey, t):
    """Aging-aware row swapping in every row block (DESIGN §2, paper Sec. 4.2).

    hot = the h rows with the highest counters, cold = the h lowest among the rest (ties: lower
    physical index first); hot[i] and cold[i] swap their logical rows if
    counter(hot) > counter(cold).

    ``rkey`` != 0 selects ``ars-random``: cold = h rows of the rest in the order of a keyed hash
    mix64(rkey + mix64(t) + p·golden) of their physical index p, i.e. a fresh secret random
    choice at every ARS event (docs/security.md).
    """
    rows = counters.shape[0]
    for start in range(0, rows, block_rows):
        x = min(block_rows, rows - start)
        h = min(half, x // 2)
        if h == 0:
            continue
        # unique composite keys make the order deterministic under any sort
        hot_key = np.empty(x, dtype=np.int64)
        for i in range(x):
            hot_key[i] = -counters[start + i] * x + i
        hot = np.argsort(hot_key)[:h]
        taken = np.zeros(x, dtype=np.bool_)
        for i in range(h):
            taken[hot[i]] = True
        rest = np.empty(x - h, dtype=np.int64)
        j = 0
        for i in range(x):
            if not taken[i]:
                rest[j] = i
                j += 1
        if rkey != 0:
            rnd = np.empty(x - h, dtype=np.uint64)
            tk = _mix64(np.uint64(t))
            for i in range(x - h):
                rnd[i] = _mix64(rkey + tk + np.uint64(start + rest[i]) * _GOLDEN)
            cold_order = np.argsort(rnd)[:h]
        else:
            cold_key = np.empty(x - h, dtype=np.int64)
            for i in range(x - h):
                cold_key[i] = counters[start + rest[i]] * x + rest[i]
            cold_order = np.argsort(cold_key)[:h]
        for i in range(h):
            a = start + hot[i]
            b = start + rest[cold_order[i]]
            if counters[a] > counters[b]:
                la = p2l[a]
                lb = p2l[b]
                p2l[a] = lb
                p2l[b] = la
                l2p[la] = b
                l2p[lb] = a
                _bump_row(writes, a, stats)
                _bump_row(writes, b, stats)
                counters[a] += 1
                counters[b] += 1
                stats[SWAPS] += 1
                stats[ARS_CELLS] += 2 * writes.shape[1]


@njit(cache=True, inline="always")
def _pulses(v, scale, stats):
    """Pulses that move a weight by v·scale levels: ⌈|v|·scale⌉ (write.pulses=delta), at most
    _MAX_PULSES (counted in stats[CAPPED])."""
    x = abs(np.float64(v)) * scale
    if x > _MAX_PULSES:
        stats[CAPPED] += 1
        return np.int64(_MAX_PULSES)
    return np.int64(np.ceil(x))


@njit(cache=True)
def _row_pulses(row, scale, stats):
    """A written row's SET and RESET phases (v < 0 moves the weight up: SET; v > 0: RESET)
    last as long as their longest cell: returns max SET + max RESET pulses; adds every cell's
    pulses to stats[PULSES]."""
    mset = np.int64(0)
    mres = np.int64(0)
    total = np.int64(0)
    for c in range(row.shape[0]):
        p = _pulses(row[c], scale, stats)
        total += p
        if row[c] < 0:
            mset = max(mset, p)
        else:
            mres = max(mres, p)
    stats[PULSES] += total
    return mset + mres


@njit(cache=True, inline="always")
def _row_abs_max(Air):
    """max |A| of a row as the int32 bit patterns' magnitudes (a NaN or Inf is >= _NONFINITE)."""
    m = np.int32(0)
    for c in range(Air.shape[0]):
        # the cast keeps the reduction in 32-bit lanes (numba widens & to int64)
        m = max(m, np.int32(Air[c] & _ABS))
    return m


@njit(cache=True, inline="always")
def _first_col(Air, best):
    """The first index of ``Air`` whose |A| bit pattern is ``best`` (0 if none): a min over
    the matching indices, without an early exit, so it runs in vector lanes (2048 values:
    93 ns against 630 for a scalar scan stopping at the match)."""
    n = Air.shape[0]
    first = np.int32(n)
    for c in range(n):
        hit = np.int32(c) if np.int32(Air[c] & _ABS) == best else np.int32(n)
        first = min(first, hit)
    return first if first < n else 0


@njit(cache=True, inline="always")
def _cell_pulses(v, scale, stats):
    """One cell's write pulses (write.pulses=delta), counted in the statistics."""
    n = _pulses(v, scale, stats)
    stats[PULSES] += n
    return n


@njit(cache=True, inline="always")
def _ars_at(t, ars_on, interval, counters, l2p, p2l, writes, block_rows, half, stats, rkey):
    """ARS at the start of iteration t (every ``interval``-th, from the first); the swaps it
    made (every kernel, and kernels/loop.py's, start an iteration with it)."""
    if ars_on and t >= 1 and t % interval == 0:
        before = stats[SWAPS]
        _ars(counters, l2p, p2l, writes, block_rows, half, stats, rkey, t)
        return stats[SWAPS] - before
    return 0


@njit(cache=True, inline="always")
def _write_row(A, r, p, scale, stats, writes, counters):
    """Program logical row r (physical row p) whole and clear its accumulator; returns its
    SET + RESET pulse slots (with ``scale`` > 0, write.pulses=delta; else 0)."""
    pulse_slots = _row_pulses(A[r], scale, stats) if scale > 0 else np.int64(0)
    A[r, :] = 0.0
    _count_row_write(p, A.shape[1], stats, writes, counters)
    return pulse_slots


@njit(cache=True, inline="always")
def _count_row_write(p, cols, stats, writes, counters):
    """The counts of programming a row of ``cols`` cells on physical row p (``_write_row``)."""
    _bump_row(writes, p, stats)
    counters[p] += 1
    stats[POLICY_CELLS] += cols
    stats[ROW_WRITES] += 1


@njit(cache=True, inline="always")
def _accumulate_argmax_row(A, Ai, chunk, i, fused, key, M, P, Q, U, V, W, zbuf):
    """A += G_i; return (r*, max |A[r*, :]|) with the max as a sign-cleared int32 bit pattern.

    One call per iteration (of ``_argmax_blocks``, compiled once for every kernel that uses
    it): each block of rows is added, then their maxima taken while they are still in L1.
    """
    rows, cols = A.shape
    step = _block_rows(cols)
    return _argmax_blocks(A, Ai, chunk, i, fused, key, M, P, Q, U, V, W, zbuf, 0,
                          (rows + step - 1) // step)


@njit(cache=True, nogil=True)
def _run_sgs_row(A, Ai, chunk, n, t0, l2p, p2l, writes, counters, stats, block_rows, half,
                 interval, ars_on, rkey, scale, fused, seed, layer, M, P, Q, U, V, W,
                 selected, swapped, slots):
    """Row-wise SGS over one chunk; returns the index of a non-finite iteration, or -1.

    ``selected[i]`` gets iteration i's row, ``swapped[i]`` the ARS swaps at its start;
    with ``scale`` > 0 (write.pulses=delta) ``slots[i]`` the row's SET + RESET pulse slots.
    The n iterations come from ``chunk`` or, with ``fused``, from the generator
    (seed, layer, M, P, Q, U, V, W) (module docstring); every kernel takes both the same way.
    """
    rows, cols = A.shape
    zbuf = _zbuf(cols, fused)
    for i in range(n):
        t = t0 + i
        swapped[i] = _ars_at(t, ars_on, interval, counters, l2p, p2l, writes, block_rows,
                             half, stats, rkey)
        key = _stream_key(seed, layer, t) if fused else np.uint64(0)
        rbest, best = _accumulate_argmax_row(A, Ai, chunk, i, fused, key, M, P, Q, U, V, W,
                                             zbuf)
        if best >= _NONFINITE:
            return i
        pulse_slots = _write_row(A, rbest, l2p[rbest], scale, stats, writes, counters)
        if scale > 0:
            slots[i] = pulse_slots
        selected[i] = rbest
    return -1


@njit(cache=True, nogil=True)
def _argmax_blocks(A, Ai, chunk, i, fused, key, M, P, Q, U, V, W, zbuf, b0, b1):
    """A += G_i on the row blocks b0 .. b1-1 (each block added, then its rows' maxima taken
    while it is still in L1): (r*, max) of those rows, (0, -1) for none. All blocks:
    ``_accumulate_argmax_row``; a range of them: one thread's part of the row split (the same
    blocks, so the same generated values)."""
    rows, cols = A.shape
    step = _block_rows(cols)
    best = np.int32(-1)
    rbest = 0
    flat = Ai.reshape(rows * cols)
    for b in range(b0, b1):
        r0 = b * step
        r1 = min(rows, r0 + step)
        _add_rows(A, chunk, i, r0, r1, fused, key, M, P, Q, U, V, W, zbuf)
        # the block's max in one flat loop (no reduction per row: 16-column rows paid more
        # for theirs than for their adds); only a block that beats the best so far is
        # searched for its first row holding that max, the row a scan in row order with a
        # strict > would pick
        block = flat[r0 * cols:r1 * cols]
        m = _row_abs_max(block)
        if m > best:
            best = m
            rbest = r0 + _first_col(block, m) // cols
    return rbest, best


@njit(cache=True, nogil=True, parallel=True)
def _run_sgs_row_split(A, Ai, chunk, n, t0, l2p, p2l, writes, counters, stats, block_rows,
                       half, interval, ars_on, rkey, scale, fused, seed, layer, M, P, Q, U, V,
                       W, selected, swapped, slots, parts):
    """``_run_sgs_row`` with each iteration's accumulate-and-max split over ``parts`` ranges
    of row blocks, run on numba's threads (prange): one layer on every core. The ranges'
    maxima are combined in row order with a strict ``>``, so the row chosen (ties: the lowest
    index) and everything after it are the serial kernel's, for any ``parts``."""
    rows, cols = A.shape
    step = _block_rows(cols)
    nblk = (rows + step - 1) // step
    parts = max(1, min(parts, nblk))
    zbufs = np.empty((parts, 2 * step * cols + 2 if fused else 0), dtype=np.float32)
    pbest = np.empty(parts, dtype=np.int32)
    prow = np.empty(parts, dtype=np.int64)
    for i in range(n):
        t = t0 + i
        swapped[i] = _ars_at(t, ars_on, interval, counters, l2p, p2l, writes, block_rows,
                             half, stats, rkey)
        key = _stream_key(seed, layer, t) if fused else np.uint64(0)
        for q in prange(parts):
            lr, lb = _argmax_blocks(A, Ai, chunk, i, fused, key, M, P, Q, U, V, W, zbufs[q],
                                    q * nblk // parts, (q + 1) * nblk // parts)
            prow[q] = lr
            pbest[q] = lb
        best = np.int32(-1)
        rbest = 0
        for q in range(parts):
            if pbest[q] > best:
                best = pbest[q]
                rbest = prow[q]
        if best >= _NONFINITE:
            return i
        pulse_slots = _write_row(A, rbest, l2p[rbest], scale, stats, writes, counters)
        if scale > 0:
            slots[i] = pulse_slots
        selected[i] = rbest
    return -1


# ---- temporal blocking: K iterations per pass over an sgs-row layer ---------------------------
#
# Row-wise SGS writes one row an iteration; every other row just accumulates. So iterations
# i .. i+K-1 can be added to a block of rows one after another while the block is in L1, as
# if no row were written in between (speculation), keeping each row's max |A| after each of
# them (``rmax``); the K choices are then made in order, and a row written at step k — whose
# later sums the speculation got wrong — is regenerated from zero (its own buffer in ``D``),
# its later maxima replaced. The accumulators cross the memory bus once per K iterations
# instead of once per iteration, and every number is the serial kernel's: the same float32
# additions in the same order on every cell, the same maxima, the same choices (ties: lowest
# row, strict > in row order). Not with write.pulses=delta: a written row's value at its write
# would be needed, and the speculation has already added past it.

TB_STEPS = 8      # iterations per pass: ≤ K rows regenerated an iteration, 1.5 B of traffic
                  # a cell and iteration instead of 12 (A read and written, M read)
# from this many cells a layer does not stay in L2 between iterations (2 × 4 bytes a cell:
# A and M; 1 MB L2 a core here): below it the serial kernel is as fast
TB_CELLS = 1 << 17


@njit(cache=True, inline="always")
def _add_row_into(Dr, chunk, i, r, fused, key, M, P, Q, U, V, W, zbuf):
    """Dr += iteration i's gradient row r (``_add_rows``' values, into another buffer)."""
    cols = Dr.shape[0]
    if fused & CELLUV:
        # W is U·V here, not a noise scale (``CELLUV``)
        z = _noise_block(key, r, r + 1, cols, zbuf, W[:0], 2)
        Mr = M[r]
        UVr = W[r]
        for c in range(cols):
            Dr[c] += Mr[c] + UVr[c] * z[c]
    elif fused:
        z = _noise_block(key, r, r + 1, cols, zbuf, W, fused & 3)
        Mr = M[r]
        Qi = Q[i]
        Vi = V[i]
        p = P[i, r]
        u = U[i, r]
        for c in range(cols):
            Dr[c] += (Mr[c] * p) * Qi[c] + (u * Vi[c]) * z[c]
    else:
        Gr = chunk[i, r]
        for c in range(cols):
            Dr[c] += _grad_value(Gr[c])


@njit(cache=True, nogil=True)
def _speculate(A, Ai, chunk, i0, k_n, fused, keys, M, P, Q, U, V, W, zbuf, rmax, b0, b1):
    """Iterations i0 .. i0+k_n-1 added to row blocks b0 .. b1-1, each block's k_n iterations
    while it is in L1, as if no row were written; rmax[k, r] = row r's max |A| (bit pattern)
    after iteration i0+k."""
    rows, cols = A.shape
    step = _block_rows(cols)
    for b in range(b0, b1):
        r0 = b * step
        r1 = min(rows, r0 + step)
        for k in range(k_n):
            _add_rows(A, chunk, i0 + k, r0, r1, fused, keys[k], M, P, Q, U, V, W, zbuf)
            for r in range(r0, r1):
                rmax[k, r] = _row_abs_max(Ai[r])


@njit(cache=True, nogil=True)
def _resolve(A, chunk, i0, k_n, t0, fused, keys, M, P, Q, U, V, W, zbuf, rmax, D, dirty,
             slot, l2p, p2l, writes, counters, stats, block_rows, half, interval, ars_on,
             rkey, selected, swapped):
    """The choices of iterations i0 .. i0+k_n-1 in order after ``_speculate``: ARS, the rows
    written earlier in this pass brought up to date (D, from zero at their write), the max,
    the write. A's written rows get their true sums at the end. Returns the index of a
    non-finite iteration, or -1."""
    rows, cols = A.shape
    Di = D.view(np.int32)
    nd = 0
    for k in range(k_n):
        i = i0 + k
        swapped[i] = _ars_at(t0 + i, ars_on, interval, counters, l2p, p2l, writes, block_rows,
                             half, stats, rkey)
        for d in range(nd):
            r = dirty[d]
            _add_row_into(D[d], chunk, i, r, fused, keys[k], M, P, Q, U, V, W, zbuf)
            rmax[k, r] = _row_abs_max(Di[d])
        best = np.int32(-1)
        rbest = 0
        rk = rmax[k]
        for r in range(rows):
            if rk[r] > best:
                best = rk[r]
                rbest = r
        if best >= _NONFINITE:
            return i
        _count_row_write(l2p[rbest], cols, stats, writes, counters)
        d = slot[rbest]
        if d < 0:
            d = nd
            slot[rbest] = d
            dirty[d] = rbest
            nd += 1
        D[d, :] = 0.0
        selected[i] = rbest
    for d in range(nd):
        r = dirty[d]
        A[r, :] = D[d]
        slot[r] = -1
    return -1


@njit(cache=True, nogil=True)
def _run_sgs_row_tb(A, Ai, chunk, n, t0, l2p, p2l, writes, counters, stats, block_rows, half,
                    interval, ars_on, rkey, scale, fused, seed, layer, M, P, Q, U, V, W,
                    selected, swapped, slots):
    """``_run_sgs_row`` (write.pulses other than delta: ``scale`` 0) with TB_STEPS iterations
    per pass over the rows (temporal blocking, above): the same results."""
    rows, cols = A.shape
    # generated rows are in L1 here, where the block generator is the faster one
    fused = fused & ~STREAM
    zbuf = _zbuf(cols, fused)
    rmax = np.empty((TB_STEPS, rows), dtype=np.int32)
    D = np.empty((TB_STEPS, cols), dtype=np.float32)
    dirty = np.empty(TB_STEPS, dtype=np.int64)
    slot = np.full(rows, -1, dtype=np.int64)
    keys = np.zeros(TB_STEPS, dtype=np.uint64)
    step = _block_rows(cols)
    nblk = (rows + step - 1) // step
    for i0 in range(0, n, TB_STEPS):
        k_n = min(TB_STEPS, n - i0)
        if fused:
            for k in range(k_n):
                keys[k] = _stream_key(seed, layer, t0 + i0 + k)
        _speculate(A, Ai, chunk, i0, k_n, fused, keys, M, P, Q, U, V, W, zbuf, rmax, 0, nblk)
        bad = _resolve(A, chunk, i0, k_n, t0, fused, keys, M, P, Q, U, V, W, zbuf, rmax, D,
                       dirty, slot, l2p, p2l, writes, counters, stats, block_rows, half,
                       interval, ars_on, rkey, selected, swapped)
        if bad >= 0:
            return bad
    return -1


@njit(cache=True, nogil=True, parallel=True)
def _run_sgs_row_tb_split(A, Ai, chunk, n, t0, l2p, p2l, writes, counters, stats, block_rows,
                          half, interval, ars_on, rkey, scale, fused, seed, layer, M, P, Q, U,
                          V, W, selected, swapped, slots, parts):
    """``_run_sgs_row_tb`` with each pass's speculation split over ``parts`` ranges of row
    blocks on numba's threads (prange), the choices made after it: the same results for any
    ``parts``, and one hand-off between threads per TB_STEPS iterations."""
    rows, cols = A.shape
    fused = fused & ~STREAM
    step = _block_rows(cols)
    nblk = (rows + step - 1) // step
    parts = max(1, min(parts, nblk))
    zbufs = np.empty((parts, 2 * step * cols + 2 if fused else 0), dtype=np.float32)
    rmax = np.empty((TB_STEPS, rows), dtype=np.int32)
    D = np.empty((TB_STEPS, cols), dtype=np.float32)
    dirty = np.empty(TB_STEPS, dtype=np.int64)
    slot = np.full(rows, -1, dtype=np.int64)
    keys = np.zeros(TB_STEPS, dtype=np.uint64)
    for i0 in range(0, n, TB_STEPS):
        k_n = min(TB_STEPS, n - i0)
        if fused:
            for k in range(k_n):
                keys[k] = _stream_key(seed, layer, t0 + i0 + k)
        for q in prange(parts):
            _speculate(A, Ai, chunk, i0, k_n, fused, keys, M, P, Q, U, V, W, zbufs[q], rmax,
                       q * nblk // parts, (q + 1) * nblk // parts)
        bad = _resolve(A, chunk, i0, k_n, t0, fused, keys, M, P, Q, U, V, W, zbufs[0], rmax,
                       D, dirty, slot, l2p, p2l, writes, counters, stats, block_rows, half,
                       interval, ars_on, rkey, selected, swapped)
        if bad >= 0:
            return bad
    return -1


@njit(cache=True, nogil=True)
def _run_sgs_element(A, Ai, chunk, n, t0, l2p, p2l, writes, counters, stats, block_rows,
                     half, interval, ars_on, rkey, scale, fused, seed, layer, M, P, Q, U, V, W,
                     selected, swapped, slots):
    """Element-wise SGS over one chunk; ``selected`` gets the flat logical index r*cols+c."""
    rows, cols = A.shape
    zbuf = _zbuf(cols, fused)
    for i in range(n):
        t = t0 + i
        swapped[i] = _ars_at(t, ars_on, interval, counters, l2p, p2l, writes, block_rows,
                             half, stats, rkey)
        key = _stream_key(seed, layer, t) if fused else np.uint64(0)
        rbest, best = _accumulate_argmax_row(A, Ai, chunk, i, fused, key, M, P, Q, U, V, W,
                                             zbuf)
        if best >= _NONFINITE:
            return i
        cbest = _first_col(Ai[rbest], best)
        if scale > 0:
            slots[i] = _cell_pulses(A[rbest, cbest], scale, stats)
        A[rbest, cbest] = 0.0
        p = l2p[rbest]
        writes[p, cbest] += 1
        stats[MAX_WRITES] = max(stats[MAX_WRITES], writes[p, cbest])
        counters[p] += 1
        stats[POLICY_CELLS] += 1
        stats[ROW_WRITES] += 1
        selected[i] = rbest * cols + cbest
    return -1


@njit(cache=True)
def _count_at_least(keys, g):
    g32 = np.int32(g)
    cnt = 0
    for j in range(keys.shape[0]):
        if keys[j] >= g32:
            cnt += 1
    return cnt


@njit(cache=True)
def _topk_threshold(keys, k, guess, limit):
    """A threshold tau with k <= count(keys >= tau) <= limit, or the largest tau whose count is
    >= k when ties make that window impossible. Starts from ``guess`` (last iteration's tau) and
    steps by factors of two in magnitude (2^23 in the bit pattern), then bisects."""
    lo = np.int64(0)                      # count(keys >= 0) = n >= k
    hi = np.int64(0x80000000)             # count(keys >= 2^31) = 0 < k
    g = min(max(guess, lo + 1), hi - 1)
    while True:
        cnt = _count_at_least(keys, g)
        if cnt < k:
            hi = g
        elif cnt <= limit:
            return g
        else:
            lo = g
        if hi - lo <= 1:
            return lo
        step = np.int64(1 << 23)
        ng = g - step if cnt < k else g + step
        if ng <= lo or ng >= hi:
            ng = (lo + hi) // 2
        g = ng


@njit(cache=True)
def _topk_pick(flat_i, keys, cand, k, tau_state, limit):
    """The k entries of largest |A| (ties: lower row-major index first), in row-major order:
    (False, _) when some |A| is not finite. O(n): a threshold search over the integer
    magnitude keys, then an exact sort of the few candidates at or above it."""
    n = flat_i.shape[0]
    top = np.int32(0)
    for j in range(n):
        v = np.int32(flat_i[j] & _ABS)
        keys[j] = v
        top = max(top, v)
    if top >= _NONFINITE:
        return False, cand[:0]
    tau = _topk_threshold(keys, k, tau_state[0], limit)
    tau_state[0] = tau
    tau32 = np.int32(tau)
    m = 0
    for j in range(n):
        if keys[j] >= tau32:
            # (largest key, then lowest index) first under an ascending sort
            cand[m] = ((np.int64(0x7FFFFFFF) - keys[j]) << 32) | j
            m += 1
    # the k smallest composite keys (largest |A|, then lowest index), O(m), then row order
    if m > k:
        best = np.partition(cand[:m], k - 1)[:k]
    else:
        best = cand[:m]
    return True, np.sort(best & np.int64(0xFFFFFFFF))


@njit(cache=True)
def _topk_write(A, k, chosen, l2p, writes, counters, stats, scale, cpw, drivers, h, w, E,
                kc):
    """Write the chosen cells (row-major flat indices): a touched row holding m of them
    (``cpw`` cells each) is programmed in ⌈m·cpw / drivers⌉ groups of cells one after
    another, each taking the row's SET + RESET pulse slots with ``scale`` > 0, else one slot.
    With a closed loop (kernels/loop.py: ``h`` not empty) each written value's projection
    h_r·A goes to ``w`` and the cell's own state E to −kc·A. Returns (distinct rows touched,
    pulse slots)."""
    cols = A.shape[1]
    flat = A.reshape(-1)
    loop = h.shape[0] > 0
    touched = 0
    last_row = -1
    mx = stats[MAX_WRITES]
    mset = np.int64(0)
    mres = np.int64(0)
    nslots = np.int64(0)
    in_row = np.int64(0)
    for q in range(k):
        j = chosen[q]
        r = j // cols
        c = j - r * cols
        p = l2p[r]
        if r != last_row and in_row > 0:         # a new row: the last one's groups are done
            groups = (in_row * cpw + drivers - 1) // drivers
            nslots += groups * (mset + mres) if scale > 0 else groups
            mset = np.int64(0)
            mres = np.int64(0)
            in_row = np.int64(0)
        in_row += 1
        if scale > 0:
            pj = _cell_pulses(flat[j], scale, stats)
            if flat[j] < 0:
                mset = max(mset, pj)
            else:
                mres = max(mres, pj)
        if loop:
            w[c] += h[r] * flat[j]
            E[r, c] -= kc * flat[j]
        flat[j] = 0.0
        writes[p, c] += 1
        mx = max(mx, writes[p, c])
        if r != last_row:
            counters[p] += 1
            touched += 1
            last_row = r
    groups = (in_row * cpw + drivers - 1) // drivers
    nslots += groups * (mset + mres) if scale > 0 else groups
    stats[MAX_WRITES] = mx
    stats[POLICY_CELLS] += k
    stats[ROW_WRITES] += touched
    return touched, nslots


@njit(cache=True, nogil=True)
def _run_topk(A, Ai, chunk, n_it, t0, l2p, p2l, writes, counters, stats, block_rows, half,
              interval, ars_on, rkey, scale, fused, seed, layer, M, P, Q, U, V, W,
              k, keys, cand, tau_state, cpw, drivers, selected, swapped, slots):
    """Conventional GS: the k entries of largest |A| (ties: lower row-major index first).

    ``selected[i]`` gets the number of distinct rows written in iteration i, ``slots[i]`` the
    pulse slots of its writes: a touched row holding m selected weights (``cpw`` cells each)
    is programmed ⌈m·cpw / drivers⌉ groups of cells one after another; with ``scale`` > 0
    (write.pulses=delta) each group takes the row's SET + RESET pulse slots, otherwise one
    slot each. Selection is O(n): a threshold search over the integer magnitude keys, then an
    exact sort of the few candidates at or above it.
    """
    rows, cols = A.shape
    n = rows * cols
    flat_i = Ai.reshape(n)
    limit = 4 * k + 64             # window for the candidates: few probes, small sort
    zbuf = _zbuf(cols, fused)
    no_h = np.empty(0, dtype=np.float32)       # no closed loop (kernels/loop.py)
    no_e = np.empty((0, 0), dtype=np.float32)
    for i in range(n_it):
        t = t0 + i
        swapped[i] = _ars_at(t, ars_on, interval, counters, l2p, p2l, writes, block_rows,
                             half, stats, rkey)
        key = _stream_key(seed, layer, t) if fused else np.uint64(0)
        step = _block_rows(cols)
        for r0 in range(0, rows, step):
            _add_rows(A, chunk, i, r0, min(rows, r0 + step), fused, key, M, P, Q, U, V, W,
                      zbuf)
        ok, chosen = _topk_pick(flat_i, keys, cand, k, tau_state, limit)
        if not ok:
            return i
        touched, nslots = _topk_write(A, k, chosen, l2p, writes, counters, stats, scale, cpw,
                                      drivers, no_h, no_h, no_e, 0.0)
        selected[i] = touched
        slots[i] = nslots
    return -1
