"""Synthetic gradient streams shaped like the paper's networks (``synth:MODEL?...``).

These are not real gradients. Each layer's gradient is

    G_t[r, c] = s_r · q_c · (bias · m[r, c] + z_t[r, c])

with persistent, heavy-tailed row and column importances s_r = exp(row_sigma · N(0,1)) and
q_c = exp(col_sigma · N(0,1)), a persistent per-cell direction m ~ N(0, 1), and fresh noise z_t
from a counter-based generator (kernels/synth.py). Importance that persists over iterations is what
makes conventional GS write the same rows and columns again and again: the striped, unbalanced
write maps of the paper's Fig. 2. Everything is a pure function of (seed, layer index, iteration).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

import numpy as np

from ..errors import TraceError
from ..kernels.synth import NO_CELLSCALE, gradient_chunk
from .format import MAX_ITERATIONS, TraceMeta
from .models import MODELS
from .reader import Chunk


def default_chunk(biggest: int) -> int:
    """Iterations per generated chunk: 8 to 256, as many as keep the largest layer's chunk
    under 64 MB (the unfused generator's buffer). Fewer, larger chunks cost less per-chunk
    overhead (thread hand-offs, the engine's per-chunk work, a fitted model's per-piece
    factors); the results do not depend on the chunking."""
    return int(min(256, max(8, (64 << 20) // (4 * biggest))))


class _LazyLayers(Mapping):
    """Generates one layer's chunk on access into a buffer reused across layers and chunks.

    Each access overwrites the array returned by the previous one in the same thread: use (or
    copy) one layer's array before asking for the next, as the simulator and
    TraceWriter.append_chunk do. Threads have buffers of their own.
    """

    def __init__(self, trace: SynthTrace, t0: int, n: int):
        self._trace, self._t0, self._n = trace, t0, n

    def __getitem__(self, name: str) -> np.ndarray:
        return self._trace.generate(self._trace.index[name], self._t0, self._n)

    def source(self, name: str):
        """(seed, layer index, pieces) for a policy kernel to generate this layer's chunk
        itself (``LayerPolicy.process_source``), or None where it cannot (hammer)."""
        return self._trace.source(self._trace.index[name], self._t0, self._n)

    @property
    def gen(self) -> int:
        """The generator the policy kernels are to use for ``source``'s pieces."""
        return self._trace.gen

    def __iter__(self):
        return iter(self._trace.index)

    def __len__(self) -> int:
        return len(self._trace.index)


GENERATORS = (1, 2)
# a spec without gen= is generator 2 (issue 27); the label of a run always names its generator,
# and gen=1 reproduces every number in the docs (docs/workloads.md, "Which generator")
DEFAULT_GEN = 2


class SynthTrace:
    """A generated trace that never touches disk; same interface as a trace directory.
    ``gen``: the noise generator (kernels/generate.py): 1 (one splitmix64 hash per value, the
    streams behind every number in the docs) or 2 (two values per hash, issue 27)."""

    gen = 1          # fitted workloads (trace/fitted.py) use generator 1

    def __init__(self, model: str, iterations: int | None = None, seed: int = 0,
                 chunk: int | None = None,
                 row_sigma: float = 0.3, col_sigma: float = 0.15, bias: float = 0.02,
                 row: int = 0, gen: int = DEFAULT_GEN):
        if model not in MODELS:
            raise TraceError(f"synth:{model}: unknown model; expected one of "
                             f"{', '.join(MODELS)}")
        build, default_iterations, dataset = MODELS[model]
        iterations = default_iterations if iterations is None else iterations
        layers = tuple(build())
        if chunk is None:
            # fewer, larger chunks cost less per-chunk overhead (and let threads run longer);
            # the results do not depend on the chunking
            biggest = max(layer.cells for layer in layers)
            chunk = default_chunk(biggest)
        where = f"synth:{model}"
        for key, value, lo, hi in (("iterations", iterations, 1, MAX_ITERATIONS),
                                   ("seed", seed, 0, 2**63 - 1), ("chunk", chunk, 1, 1 << 20)):
            if not lo <= value <= hi:
                raise TraceError(f"{where}: {key}: must be in [{lo}, {hi}], got {value}")
        for key, value in (("row_sigma", row_sigma), ("col_sigma", col_sigma), ("bias", bias)):
            if not (np.isfinite(value) and 0 <= value <= 10):
                raise TraceError(f"{where}: {key}: must be in [0, 10], got {value}")
        if gen not in GENERATORS:
            raise TraceError(f"{where}: gen: must be 1 or 2, got {gen}")
        self.model, self.seed, self.gen = model, seed, gen
        self.params = dict(iterations=iterations, seed=seed, chunk=chunk, row_sigma=row_sigma,
                           col_sigma=col_sigma, bias=bias)
        self.params["gen"] = gen       # explicit: a label re-opened anywhere means this stream
        self.hammer = model.startswith("hammer")
        if self.hammer:
            if not 0 <= row < layers[0].rows:
                raise TraceError(f"{where}: row: must be in [0, {layers[0].rows - 1}], got {row}")
            self.params["row"] = row
        self.row = row
        self._shadow = None
        self.meta = TraceMeta(model=model, source=f"timesim-synth seed={seed} "
                              f"row_sigma={row_sigma} col_sigma={col_sigma} bias={bias}"
                              + (f" gen={gen}" if gen != 1 else ""),
                              dataset=dataset, batch_size=128, iterations=iterations,
                              chunk_iterations=chunk, dtype="float32", layers=layers)
        self.index = {layer.name: i for i, layer in enumerate(layers)}
        self._structure: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._factors: dict[tuple[int, int], tuple] = {}
        self._biggest = max(layer.cells for layer in layers)
        self._local = threading.local()      # one generation buffer per thread

    @property
    def label(self) -> str:
        return f"synth:{self.model}?" + "&".join(f"{k}={v}" for k, v in self.params.items())

    @property
    def fingerprint_label(self) -> str:
        """The label as fingerprinted: a gen=1 stream's without ``gen``, as every run made
        before generator 2 existed fingerprinted it (so their checkpoints and finished runs
        are still recognised, resumed with gen=1 in the spec)."""
        return self.label.replace("&gen=1", "")

    def structure(self, li: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, row_scale, col_scale) of layer ``li``: persistent across iterations."""
        if li not in self._structure:
            layer = self.meta.layers[li]
            rng = np.random.default_rng([self.seed, li])
            p = self.params
            row = np.exp(p["row_sigma"] * rng.standard_normal(layer.rows)).astype(np.float32)
            col = np.exp(p["col_sigma"] * rng.standard_normal(layer.cols)).astype(np.float32)
            direction = rng.standard_normal((layer.rows, layer.cols)).astype(np.float32)
            mean = (p["bias"] * direction * row[:, None] * col[None, :]).astype(np.float32)
            self._structure[li] = (mean, row, col)
        return self._structure[li]

    def pieces(self, li: int, t0: int, n: int) -> list[tuple]:
        """Generator arguments of layer ``li``'s iterations t0 .. t0+n-1 as consecutive pieces
        (ta, m, M, P, Q, U, V, W) (kernels/select.py): stationary, so one piece with P = Q = 1,
        U = row importance, V = column importance, no per-cell noise scale."""
        key = (li, n)
        if key not in self._factors:
            layer = self.meta.layers[li]
            _, row, col = self.structure(li)
            # np.repeat copies: a broadcast view with n = 1 counts as contiguous and stays
            # read-only, which numba types (and compiles) as a second kernel signature
            self._factors[key] = (np.ones((n, layer.rows), np.float32),
                                  np.ones((n, layer.cols), np.float32),
                                  np.repeat(row[None, :], n, axis=0),
                                  np.repeat(col[None, :], n, axis=0))
        return [(t0, n, self.structure(li)[0], *self._factors[key], NO_CELLSCALE)]

    def source(self, li: int, t0: int, n: int):
        """(seed, layer, pieces) for the fused kernels; None for the hammer models."""
        if self.hammer:
            return None
        return self.seed, li, self.pieces(li, t0, n)

    def generate(self, li: int, t0: int, n: int) -> np.ndarray:
        """Layer ``li``'s iterations t0 .. t0+n-1 in this thread's buffer (overwritten by the
        thread's next call)."""
        layer = self.meta.layers[li]
        buf = getattr(self._local, "buffer", None)
        if buf is None:
            buf = self._local.buffer = np.empty(self.meta.chunk_iterations * self._biggest,
                                                dtype=np.float32)
        out = buf[: n * layer.cells].reshape(n, layer.rows, layer.cols)
        if self.hammer:
            return self._hammer(layer, t0, out)
        for ta, m, *src in self.pieces(li, t0, n):
            gradient_chunk(out[ta - t0:ta - t0 + m], self.seed, li, ta, *src, gen=self.gen)
        return out

    def bind(self, hw) -> None:
        """hammer-chase learns the chip's public ARS parameters (interval, R, block height)
        and predicts the row map with deterministic ARS: it does not know ars-random's seed."""
        if self.model == "hammer-chase":
            from ..policies import LayerPolicy

            public = hw.replace(controller={"wear_leveling": "ars"})
            self._shadow = LayerPolicy(self.meta.layers[0], public)

    def state(self) -> dict[str, np.ndarray]:
        """Generator state beyond (seed, iteration): the chasing attacker's shadow model."""
        return self._shadow.state() if self._shadow is not None else {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if self._shadow is not None:
            self._shadow.load_state(state)

    def _hammer(self, layer, t0: int, out: np.ndarray) -> np.ndarray:
        """Small noise everywhere plus a constant 1.0 on the attacked logical row; the chasing
        attacker moves to whichever logical row its shadow model puts on the attacked physical
        row (one iteration late after each swap)."""
        n = out.shape[0]
        zeros = np.zeros((layer.rows, layer.cols), dtype=np.float32)
        ones_r = np.ones((n, layer.rows), np.float32)
        ones_c = np.ones((n, layer.cols), np.float32)
        gradient_chunk(out, self.seed, 0, t0, zeros, ones_r, ones_c,
                       np.full((n, layer.rows), 0.01, np.float32), ones_c, gen=self.gen)
        for i in range(n):
            target = self.row
            if self._shadow is not None:
                if self._shadow.iterations != t0 + i:
                    raise TraceError(f"synth:{self.model}: iterations must be generated in "
                                     f"order (chase needs its shadow model)")
                target = int(self._shadow.p2l[self.row])
            out[i, target, :] += 1.0
            if self._shadow is not None:
                self._shadow.process(out[i:i + 1], t0 + i)
        return out

    def chunks(self, start_chunk: int = 0, verify: bool = True) -> Iterator[Chunk]:
        meta = self.meta
        for index in range(start_chunk, meta.n_chunks):
            t0 = index * meta.chunk_iterations
            n = meta.chunk_len(index)
            yield Chunk(index, t0, n, _LazyLayers(self, t0, n))
