"""Closed-loop policy kernels (``synth:fit?...&loop=on``; docs/fidelity.md, "The closed loop").

The fitted workload's gradient of cell (r, c) at iteration t is its open-loop part (the fused
generator of kernels/generate.py, exactly as in kernels/select.py) plus a state that the chip's
own writes change:

    g_t[r, c] = open_t[r, c] + h_r · f_t[c] + E_t[r, c]
    f_{t+1}[c] = ρ · f_t[c] − κ · Σ_{r written at t} h_r · A_t[r, c]
    E_{t+1}[r, c] = ρ_cell · E_t[r, c] − κ_cell · A_t[r, c]   (the last term if written at t)

h (rows, Σ h² = 1) is the layer's leading input direction (the principal eigenvector of the
recorded gradient's row covariance), f (cols) one state per output column (the part of the
output unit's error that the chip's writes have already corrected: a write of A moves the
weights by −lr·A and the gradient answers), κ the fraction of a written projection that comes
back in the next iteration and ρ the state's persistence per iteration; E (rows × cols) the
cell's own answer to its writes (the weight stays where the write put it), κ_cell its gain and
ρ_cell its persistence (trace/loopfit.py fits all of them from a dense recording). The states
are a function of the run (of what was written), not of (seed, layer, iteration): they live in
the layer's policy state (``LayerPolicy.loop_f``, ``loop_e``), checkpointed with it, and a
layer's iterations run in order whatever the chunking or threads.

The kernels are kernels/select.py's three policy kernels with the loop added: the same
generator, accumulation, selection, writes, ARS and statistics (with κ = κ_cell = 0 they give
the open loop's results exactly; tests/test_loop.py). They call select.py's and generate.py's
jitted functions across files; numba's cache keys a kernel on its own file only, so
``_DEPS_SHA256`` below is the hash of those two files and tests/test_loop.py fails until it is
updated (which invalidates this file's cache).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .generate import _stream_key
from .select import (
    _NONFINITE,
    MAX_WRITES,
    POLICY_CELLS,
    ROW_WRITES,
    _ars_at,
    _block_rows,
    _bump_row,
    _cell_pulses,
    _first_col,
    _noise_block,
    _row_abs_max,
    _row_pulses,
    _topk_pick,
    _topk_write,
)

# sha256 of kernels/select.py + kernels/generate.py (see above)
_DEPS_SHA256 = "7dc2aa09c6f7849ee88013881e73bf75eb9b8afd063b3fdf63d94bce8b774d40"


@njit(cache=True, inline="always")
def _add_rows_loop(A, i, r0, r1, key, M, P, Q, U, V, W, zbuf, h, f, E, rc):
    """A[r0:r1] += iteration i's generated rows (kernels/select.py ``_add_rows``) + h_r·f_c
    + E_rc; then E_rc *= ρ_cell."""
    cols = A.shape[1]
    z = _noise_block(key, r0, r1, cols, zbuf, W, 1)        # fitted workloads: generator 1
    Qi = Q[i]
    Vi = V[i]
    for r in range(r0, r1):
        Ar = A[r]
        Mr = M[r]
        zr = z[(r - r0) * cols:(r - r0 + 1) * cols]
        p = P[i, r]
        u = U[i, r]
        hr = h[r]
        Er = E[r]
        for c in range(cols):
            Ar[c] += (((Mr[c] * p) * Qi[c] + (u * Vi[c]) * zr[c]) + hr * f[c]) + Er[c]
            Er[c] *= rc


@njit(cache=True, inline="always")
def _settle(f, w, rho, kappa):
    """The state after an iteration's writes (w: their projections, reset to 0)."""
    for c in range(f.shape[0]):
        f[c] = rho * f[c] - kappa * w[c]
        w[c] = 0.0


