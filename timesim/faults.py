"""Wear-out faults at the end of a run (report.json ``faults``, DESIGN §8).

Faults are per physical cell (each side of the pair, each bit slice: ``analog.cell_wear``): a
cell whose writes exceed its own endurance is stuck (SA1 with ``endurance.sa1_fraction``, else
SA0). Per layer, always (cheap): the failed fraction of physical cells at the end of training
and the iteration
at which it first crosses ``endurance.failed_bound`` (default 10%, Xia et al.), extrapolating
each cell's measured write rate. With ``probe`` (``timesim run --faults``): the relative MVM
error of a seeded random layer of that shape on the faulted crossbars against the exact x @ W
(``mvm_rel_error``), the same without faults (the quantization floor) and faulted against
fault-free crossbars (the part due to wear); without it those keys hold null per layer, so the
report's schema does not change. The probe runs the analog model on every layer (seconds on
ResNet-50), which is why it is opt-in.
"""

from __future__ import annotations

import math

import numpy as np

from .config import HwConfig
from .lifetime import cell_endurance, failure_iterations, physical_cell_endurance


def layer_endurance(hw: HwConfig, index: int, shape) -> np.ndarray | float:
    """Per weight position (DESIGN §3's cells): the lifetime metrics' endurance."""
    e = cell_endurance(hw.endurance, index, shape)
    return hw.endurance.cycles if e is None else e


def _endurance(hw: HwConfig, index: int, shape) -> np.ndarray | float:
    """Per physical cell (cells per weight, rows, cols); a number when fixed."""
    e = hw.endurance
    if e.sigma == 0:
        return float(e.cycles)
    from .analog import cells_per_weight

    sides, slices = cells_per_weight(hw)
    return physical_cell_endurance(e, index, (sides * slices,) + tuple(shape))


def faults_report(hw: HwConfig, policies, T: int, probe: bool = False) -> dict:
    e = hw.endurance
    out = {"bound": e.failed_bound, "sa1_fraction": e.sa1_fraction, "failed_fraction": {},
           "mvm_rel_error": {}, "mvm_rel_error_fault_free": {}, "mvm_rel_error_from_faults": {},
           "iterations_to_bound": {},
           "probe": ("seeded random weights N(0, 1/rows), inputs ReLU(N(0, 1)), batch 64"
                     if probe else None)}
    for i, p in enumerate(policies):
        name = p.layer.name
        endurance = _endurance(hw, i, p.writes.shape)
        out["failed_fraction"][name] = float((p.writes[None] > endurance).mean())
        if probe:
            from .analog import cell_wear, layer_probe, program, relative_error

            wear = cell_wear(p.writes, hw, i, p.l2p)
            x, w = layer_probe(p.layer.rows, p.layer.cols, e.seed)
            ref = x.astype(np.float64) @ w.astype(np.float64)
            clean = program(w, hw, None, e.seed, calib=x).mvm(x, e.seed)
            worn = wear.stuck.any() or wear.window is not None
            faulty = (program(w, hw, wear, e.seed, calib=x).mvm(x, e.seed) if worn
                      else clean)
            errors = (relative_error(faulty, ref), relative_error(clean, ref),
                      relative_error(faulty, clean))
        else:
            errors = (None, None, None)
        for key, v in zip(("mvm_rel_error", "mvm_rel_error_fault_free",
                           "mvm_rel_error_from_faults"), errors):
            out[key][name] = v
        times = np.sort(failure_iterations(p.writes[None], endurance, T).ravel())
        k = max(1, math.ceil(e.failed_bound * times.size))
        t = float(times[k - 1])
        out["iterations_to_bound"][name] = t if math.isfinite(t) else None
    return out
