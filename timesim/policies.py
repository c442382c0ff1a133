"""Per-layer controller state and the thin wrappers around the policy kernels (DESIGN §2)."""

from __future__ import annotations

import numpy as np

from .config import HwConfig
from .errors import TraceError
from .kernels import select as K
from .kernels.loop import loop_kernel
from .mapping import cells_per_weight
from .trace.format import LayerInfo


def effective_selection(selection: str, rows: int, rct: int) -> str:
    """The hybrid ``sgs`` is element-wise below RCT rows and row-wise from RCT on."""
    if selection == "sgs":
        return "sgs-element" if rows < rct else "sgs-row"
    return selection


def topk_count(density: float, cells: int) -> int:
    """k = max(1, round(density · n)), Python's round (half to even), at most n."""
    return min(cells, max(1, round(density * cells)))


_NO_CHUNK = np.zeros((1, 1, 1), dtype=np.float32)
_F1 = np.zeros((1, 1), dtype=np.float32)
# the generator arguments of an unfused call (never read)
_NO_CELLSCALE = np.zeros((0, 0), dtype=np.float32)
_NO_SOURCE = (np.int64(0), np.int64(0), np.int64(0), _F1, _F1, _F1, _F1, _F1, _NO_CELLSCALE)


class LayerPolicy:
    """Residual accumulator, physical write counts, row counters and row map of one layer."""

    def __init__(self, layer: LayerInfo, hw: HwConfig, index: int = 0):
        c = hw.controller
        self.layer = layer
        self.selection = effective_selection(c.selection, layer.rows, c.rct)
        self.ars_on = c.wear_leveling in ("ars", "ars-random")
        self.rkey = (K.ars_random_key(c.seed, index) if c.wear_leveling == "ars-random"
                     else np.uint64(0))
        self.interval = c.interval
        self.half = c.rows // 2
        self.block_rows = hw.xbar.rows
        rows, cols = layer.rows, layer.cols
        self.k = topk_count(c.topk_density, layer.cells) if self.selection == "topk" else 0
        self.A = np.zeros((rows, cols), dtype=np.float32) if self.selection != "dense" else None
        self.writes = np.zeros((rows, cols), dtype=np.int64)
        self.counters = np.zeros(rows, dtype=np.int64)
        self.l2p = np.arange(rows, dtype=np.int64)
        self.p2l = np.arange(rows, dtype=np.int64)
        self.stats = np.zeros(K.N_STATS, dtype=np.int64)
        # sgs-row: > 1 runs each iteration's rows on that many of numba's threads (one layer
        # on every core; set by Simulation for a layer too big to balance); same results
        self.split = 1
        # generated rows hashed in the loop that adds them (kernels/select.py STREAM): set by
        # Simulation when the network's accumulators are streamed from memory
        self.stream_rows = False
        # sgs-row layers from K.TB_CELLS cells on run K.TB_STEPS iterations per pass over
        # their rows (temporal blocking; the same results; False: one pass an iteration)
        self.temporal = True
        self.iterations = 0
        self._dense_pending = 0
        if self.selection == "topk":
            self._keys = np.empty(layer.cells, dtype=np.int32)
            self._cand = np.empty(layer.cells, dtype=np.int64)
            self._tau = np.zeros(1, dtype=np.int64)
        self.loop_f: np.ndarray | None = None    # the closed loop's state (kernels/loop.py)
        self.loop_e: np.ndarray | None = None
        self._loop = None
        self.selected = np.empty(0, dtype=np.int64)
        self.swapped = np.empty(0, dtype=np.int64)
        self.slots = np.empty(0, dtype=np.int64)
        self._last = 0
        w = hw.write
        # topk: a touched row's selected weights are programmed in groups of at most
        # write.drivers_per_xbar cells (kernels count the groups: pulse slots)
        sides, slices = cells_per_weight(hw)
        self.cpw = np.int64(sides * slices)
        self.drivers = np.int64(w.drivers_per_xbar)
        # write.pulses=delta: a written weight moves by lr·|v| / step levels, one pulse a level
        self.scale = (w.learning_rate / (w.weight_range / (2 ** hw.xbar.weight_bits - 1))
                      if w.pulses == "delta" else 0.0)

    @property
    def needs_gradients(self) -> bool:
        """Dense writes every cell whatever the gradient; only pulse counting needs it."""
        return self.selection != "dense" or self.scale > 0

    def process(self, chunk: np.ndarray, t0: int) -> None:
        """Apply iterations t0 .. t0+n-1; ``chunk`` is float32 (n, rows, cols)."""
        n = chunk.shape[0]
        self._reserve(t0, n)
        if self.selection == "dense":
            # Every row gets one write operation per iteration, so all counters stay equal and
            # ARS (which swaps only where counter(hot) > counter(cold)) never swaps: the write
            # matrix is exactly `iterations` everywhere, applied lazily in finish().
            if self.scale > 0:
                self._dense_pulses(chunk)
            self._dense_pending += n
            self.iterations += n
            self._last = n
            return
        self._last = n
        self._kernel(chunk, n, t0, 0, _NO_SOURCE)
        self.iterations += n

    def process_half(self, bits: np.ndarray, t0: int) -> None:
        """Apply iterations t0 .. t0+n-1 of a float16 chunk given as its uint16 bit patterns
        (n, rows, cols): the kernel decodes each row as it adds it (no float32 copy of the
        chunk); the same results as ``process`` on the chunk converted to float32."""
        if self.selection == "dense":
            from .kernels.convert import to_float32

            self.process(to_float32(bits.view(np.float16), "float16"), t0)
            return
        n = bits.shape[0]
        self._reserve(t0, n)
        self._last = n
        self._kernel(bits, n, t0, 0, _NO_SOURCE)
        self.iterations += n

    def _reserve(self, t0: int, n: int) -> None:
        """Check that iterations continue where they stopped; size the per-iteration
        signature buffers for n."""
        if t0 != self.iterations:
            raise ValueError(f"layer {self.layer.name}: expected iteration {self.iterations}, "
                             f"got {t0}")
        if self.slots.shape[0] < n:
            self.slots = np.zeros(n, dtype=np.int64)
        if self.selected.shape[0] < n:
            self.selected = np.empty(n, dtype=np.int64)
            self.swapped = np.empty(n, dtype=np.int64)

    def process_source(self, seed: int, layer: int, pieces, t0: int, n: int,
                       loop=None, gen: int = 1) -> None:
        """Apply iterations t0 .. t0+n-1 of a synthetic layer, generated inside the policy
        kernel (fused: no gradient chunk in memory). ``pieces``: consecutive (ta, m, M, P, Q,
        U, V, W) covering the n iterations (kernels/select.py); ``gen``: the generator (1 or
        2, kernels/generate.py); the results are those of ``process`` on the chunk the
        generator would write. ``loop``: (h, ρ, κ, κ_cell, ρ_cell) of a closed-loop fitted
        workload (kernels/loop.py; generator 1), its states ``loop_f``, ``loop_e`` kept
        here."""
        self._loop = loop
        if loop is not None and self.loop_f is None:
            self.loop_f = np.zeros(self.layer.cols, dtype=np.float32)
            self.loop_e = np.zeros((self.layer.rows, self.layer.cols), dtype=np.float32)
        if self.selection == "dense" and self.scale == 0:
            self.process(np.empty((n, 0, 0), dtype=np.float32), t0)
            return
        self._reserve(t0, n)
        if self.selection == "dense":
            # pulse counting on a dense update needs the values: generate them
            out = np.empty((n, self.layer.rows, self.layer.cols), dtype=np.float32)
            from .kernels.synth import gradient_chunk

            for ta, m, *src in pieces:
                gradient_chunk(out[ta - t0:ta - t0 + m], seed, layer, ta, *src, gen=gen)
            self.process(out, t0)
            return
        self._last = n
        done = 0
        for ta, m, *src in pieces:
            if ta != t0 + done:
                raise ValueError(f"layer {self.layer.name}: pieces must be consecutive")
            flag, src = self._generator(gen, loop, tuple(src))
            self._kernel(_NO_CHUNK, m, ta, done,
                         (np.int64(flag), np.int64(seed), np.int64(layer), *src))
            done += m
        if done != n:
            raise ValueError(f"layer {self.layer.name}: pieces cover {done} of {n} iterations")
        self.iterations += n

    def _generator(self, gen: int, loop, src: tuple) -> tuple[int, tuple]:
        """The kernels' ``fused`` argument and generator arguments (M, P, Q, U, V, W): the
        generator, plus K.UNIT when the piece's factors P and Q are all 1, and K.STREAM when
        rows are to be hashed in the add (``stream_rows``; generator 2 only on rows of even
        length, two values per hash, with unit factors); else, for generator 2 with unit
        factors on rows narrower than K.CELLUV_COLS whose U and V stay the same over the
        piece, K.CELLUV with W = U·V per cell (float32 products, as the kernels make them);
        none for the closed loop. The same values either way."""
        if loop is not None:
            return gen, src
        M, P, Q, U, V, W = src
        unit = bool((P == 1).all() and (Q == 1).all())
        flag = gen | (K.UNIT if unit else 0)
        if self.stream_rows and (gen == 1 or (unit and self.layer.cols % 2 == 0)):
            return flag | K.STREAM, src
        if (gen == 2 and unit and W.shape[0] == 0 and self.layer.cols < K.CELLUV_COLS
                and K._LITTLE and (U == U[:1]).all() and (V == V[:1]).all()):
            # each cell's noise factor made once for the piece: narrow rows added flat
            # (little-endian: the kernel reads a hash's two values as its int32 halves)
            return flag | K.CELLUV, (M, P, Q, U, V, U[0][:, None] * V[0][None, :])
        return flag, src

    def _kernel(self, chunk, n: int, t0: int, off: int, src) -> None:
        """Run the policy kernel on iterations t0 .. t0+n-1 into signature slots off .. off+n-1."""
        args = (self.A, self.A.view(np.int32), chunk, np.int64(n), np.int64(t0), self.l2p,
                self.p2l, self.writes, self.counters, self.stats, self.block_rows, self.half,
                self.interval, self.ars_on, self.rkey, np.float64(self.scale), *src)
        out = (self.selected[off:off + n], self.swapped[off:off + n], self.slots[off:off + n])
        if self._loop is not None and src[0]:
            bad = loop_kernel(self, args, src, out)
        elif self.selection == "sgs-row" and self.temporal and self.scale == 0 \
                and self.layer.cells >= K.TB_CELLS:
            # K.TB_STEPS iterations per pass over the rows (kernels/select.py): the same results
            if self.split > 1:
                bad = K._run_sgs_row_tb_split(*args, *out, np.int64(self.split))
            else:
                bad = K._run_sgs_row_tb(*args, *out)
        elif self.selection == "sgs-row" and self.split > 1:
            bad = K._run_sgs_row_split(*args, *out, np.int64(self.split))
        elif self.selection == "sgs-row":
            bad = K._run_sgs_row(*args, *out)
        elif self.selection == "sgs-element":
            bad = K._run_sgs_element(*args, *out)
        else:
            bad = K._run_topk(*args, self.k, self._keys, self._cand, self._tau, self.cpw,
                              self.drivers, *out)
        if bad >= 0:
            raise TraceError(self._nonfinite(chunk, bad, t0))

    def _nonfinite(self, chunk, bad: int, t0: int) -> str:
        """The error for iteration t0 + bad: a non-finite gradient in the chunk, or finite
        gradients whose float32 accumulation overflowed (what --nonfinite cannot skip)."""
        where = f"layer {self.layer.name}: iteration {t0 + bad}"
        if chunk is _NO_CHUNK:          # generated in the kernel: the values are not at hand
            return f"{where}: non-finite gradient or accumulator (NaN or Inf)"
        if chunk.dtype == np.uint16:          # float16 bit patterns: exponent all ones
            if ((chunk[bad] & 0x7C00) == 0x7C00).any():
                return f"{where}: non-finite gradient (NaN or Inf)"
            g = chunk[bad].view(np.float16)
        elif not np.isfinite(chunk[bad]).all():
            return f"{where}: non-finite gradient (NaN or Inf)"
        else:
            g = chunk[bad]
        size = f", |g| up to {float(np.abs(g).max()):.3g} there"
        return (f"{where}: the accumulated gradient overflowed float32 (Inf) although the "
                f"gradients are finite{size}; values this large cannot be accumulated: check "
                f"the gradients' scale (e.g. an AMP loss scale left in the recording)")

    def _dense_pulses(self, chunk: np.ndarray) -> None:
        """write.pulses=delta on a dense update: every weight moves by lr·|g| / step levels;
        a row's SET and RESET phases last as long as their longest cell, the rows of a row
        block are written one after another and the row blocks in parallel: the iteration's
        pulse slots are the largest row block's sum."""
        g = np.asarray(chunk, dtype=np.float64)
        if not np.isfinite(g).all():
            bad = int(np.argmin(np.isfinite(g).reshape(g.shape[0], -1).all(axis=1)))
            raise TraceError(f"layer {self.layer.name}: iteration {self.iterations + bad}: "
                             f"non-finite gradient (NaN or Inf)")
        x = np.abs(g) * self.scale
        self.stats[K.CAPPED] += int((x > K._MAX_PULSES).sum())
        p = np.minimum(np.ceil(x), K._MAX_PULSES).astype(np.int64)
        self.stats[K.PULSES] += int(p.sum())
        mset = np.where(g < 0, p, 0).max(axis=2)
        mres = np.where(g >= 0, p, 0).max(axis=2)
        per_row = mset + mres                                  # (n, rows)
        n, rows = per_row.shape
        X = self.block_rows
        blocks = -(-rows // X)
        pad = np.zeros((n, blocks * X), dtype=np.int64)
        pad[:, :rows] = per_row
        self.slots[:n] = pad.reshape(n, blocks, X).sum(axis=2).max(axis=1)

    _STATE = ("A", "writes", "counters", "l2p", "p2l", "stats")

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to continue exactly where this layer is (for checkpoints)."""
        out = {k: getattr(self, k) for k in self._STATE if getattr(self, k) is not None}
        out["scalars"] = np.array([self.iterations, self._dense_pending], dtype=np.int64)
        if self.selection == "topk":
            out["tau"] = self._tau
        if self.loop_f is not None:
            out["loop_f"], out["loop_e"] = self.loop_f, self.loop_e
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for k in self._STATE:
            if getattr(self, k) is not None:
                have = getattr(self, k)
                new = state[k]
                if k == "stats" and new.shape[0] < have.shape[0]:   # counters added since
                    new = np.concatenate([new, np.zeros(have.shape[0] - new.shape[0],
                                                        dtype=new.dtype)])
                if new.shape != have.shape or new.dtype != have.dtype:
                    raise ValueError(f"{k}: {new.shape} {new.dtype}, expected {have.shape} "
                                     f"{have.dtype}")
                have[...] = new
        self.iterations, self._dense_pending = (int(x) for x in state["scalars"])
        if self.selection == "topk":
            self._tau[...] = state["tau"]
        if "loop_f" in state:
            self.loop_f = np.array(state["loop_f"], dtype=np.float32)
            self.loop_e = np.array(state["loop_e"], dtype=np.float32)

    def write_signature(self, out_ops: np.ndarray, out_swaps: np.ndarray,
                        out_slots: np.ndarray | None = None) -> None:
        """Per iteration of the last chunk: write operations and ARS swaps (for the engine);
        ``out_slots`` the pulse slots of the iteration's writes (write.pulses=delta, and topk's
        groups of cells per touched row), -1 where the engine's fixed write time applies."""
        n = self._last
        if out_slots is not None:
            # -1: the engine's fixed write time; topk always counts its pulse slots
            out_slots[:n] = self.slots[:n] if self.scale > 0 or self.selection == "topk" else -1
        if self.selection == "dense":
            out_ops[:n] = self.layer.rows
            out_swaps[:n] = 0
        elif self.selection == "topk":
            out_ops[:n] = self.selected[:n]          # distinct rows touched
            out_swaps[:n] = self.swapped[:n]
        else:
            out_ops[:n] = 1
            out_swaps[:n] = self.swapped[:n]

    def finish(self) -> None:
        """Apply deferred dense writes; call before reading writes/counters/stats."""
        p = self._dense_pending
        if p:
            self.writes += p
            self.counters += p
            self.stats[K.POLICY_CELLS] += p * self.layer.cells
            self.stats[K.ROW_WRITES] += p * self.layer.rows
            self.stats[K.MAX_WRITES] = int(self.writes.max())
            self._dense_pending = 0

    @property
    def max_writes(self) -> int:
        return int(self.stats[K.MAX_WRITES]) + self._dense_pending

    @property
    def policy_cell_writes(self) -> int:
        return int(self.stats[K.POLICY_CELLS]) + self._dense_pending * self.layer.cells

    @property
    def swaps(self) -> int:
        return int(self.stats[K.SWAPS])

    @property
    def ars_cells(self) -> int:
        return int(self.stats[K.ARS_CELLS])

    @property
    def weight_pulses(self) -> int:
        """write.pulses=delta: Σ over written weights of their pulses."""
        return int(self.stats[K.PULSES])

    @property
    def pulses_capped(self) -> int:
        """write.pulses=delta: written weights whose pulse count was capped at 2^20."""
        return int(self.stats[K.CAPPED])

    @property
    def row_writes(self) -> int:
        return int(self.stats[K.ROW_WRITES]) + self._dense_pending * self.layer.rows