@njit(cache=True)
def _accumulate_argmax_row_loop(A, Ai, i, key, M, P, Q, U, V, W, zbuf, h, f, E, rc):
    """select.py's ``_accumulate_argmax_row`` on the closed-loop gradient."""
    rows, cols = A.shape
    best = np.int32(-1)
    rbest = 0
    step = _block_rows(cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        _add_rows_loop(A, i, r0, r1, key, M, P, Q, U, V, W, zbuf, h, f, E, rc)
        for r in range(r0, r1):
            m = _row_abs_max(Ai[r])
            if m > best:
                best = m
                rbest = r
    return rbest, best


@njit(cache=True, nogil=True)
def _loop_sgs(A, Ai, n, t0, l2p, p2l, writes, counters, stats, block_rows, half, interval,
              ars_on, rkey, scale, seed, layer, M, P, Q, U, V, W, h, f, rho, kappa, E, kc,
              rc, element, selected, swapped, slots):
    """SGS over one chunk (row-wise, or element-wise with ``element``) on the closed-loop
    gradient: select.py's ``_run_sgs_row`` / ``_run_sgs_element`` with the state f."""
    rows, cols = A.shape
    zbuf = np.empty(_block_rows(cols) * cols, dtype=np.float32)
    w = np.zeros(cols, dtype=np.float32)
    for i in range(n):
        t = t0 + i
        swapped[i] = _ars_at(t, ars_on, interval, counters, l2p, p2l, writes, block_rows,
                             half, stats, rkey)
        key = _stream_key(seed, layer, t)
        rbest, best = _accumulate_argmax_row_loop(A, Ai, i, key, M, P, Q, U, V, W, zbuf, h, f,
                                                  E, rc)
        if best >= _NONFINITE:
            return i
        p = l2p[rbest]
        hr = h[rbest]
        if element:
            cbest = _first_col(Ai[rbest], best)
            if scale > 0:
                slots[i] = _cell_pulses(A[rbest, cbest], scale, stats)
            w[cbest] += hr * A[rbest, cbest]
            E[rbest, cbest] -= kc * A[rbest, cbest]
            A[rbest, cbest] = 0.0
            writes[p, cbest] += 1
            stats[MAX_WRITES] = max(stats[MAX_WRITES], writes[p, cbest])
            stats[POLICY_CELLS] += 1
            selected[i] = rbest * cols + cbest
        else:
            if scale > 0:
                slots[i] = _row_pulses(A[rbest], scale, stats)
            Ar = A[rbest]
            Er = E[rbest]
            for c in range(cols):
                w[c] += hr * Ar[c]
                Er[c] -= kc * Ar[c]
                Ar[c] = 0.0
            _bump_row(writes, p, stats)
            stats[POLICY_CELLS] += cols
            selected[i] = rbest
        counters[p] += 1
        stats[ROW_WRITES] += 1
        _settle(f, w, rho, kappa)
    return -1


@njit(cache=True, nogil=True)
def _loop_topk(A, Ai, n_it, t0, l2p, p2l, writes, counters, stats, block_rows, half,
               interval, ars_on, rkey, scale, seed, layer, M, P, Q, U, V, W, h, f, rho, kappa,
               E, kc, rc, k, keys, cand, tau_state, cpw, drivers, selected, swapped, slots):
    """Conventional GS (select.py's ``_run_topk``) on the closed-loop gradient."""
    rows, cols = A.shape
    n = rows * cols
    flat_i = Ai.reshape(n)
    limit = 4 * k + 64
    zbuf = np.empty(_block_rows(cols) * cols, dtype=np.float32)
    w = np.zeros(cols, dtype=np.float32)
    for i in range(n_it):
        t = t0 + i
        swapped[i] = _ars_at(t, ars_on, interval, counters, l2p, p2l, writes, block_rows,
                             half, stats, rkey)
        key = _stream_key(seed, layer, t)
        step = _block_rows(cols)
        for r0 in range(0, rows, step):
            _add_rows_loop(A, i, r0, min(rows, r0 + step), key, M, P, Q, U, V, W, zbuf, h, f,
                           E, rc)
        ok, chosen = _topk_pick(flat_i, keys, cand, k, tau_state, limit)
        if not ok:
            return i
        touched, nslots = _topk_write(A, k, chosen, l2p, writes, counters, stats, scale, cpw,
                                      drivers, h, w, E, kc)
        selected[i] = touched
        slots[i] = nslots
        _settle(f, w, rho, kappa)
    return -1


def loop_kernel(policy, args, src, out) -> int:
    """Run ``policy``'s (policies.LayerPolicy) kernel on the closed-loop gradient: ``args``
    and ``out`` as for select.py's kernels, ``src`` the fused generator's arguments (fused,
    seed, layer, M, P, Q, U, V, W); the state ``policy.loop_f`` is updated in place."""
    h, rho, kappa, kc, rc = policy._loop
    A, Ai, _, n, t0 = args[:5]
    rest = args[5:len(args) - len(src)]        # l2p .. scale
    gen = src[1:]
    state = (h, policy.loop_f, np.float32(rho), np.float32(kappa), policy.loop_e,
             np.float32(kc), np.float32(rc))
    if policy.selection == "topk":
        return _loop_topk(A, Ai, n, t0, *rest, *gen, *state, policy.k, policy._keys,
                          policy._cand, policy._tau, policy.cpw, policy.drivers, *out)
    return _loop_sgs(A, Ai, n, t0, *rest, *gen, *state,
                     policy.selection == "sgs-element", *out)
