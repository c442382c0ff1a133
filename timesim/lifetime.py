"""Lifetime metrics (DESIGN §3) from per-cell write counts and the endurance model."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .config import Endurance

FAILED_FRACTIONS = (0.001, 0.01, 0.1, 0.5)   # 0.1: the 10% bound of Xia et al. (DAC'17)
CURVE_POINTS = 33


def cell_endurance(e: Endurance, layer_index: int, shape: tuple[int, int]) -> np.ndarray | None:
    """Per-cell endurance of one layer (lognormal with mean ``cycles``), or None when fixed.

    Each layer draws from its own stream ``(seed, layer_index)``, so a layer's cells do not
    depend on the other layers of the trace.
    """
    if e.sigma == 0:
        return None
    mu = math.log(e.cycles) - e.sigma**2 / 2          # E[exp(mu + sigma Z)] = cycles
    rng = np.random.default_rng([e.seed, layer_index])
    return np.exp(mu + e.sigma * rng.standard_normal(shape))


def physical_cell_endurance(e: Endurance, layer_index: int, shape: tuple[int, ...]
                            ) -> np.ndarray:
    """Endurance of every physical cell (cells per weight, rows, cols) of one layer: fixed, or
    lognormal per cell with mean ``cycles`` from the stream (seed, layer, 0xCE11)."""
    if e.sigma == 0:
        return np.full(shape, float(e.cycles))
    mu = math.log(e.cycles) - e.sigma**2 / 2
    rng = np.random.default_rng([e.seed, layer_index, 0xCE11])
    return np.exp(mu + e.sigma * rng.standard_normal(shape))


def failure_iterations(writes: np.ndarray, endurance: np.ndarray | float, T: int) -> np.ndarray:
    """Iteration at which each cell fails, extrapolating its measured rate writes/T linearly.

    A cell written w times in T iterations reaches its endurance E at t = E·T/w (never if w = 0).
    """
    w = writes.astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.where(w > 0, np.asarray(endurance, dtype=np.float64) * T / w, np.inf)


def lifetime_report(T: int, names: Sequence[str], writes: Sequence[np.ndarray],
                    policy_cells: Sequence[int], endurance: Endurance) -> dict:
    """The report's ``lifetime`` section."""
    max_per_layer = [int(w.max()) for w in writes]
    max_writes = max(max_per_layer)
    per_cell = [p / w.size for p, w in zip(policy_cells, writes)]
    binding = int(np.argmax(per_cell))
    out = {
        "endurance": endurance.cycles,
        "endurance_model": {"distribution": "lognormal" if endurance.sigma else "fixed",
                            "mean_cycles": endurance.cycles, "sigma": endurance.sigma,
                            "seed": endurance.seed},
        "max_writes": max_writes,
        "extension": T / max_writes,
        "balanced_extension": T / per_cell[binding],
        "binding_layer": names[binding],
    }
    out["wear_leveling_efficiency"] = out["extension"] / out["balanced_extension"]
    if endurance.sigma == 0:
        out["trainings_to_failure"] = endurance.cycles / max_writes
        out["iterations_to_failure"] = endurance.cycles * T / max_writes
        fail = [failure_iterations(w, endurance.cycles, T) for w in writes]
    else:
        fail = [failure_iterations(w, cell_endurance(endurance, i, w.shape), T)
                for i, w in enumerate(writes)]
        first = min(float(f.min()) for f in fail)
        out["trainings_to_failure"] = first / T
        out["iterations_to_failure"] = first
    out["first_failure_layer"] = names[int(np.argmin([f.min() for f in fail]))]
    flat = np.sort(np.concatenate([f.ravel() for f in fail]))
    n = flat.size
    out["iterations_to_failed_fraction"] = {
        str(q): _finite(flat[min(n - 1, max(0, math.ceil(q * n) - 1))]) for q in FAILED_FRACTIONS}
    first = flat[0]
    if math.isfinite(first):
        grid = first * np.logspace(0, 2, CURVE_POINTS)
        frac = np.searchsorted(flat, grid, side="right") / n
        out["failure_curve"] = {"iterations": [float(x) for x in grid],
                                "failed_fraction": [float(x) for x in frac]}
    return out


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
