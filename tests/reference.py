"""Slow, obvious numpy twins of the policy kernels (DESIGN §2), written from the spec alone."""

from __future__ import annotations

import math

import numpy as np


def float16_bits_to_value(h: int) -> float:
    """IEEE half from its bit pattern, by the textbook formula."""
    sign = -1.0 if h & 0x8000 else 1.0
    exp = (h >> 10) & 0x1F
    man = h & 0x3FF
    if exp == 0x1F:
        return sign * np.inf if man == 0 else np.nan
    if exp == 0:
        return sign * man * 2.0**-24
    return sign * (1 + man / 1024) * 2.0 ** (exp - 15)


def bfloat16_bits_to_value(b: int) -> float:
    sign = -1.0 if b & 0x8000 else 1.0
    exp = (b >> 7) & 0xFF
    man = b & 0x7F
    if exp == 0xFF:
        return sign * np.inf if man == 0 else np.nan
    if exp == 0:
        return sign * man * 2.0**-133
    return sign * (1 + man / 128) * 2.0 ** (exp - 127)


M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    """splitmix64's finalizer on Python ints."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def random_rank(seed: int, layer: int, t: int, p: int) -> int:
    """ars-random's secret order of candidate cold row p at ARS time t (docs/security.md)."""
    key = mix64(mix64((seed + GOLDEN) & M64) ^ (layer + 1))
    return mix64((key + mix64(t) + p * GOLDEN) & M64)


