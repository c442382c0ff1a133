"""Update-policy kernels (DESIGN §2): local accumulation, selection, physical writes, ARS, and
the synthetic gradient generator they can consume directly (fused generate-and-select).

All kernels of the policy path live in this one file, so numba's on-disk cache never pairs a
kernel with a stale copy of a helper from another file.

Synthetic gradients: the splitmix64 finalizer (Steele et al., OOPSLA'14) of (stream key + counter
· golden ratio) gives 64 random bits per element; its four 16-bit uniforms summed (Irwin-Hall,
n = 4) and rescaled give an approximately standard normal z (kurtosis 2.7, truncated at ±√12 ≈
3.46 σ). A layer's gradient at iteration t is

    g[r, c] = (M[r, c] · P[r]) · Q[c] + (U[r] · V[c]) · z(seed, layer, t, r·cols + c)

with a persistent (or slowly changing) cell field M and per-iteration row and column factors
P, U (rows) and Q, V (cols): the stationary workloads have P = Q = 1 (exact in float32), the
fitted ones put their drift and training-phase scale there (trace/synth.py, trace/fitted.py).
A fitted workload may also give each cell its own noise scale W (rows × cols): the noise term
is then (U[r] · V[c]) · (W[r, c] · z); an empty W (shape (0, 0)) means none.
"Fused" kernels compute g in registers while accumulating it, so a synthetic run never writes
a gradient chunk to memory; the unfused generator writes the same g, bit for bit (the same
float32 operations in the same order, no FMA contraction without fastmath).

Magnitude trick: for finite float32 values, the int32 bit pattern with the sign bit cleared orders
exactly like |x|, and an integer max vectorizes where a float max does not. A cleared pattern
>= 0x7F800000 is Inf or NaN, so the same max also detects non-finite accumulators for free.
Ties resolve to the lowest index because every scan is in index order with a strict ``>``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

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
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_SQRT3 = np.float32(np.sqrt(3.0))
_INV16 = np.float32(1.0 / 65536.0)
_M16 = np.uint64(0xFFFF)
_M16X2 = np.uint64(0x0000FFFF0000FFFF)
_M32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, inline="always")
def _mix64(z):
    # splitmix64 finalizer: a bijection of 64-bit words with good avalanche
    z = (z ^ (z >> np.uint64(30))) * _C1
    z = (z ^ (z >> np.uint64(27))) * _C2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _stream_key(seed, layer, t):
    """Key of one (seed, layer, iteration) stream of synthetic noise."""
    k = _mix64(np.uint64(seed) + _GOLDEN)
    k = _mix64(k ^ (np.uint64(layer) + _GOLDEN))
    return _mix64(k ^ (np.uint64(t) * _GOLDEN))


@njit(cache=True, inline="always")
def _z(h):
    """Approx. N(0, 1) from 64 random bits: sum of four 16-bit uniforms (mean 2, variance 1/3);
    +2 centres the 16-bit grid (x + 0.5) / 65536."""
    a = (h & _M16X2) + ((h >> np.uint64(16)) & _M16X2)     # two sums of two fields (SWAR)
    s = (a & _M32) + (a >> np.uint64(32))
    return (np.float32(np.int32(s) + np.int32(2)) * _INV16 - np.float32(2.0)) * _SQRT3


@njit(cache=True, nogil=True)
def _normal_row(key, start, out):
    """out[i] = approx. N(0, 1) for element counters start .. start+len(out)-1 of stream ``key``."""
    base = key + np.uint64(start) * _GOLDEN
    for i in range(out.shape[0]):
        out[i] = _z(_mix64(base + np.uint64(i) * _GOLDEN))


@njit(cache=True, nogil=True)
def _normal_row_scaled(key, start, out, w):
    """out[i] = w[i] · z for the counters of ``_normal_row``: a cell's own noise scale applied
    where the noise is made (the hashing loop has room for one more load and multiply)."""
    base = key + np.uint64(start) * _GOLDEN
    for i in range(out.shape[0]):
        out[i] = w[i] * _z(_mix64(base + np.uint64(i) * _GOLDEN))


@njit(cache=True, nogil=True)
def _gate_block(seed, stream, t0, probs, table, slope, step, grid, scale, imp, which, u, out):
    """out[i, c] = scale[i] · imp[which[i], c] · g, g drawn by inverse CDF from a quantile
    table: ``table`` at increasing ``probs`` from 0 to 1, linear in between (``slope``: the
    table's slope on each interval; ``step``: its rise on each interval of the grid).
    ``probs`` starts with the uniform grid k / ``grid`` up to (grid - 1) / grid, so below that
    an interval is found by integer arithmetic; the few values in the finer upper tail are
    looked up by a scan. Uniforms: the two 32-bit halves x of each splitmix64 hash of stream
    (seed, stream, t0 + i), u = (x + 0.5) / 2^32. ``u``: a uint64 scratch row. The row and
    column factors of the fitted workloads (trace/fitted.py).

    On the grid, y = u · grid = (2x + 1) · grid / 2^33 is exact in float64 (an integer of at
    most 40 bits times a power of two), its interval k = ⌊y⌋ is the integer (2x + 1) · grid
    >> 33, and u >= probs[grid - 1] exactly when k = grid - 1 (for the grid of 96 in use, u, an
    odd multiple of 2^-33, is never within 2^-35 of 95/96): the same numbers as u · grid in
    floating point and a comparison with probs[grid - 1], without the float-to-unsigned
    conversions (25-30% faster; tests/test_fit.py compares both forms)."""
    last = probs.shape[0] - 2
    top = np.uint64(grid - 1)
    g = np.uint64(grid)
    inv33 = 1.0 / 8589934592.0
    inv = 1.0 / 4294967296.0
    cols = out.shape[1]
    half = (cols + 1) >> 1
    for i in range(out.shape[0]):
        key = _stream_key(seed, stream, t0 + i)
        for c2 in range(half):
            h = _mix64(key + np.uint64(c2) * _GOLDEN)
            u[2 * c2] = h & _M32
            u[2 * c2 + 1] = h >> np.uint64(32)
        row = out[i]
        base = imp[which[i]]
        si = scale[i]
        for c in range(cols):
            m = (u[c] * np.uint64(2) + np.uint64(1)) * g
            k = m >> np.uint64(33)
            if k < top:
                # signed conversions: the values are below 2^40
                y = np.float64(np.int64(m)) * inv33
                row[c] = si * base[c] * (table[k] + (y - np.float64(np.int64(k))) * step[k])
            else:                          # the upper tail: probs finer than the grid
                x = (np.float64(np.int64(u[c])) + 0.5) * inv
                j = grid - 1
                while j < last and probs[j + 1] <= x:
                    j += 1
                row[c] = si * base[c] * (table[j] + (x - probs[j]) * slope[j])


@njit(cache=True, nogil=True)
def _fitted_factors(seed, t0, probs, grid, sigma,
                    row_stream, row_table, row_slope, row_step, row_imp, row_which,
                    col_stream, col_table, col_slope, col_step, col_imp, col_which,
                    loud_stream, loud_table, loud_slope, loud_step, P, U, Q):
    """A fitted layer's row and column factors of iterations t0 .. t0+n-1 in one call (no
    Python between the draws): P = σ · row importance · row gate, Q = column importance ·
    column gate (``_gate_block`` each), and U = P · λ with λ one draw per iteration from the
    loudness table (none when ``loud_table`` is empty: U is then not written). The same
    numbers as three ``inverse_cdf_block`` calls and a float32 product."""
    n = P.shape[0]
    width = max(P.shape[1], Q.shape[1])
    scratch = np.empty(width + 1, dtype=np.uint64)
    ones = np.ones(n)
    _gate_block(seed, row_stream, t0, probs, row_table, row_slope, row_step, grid, sigma,
                row_imp, row_which, scratch, P)
    _gate_block(seed, col_stream, t0, probs, col_table, col_slope, col_step, grid, ones,
                col_imp, col_which, scratch, Q)
    if loud_table.shape[0] > 0:
        lam = np.empty((n, 1), dtype=np.float32)
        _gate_block(seed, loud_stream, t0, probs, loud_table, loud_slope, loud_step, grid,
                    ones, np.ones((1, 1), dtype=np.float32), np.zeros(n, dtype=np.int64),
                    scratch, lam)
        for i in range(n):
            li = lam[i, 0]
            Pi = P[i]
            Ui = U[i]
            for r in range(P.shape[1]):
                Ui[r] = Pi[r] * li


@njit(cache=True, nogil=True)
def _gradient_chunk(out, seed, layer, t0, M, P, Q, U, V, W):
    """out[i, r, c] = (M[r, c]·P[i, r])·Q[i, c] + (U[i, r]·V[i, c])·(W[r, c]·z(seed, layer,
    t0 + i, ...)), without W when it is empty: the unfused generator (for trace files and the
    tests of the fused kernels)."""
    n, rows, cols = out.shape
    for i in range(n):
        key = _stream_key(seed, layer, t0 + i)
        flat = out[i].reshape(rows * cols)
        _normal_row(key, 0, flat)
        if W.shape[0] > 0:
            wflat = W.reshape(rows * cols)
            for j in range(rows * cols):
                flat[j] = wflat[j] * flat[j]
        Qi = Q[i]
        Vi = V[i]
        for r in range(rows):
            row = out[i, r]
            Mr = M[r]
            p = P[i, r]
            u = U[i, r]
            for c in range(cols):
                row[c] = (Mr[c] * p) * Qi[c] + (u * Vi[c]) * row[c]


_ZBLOCK = 2048    # noise values generated per call: a long, vectorized loop; 8 KB stays in L1


@njit(cache=True, inline="always")
def _block_rows(cols):
    """Rows generated together, so the hashing loop stays long even for 16-column layers."""
    return max(1, _ZBLOCK // cols)


@njit(cache=True, inline="always")
def _add_rows(A, chunk, i, r0, r1, fused, key, M, P, Q, U, V, W, zbuf):
    """A[r0:r1] += iteration i's gradient rows: from the chunk, or generated (fused): first
    the block's noise in one flat loop (vectorized hashing), then the factors, row by row."""
    cols = A.shape[1]
    if fused:
        z = zbuf[:(r1 - r0) * cols]
        if W.shape[0] > 0:                   # a per-cell noise scale (fitted workloads)
            _normal_row_scaled(key, r0 * cols, z, W.reshape(-1)[r0 * cols:r1 * cols])
        else:
            _normal_row(key, r0 * cols, z)
        Qi = Q[i]
        Vi = V[i]
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
                Ar[c] += Gr[c]


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


