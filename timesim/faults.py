"""Wear-out faults at the end of a run (report.json ``faults``, DESIGN §8).

A cell whose writes exceed its endurance is stuck (SA1 with ``endurance.sa1_fraction``, else
SA0). Per layer: the failed fraction at the end of training; the relative MVM error of a
seeded random layer of that shape on the faulted crossbars against the exact x @ W
(``mvm_rel_error``), the same without faults (the quantization floor) and faulted against
fault-free crossbars (the part due to wear); the iteration at which the failed fraction first
crosses ``endurance.failed_bound`` (default 10%, Xia et al.), extrapolating each cell's
measured write rate.
"""

from __future__ import annotations

import math

import numpy as np

from .analog import layer_probe, program, relative_error, wearout_faults
from .config import HwConfig
from .lifetime import cell_endurance, failure_iterations


def layer_endurance(hw: HwConfig, index: int, shape) -> np.ndarray | float:
    e = cell_endurance(hw.endurance, index, shape)
    return hw.endurance.cycles if e is None else e


def faults_report(hw: HwConfig, policies, T: int) -> dict:
    e = hw.endurance
    out = {"bound": e.failed_bound, "sa1_fraction": e.sa1_fraction, "failed_fraction": {},
           "mvm_rel_error": {}, "mvm_rel_error_fault_free": {}, "mvm_rel_error_from_faults": {},
           "iterations_to_bound": {},
           "probe": "seeded random weights N(0, 1/rows), inputs ReLU(N(0, 1)), batch 64"}
    for i, p in enumerate(policies):
        name = p.layer.name
        endurance = layer_endurance(hw, i, p.writes.shape)
        stuck = wearout_faults(p.writes, endurance, p.l2p, e.sa1_fraction, e.seed, i)
        out["failed_fraction"][name] = float((stuck != 0).mean())
        x, w = layer_probe(p.layer.rows, p.layer.cols, e.seed)
        ref = x.astype(np.float64) @ w.astype(np.float64)
        clean = program(w, hw, None, e.seed).mvm(x, e.seed)
        faulty = program(w, hw, stuck, e.seed).mvm(x, e.seed) if stuck.any() else clean
        out["mvm_rel_error"][name] = relative_error(faulty, ref)
        out["mvm_rel_error_fault_free"][name] = relative_error(clean, ref)
        out["mvm_rel_error_from_faults"][name] = relative_error(faulty, clean)
        times = np.sort(failure_iterations(p.writes, endurance, T).ravel())
        k = max(1, math.ceil(e.failed_bound * times.size))
        t = float(times[k - 1])
        out["iterations_to_bound"][name] = t if math.isfinite(t) else None
    return out