class RefLayer:
    """One layer under one policy, iteration by iteration, with Python loops where clearer."""

    def __init__(self, rows, cols, selection, *, rct=128, density=0.001, wear_leveling="none",
                 interval=1024, R=32, block_rows=128, seed=0, layer=0, scale=0.0,
                 write_group=(1, 1 << 30)):
        if selection == "sgs":
            selection = "sgs-element" if rows < rct else "sgs-row"
        self.rows, self.cols, self.selection = rows, cols, selection
        self.density, self.ars = density, wear_leveling in ("ars", "ars-random")
        self.random, self.seed, self.layer = wear_leveling == "ars-random", seed, layer
        self.interval, self.R, self.block_rows = interval, R, block_rows
        self.A = np.zeros((rows, cols), np.float32)
        self.writes = np.zeros((rows, cols), np.int64)
        self.counters = np.zeros(rows, np.int64)
        self.l2p = list(range(rows))
        self.p2l = list(range(rows))
        self.policy_cells = 0
        self.swaps = 0
        self.ars_cells = 0
        self.selected = []
        self.t = 0
        self.scale = scale          # write.pulses=delta: levels per unit of written value
        # topk: (cells per weight, drivers): a touched row's m selected weights are written in
        # ceil(m * cells per weight / drivers) groups, each taking the row's pulse slots
        self.cpw, self.drivers = write_group
        self.pulses = 0
        self.slots = []

    def _p(self, v):
        return int(math.ceil(abs(float(v)) * self.scale))

    def _phases(self, values):
        """max SET pulses (v < 0) + max RESET pulses (v >= 0) over a written row's values."""
        ps = [self._p(v) for v in values]
        self.pulses += sum(ps)
        up = max([p for p, v in zip(ps, values) if v < 0], default=0)
        down = max([p for p, v in zip(ps, values) if v >= 0], default=0)
        return up + down

    def _ars(self, t):
        for start in range(0, self.rows, self.block_rows):
            x = min(self.block_rows, self.rows - start)
            h = min(self.R // 2, x // 2)
            idx = list(range(start, start + x))
            hot = sorted(idx, key=lambda p: (-self.counters[p], p))[:h]
            rest = [p for p in idx if p not in hot]
            if self.random:
                cold = sorted(rest, key=lambda p: random_rank(self.seed, self.layer, t, p))[:h]
            else:
                cold = sorted(rest, key=lambda p: (self.counters[p], p))[:h]
            for a, b in zip(hot, cold):
                if self.counters[a] > self.counters[b]:
                    la, lb = self.p2l[a], self.p2l[b]
                    self.p2l[a], self.p2l[b] = lb, la
                    self.l2p[la], self.l2p[lb] = b, a
                    self.writes[a, :] += 1
                    self.writes[b, :] += 1
                    self.counters[a] += 1
                    self.counters[b] += 1
                    self.swaps += 1
                    self.ars_cells += 2 * self.cols

    def step(self, G):
        t = self.t
        self.t += 1
        if self.ars and t >= 1 and t % self.interval == 0:
            self._ars(t)
        n = self.rows * self.cols
        if self.selection == "dense":
            self.writes += 1
            self.counters += 1
            self.policy_cells += n
            if self.scale:
                per_row = [self._phases(list(np.asarray(G, np.float32)[r]))
                           for r in range(self.rows)]
                self.slots.append(max(sum(per_row[b:b + self.block_rows])
                                      for b in range(0, self.rows, self.block_rows)))
            return
        self.A += np.asarray(G, np.float32)
        mag = np.abs(self.A)
        if self.selection == "sgs-row":
            r = int(np.argmax(mag.max(axis=1)))           # argmax: first (lowest) on ties
            if self.scale:
                self.slots.append(self._phases(list(self.A[r])))
            p = self.l2p[r]
            self.writes[p, :] += 1
            self.counters[p] += 1
            self.A[r, :] = 0
            self.policy_cells += self.cols
            self.selected.append(r)
        elif self.selection == "sgs-element":
            j = int(np.argmax(mag))                       # row-major, first on ties
            r, c = divmod(j, self.cols)
            if self.scale:
                self.slots.append(self._phases([self.A[r, c]]))
            p = self.l2p[r]
            self.writes[p, c] += 1
            self.counters[p] += 1
            self.A[r, c] = 0
            self.policy_cells += 1
            self.selected.append(j)
        elif self.selection == "topk":
            k = min(n, max(1, round(self.density * n)))
            flat = mag.ravel()
            order = sorted(range(n), key=lambda j: (-flat[j], j))[:k]
            by_row = {}
            for j in sorted(order):
                by_row.setdefault(j // self.cols, []).append(self.A.ravel()[j])
            groups = {r: math.ceil(len(v) * self.cpw / self.drivers) for r, v in by_row.items()}
            if self.scale:
                self.slots.append(sum(groups[r] * self._phases(v) for r, v in by_row.items()))
            else:
                self.slots.append(sum(groups.values()))
            rows_hit = set()
            for j in order:
                r, c = divmod(j, self.cols)
                self.writes[self.l2p[r], c] += 1
                self.A[r, c] = 0
                rows_hit.add(r)
            for r in rows_hit:
                self.counters[self.l2p[r]] += 1
            self.policy_cells += k
            self.selected.append(len(rows_hit))
        else:
            raise ValueError(self.selection)


def run_reference(G, selection, **kw) -> RefLayer:
    """G: (T, rows, cols) float32."""
    layer = RefLayer(G.shape[1], G.shape[2], selection, **kw)
    for t in range(G.shape[0]):
        layer.step(G[t])
    return layer


_M64 = (1 << 64) - 1


def _mix64_np(z):
    """splitmix64's finalizer on uint64 arrays (numpy wraps multiplication mod 2^64)."""
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def ref_noise(seed, stream, batch, width):
    """Read-noise normals (docs/analog.md), written from the description: key = mix(mix(seed +
    G) ^ (stream + G)); element (b, j) hashes pair p = (b // 2)·width + j as mix(key + p·G) and
    takes the low 32 bits for even b, the high ones for odd b; the normal is (sum of the four
    bytes − 510) / sqrt(4·(256² − 1)/12), in float32."""
    g = 0x9E3779B97F4A7C15
    with np.errstate(over="ignore"):
        k = int(_mix64_np((seed + g) & _M64))
        key = int(_mix64_np(k ^ ((stream + g) & _M64)))
        b = np.arange(batch)[:, None]
        j = np.arange(width)[None, :]
        p = ((b // 2) * width + j).astype(np.uint64)
        z = _mix64_np(np.uint64(key) + p * np.uint64(g))
    half = np.where(b % 2 == 0, z & np.uint64(0xFFFFFFFF), z >> np.uint64(32))
    s = sum((half >> np.uint64(8 * i)) & np.uint64(0xFF) for i in range(4)).astype(np.int32)
    inv_sd = np.float32(1.0 / np.sqrt(4 * (256**2 - 1) / 12))
    return (s.astype(np.float32) - np.float32(510.0)) * inv_sd


def ref_mvm(x, w, hw, stuck=None, seed=None, steps=None):
    """Plain numpy twin of timesim.analog.mvm without programming variation (docs/analog.md).

    With read noise, ``seed`` is the mvm's seed (noise from ``ref_noise``). ``steps``: the ADC
    step of each (input slice, weight slice), in level units; None: from a numeric
    ``adc.range``.
    """
    x = np.asarray(x, np.float32)
    w = np.asarray(w, np.float32)
    B, rows = x.shape
    cols = w.shape[1]
    wb, cb, X = hw.xbar.weight_bits, hw.xbar.cell_bits, hw.xbar.rows
    ib, db = hw.dac.input_bits, hw.dac.bits
    diff = hw.xbar.cells_per_weight == 2
    L1 = 2**cb - 1
    w_scale = float(np.abs(w).max() or 1.0) / (2**wb - 1)
    q = np.rint(w.astype(np.float64) / w_scale).astype(np.int64)
    offset = 0 if diff else 2**wb
    nbits = wb if diff else wb + 1
    S = -(-nbits // cb)

    def digits(m):                       # base-2^cb digits, least significant first
        out = []
        for _ in range(S):
            out.append(m % (L1 + 1))
            m = m // (L1 + 1)
        return out

    def pin(levels, st):                 # a stuck cell reads its bound: SA0 Gmin, SA1 Gmax
        return np.where(st == 1, 0, np.where(st == 2, L1, levels))

    if stuck is not None and np.ndim(stuck) == 3:            # per cell: (sides·S, rows, cols)
        if diff:
            pos, neg = digits(np.maximum(q, 0)), digits(np.maximum(-q, 0))
            d = [pin(pos[s], stuck[s]) - pin(neg[s], stuck[S + s]) for s in range(S)]
        else:
            d = [pin(di, stuck[s]) for s, di in enumerate(digits(q + offset))]
    elif diff:
        d = [p - n for p, n in zip(digits(np.maximum(q, 0)), digits(np.maximum(-q, 0)))]
    else:
        d = digits(q + offset)
    if stuck is not None and np.ndim(stuck) == 2:            # per weight: every cell
        d = [np.where(stuck == 1, 0, np.where(stuck == 2, 0 if diff else L1, di)) for di in d]
    xmax = np.abs(x).max(axis=1)
    xmax[xmax == 0] = 1.0
    x_scale32 = (xmax / np.float32(2**ib - 1)).astype(np.float32)
    x_scale = x_scale32.astype(np.float64)
    inv = (1.0 / x_scale32.astype(np.float64)).astype(np.float32)   # rounded once
    mag = np.rint(np.abs(x) * inv[:, None]).astype(np.int64)            # float32 product
    sgn = np.where(x >= 0, 1, -1).astype(np.int64)
    full = X * (2**db - 1) * L1                       # the largest column current
    M = 2 ** (hw.adc.bits - 1) - 1
    n_in = -(-ib // db)
    if steps is None:
        steps = np.full((n_in, S), full * hw.adc.range / M)
    acc = np.zeros((B, cols))
    vsum = (mag * sgn).sum(axis=1)
    stream = 0
    for k in range(n_in):
        v = ((mag // 2 ** (db * k)) % 2**db) * sgn
        codes = np.zeros((S, B, cols))                  # Σ over row blocks, exact integers
        for r0 in range(0, rows, X):
            z = ref_noise(seed, stream, B, S * cols) if hw.adc.read_noise > 0 else None
            stream += 1
            for s in range(S):
                step = float(steps[k, s])
                inv_step = np.float32(1.0 / step)
                noise_code = np.float32(hw.adc.read_noise * full / step)
                current = (v[:, r0:r0 + X] @ d[s][r0:r0 + X]).astype(np.float32)  # exact
                val = current * inv_step                                # float32, rounded
                if z is not None:
                    val = val + noise_code * z[:, s * cols:(s + 1) * cols]
                codes[s] += np.clip(np.rint(val), -M, M)
        for s in range(S):                              # each code sum times its weight
            acc += (2.0 ** (db * k + cb * s) * float(steps[k, s])) * codes[s]
    y = acc
    if offset:
        y -= offset * vsum[:, None]
    return (y * x_scale[:, None] * w_scale).astype(np.float32)