@njit(cache=True)
def _accumulate_argmax_row(A, Ai, chunk, i, fused, key, M, P, Q, U, V, W, zbuf):
    """A += G_i; return (r*, max |A[r*, :]|) with the max as a sign-cleared int32 bit pattern.

    One call per iteration: each block of rows is added, then their maxima taken while they
    are still in L1.
    """
    rows, cols = A.shape
    best = np.int32(-1)
    rbest = 0
    step = _block_rows(cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        _add_rows(A, chunk, i, r0, r1, fused, key, M, P, Q, U, V, W, zbuf)
        for r in range(r0, r1):
            Air = Ai[r]
            m = np.int32(0)
            for c in range(cols):
                # the cast keeps the reduction in 32-bit lanes (numba widens & to int64)
                m = max(m, np.int32(Air[c] & _ABS))
            if m > best:
                best = m
                rbest = r
    return rbest, best


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
    zbuf = np.empty(_block_rows(cols) * cols if fused else 0, dtype=np.float32)
    for i in range(n):
        t = t0 + i
        swapped[i] = 0
        if ars_on and t >= 1 and t % interval == 0:
            before = stats[SWAPS]
            _ars(counters, l2p, p2l, writes, block_rows, half, stats, rkey, t)
            swapped[i] = stats[SWAPS] - before
        key = _stream_key(seed, layer, t) if fused else np.uint64(0)
        rbest, best = _accumulate_argmax_row(A, Ai, chunk, i, fused, key, M, P, Q, U, V, W,
                                             zbuf)
        if best >= _NONFINITE:
            return i
        if scale > 0:
            slots[i] = _row_pulses(A[rbest], scale, stats)
        A[rbest, :] = 0.0
        p = l2p[rbest]
        _bump_row(writes, p, stats)
        counters[p] += 1
        stats[POLICY_CELLS] += cols
        stats[ROW_WRITES] += 1
        selected[i] = rbest
    return -1


@njit(cache=True, nogil=True)
def _run_sgs_element(A, Ai, chunk, n, t0, l2p, p2l, writes, counters, stats, block_rows,
                     half, interval, ars_on, rkey, scale, fused, seed, layer, M, P, Q, U, V, W,
                     selected, swapped, slots):
    """Element-wise SGS over one chunk; ``selected`` gets the flat logical index r*cols+c."""
    rows, cols = A.shape
    zbuf = np.empty(_block_rows(cols) * cols if fused else 0, dtype=np.float32)
    for i in range(n):
        t = t0 + i
        swapped[i] = 0
        if ars_on and t >= 1 and t % interval == 0:
            before = stats[SWAPS]
            _ars(counters, l2p, p2l, writes, block_rows, half, stats, rkey, t)
            swapped[i] = stats[SWAPS] - before
        key = _stream_key(seed, layer, t) if fused else np.uint64(0)
        rbest, best = _accumulate_argmax_row(A, Ai, chunk, i, fused, key, M, P, Q, U, V, W,
                                             zbuf)
        if best >= _NONFINITE:
            return i
        cbest = 0
        Air = Ai[rbest]
        for c in range(cols):
            if (Air[c] & _ABS) == best:
                cbest = c
                break
        if scale > 0:
            slots[i] = _pulses(A[rbest, cbest], scale, stats)
            stats[PULSES] += slots[i]
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
    flat = A.reshape(n)
    flat_i = Ai.reshape(n)
    limit = 4 * k + 64             # window for the candidates: few probes, small sort
    zbuf = np.empty(_block_rows(cols) * cols if fused else 0, dtype=np.float32)
    for i in range(n_it):
        t = t0 + i
        swapped[i] = 0
        if ars_on and t >= 1 and t % interval == 0:
            before = stats[SWAPS]
            _ars(counters, l2p, p2l, writes, block_rows, half, stats, rkey, t)
            swapped[i] = stats[SWAPS] - before
        key = _stream_key(seed, layer, t) if fused else np.uint64(0)
        step = _block_rows(cols)
        for r0 in range(0, rows, step):
            _add_rows(A, chunk, i, r0, min(rows, r0 + step), fused, key, M, P, Q, U, V, W,
                      zbuf)
        top = np.int32(0)
        for j in range(n):
            v = np.int32(flat_i[j] & _ABS)
            keys[j] = v
            top = max(top, v)
        if top >= _NONFINITE:
            return i
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
            top = np.partition(cand[:m], k - 1)[:k]
        else:
            top = cand[:m]
        chosen = np.sort(top & np.int64(0xFFFFFFFF))
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
            if r != last_row and in_row > 0:     # a new row: the last one's groups are done
                groups = (in_row * cpw + drivers - 1) // drivers
                nslots += groups * (mset + mres) if scale > 0 else groups
                mset = np.int64(0)
                mres = np.int64(0)
                in_row = np.int64(0)
            in_row += 1
            if scale > 0:
                pj = _pulses(flat[j], scale, stats)
                stats[PULSES] += pj
                if flat[j] < 0:
                    mset = max(mset, pj)
                else:
                    mres = max(mres, pj)
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
        selected[i] = touched
        slots[i] = nslots
    return -1
