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

import logging
import math

import numpy as np

from .config import HwConfig
from .errors import ConfigError
from .lifetime import failure_iterations, physical_cell_endurance
from .mapping import cells_per_weight

log = logging.getLogger(__name__)


def _endurance(hw: HwConfig, index: int, shape) -> np.ndarray | float:
    """Per physical cell (cells per weight, rows, cols); a number when fixed."""
    e = hw.endurance
    if e.sigma == 0:
        return float(e.cycles)
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
    out["warning"] = fault_free_warning(hw, out["mvm_rel_error_fault_free"]) if probe else None
    if out["warning"]:
        log.warning("faults: %s", out["warning"])
    return out


# A fault-free relative MVM error above this makes the fault figures meaningless: the error is
# half the output's norm (at 1 the crossbar is no better than an output of zeros). Calibrated
# chips stay well below (time-default 0.012-0.027; neurosim-v2.1-rram with adc.range auto and its
# 4-bit weights 0.09-0.26); one full-scale ADC range gives ~0.8, at which the digits models fall
# to chance (docs/analog.md)
FAULT_FREE_LIMIT = 0.5


def fault_free_warning(hw: HwConfig, errors: dict) -> str | None:
    """One line when the chip's own (fault-free) analog error is so large that what wear adds
    cannot be told from it (report ``faults.warning``), else None."""
    bad = {k: v for k, v in errors.items() if v is not None and v > FAULT_FREE_LIMIT}
    if not bad:
        return None
    worst = max(bad, key=bad.get)
    hint = (f"adc.range: {hw.adc.range} is one full-scale range, not calibrated; "
            f"--set adc.range=auto calibrates the ADCs" if hw.adc.range != "auto"
            else "check adc.bits, adc.read_noise and the cell model")
    return (f"the chip's fault-free MVM error is {bad[worst]:.3g} on {worst} ({len(bad)} of "
            f"{len(errors)} layers above {FAULT_FREE_LIMIT}): the fault figures say nothing "
            f"about wear; {hint}")


EVAL_POINTS = 8

# Traces whose manifest ``model`` starts with one of these name their evaluator by it (the bundled
# digits examples); any other trace: ``timesim run --faults --eval module:function``. Named, not
# imported: the core never imports the examples or torch (tests/test_imports.py).
EVALUATORS = {"digits-": "timesim.examples.digits:evaluator"}


def load_evaluator(spec: str):
    """``module:function`` -> the function (``timesim run --eval``); ConfigError naming it."""
    import importlib

    module, sep, name = str(spec).partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"--eval {spec}: expected module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ConfigError(f"--eval {spec}: cannot import {module} ({exc})") from None
    except AttributeError:
        raise ConfigError(f"--eval {spec}: {module} has no {name}") from None
    if not callable(fn):
        raise ConfigError(f"--eval {spec}: {name} is not a function")
    return fn


def model_accuracy(hw: HwConfig, policies, T: int, meta, weights, evaluator=None
                   ) -> dict | None:
    """Accuracy of the worn chip on the trace's model vs iteration (``timesim run --faults``).

    ``evaluator``: ``module:function`` (or the function) that turns the trace into a scorer:
    ``evaluator(meta, weights)`` with the trace's ``TraceMeta`` and the weights its recorder
    saved (weights.npz, or None) returns an object with ``name``, ``size`` (samples),
    ``digital()`` and ``chip(hw, wear)`` (``timesim.accuracy.ModelScorer`` for a PyTorch
    model), or None when it cannot score this trace. Without one, a trace recorded from the
    bundled digits examples uses theirs (``EVALUATORS``). None when there is no evaluator or
    the default one cannot run (torch missing)."""
    if evaluator is None:
        spec = next((v for k, v in EVALUATORS.items() if meta.model.startswith(k)), None)
        if spec is None or weights is None:
            return None
        try:
            evaluator = load_evaluator(spec)
        except ConfigError:                     # the bundled examples need torch
            return None
    elif not callable(evaluator):
        evaluator = load_evaluator(evaluator)
    try:
        scorer = evaluator(meta, weights)
    except ImportError:
        return None
    if scorer is None:
        return None
    layers = [(p.layer.name, p.writes, p.l2p) for p in policies]
    return accuracy_curve(hw, layers, T, scorer)


def accuracy_curve(hw: HwConfig, layers, T: int, scorer, points: int = EVAL_POINTS) -> dict:
    """``scorer`` on the digital model, the fault-free chip and the chip worn as the run's
    write counts give at ``points`` iterations from the run's length to 4× the iteration at
    which its first layer reaches the failed bound; every layer's cells worn as its measured
    write rates give there (``analog.cell_wear``, write counts × t / T).

    ``layers``: (name, writes, rowmap) of every layer of the run, in the trace's order (the
    index seeds each cell's endurance). The report's ``faults.accuracy``."""
    from .analog import cell_wear

    digital = scorer.digital()
    fault_free = scorer.chip(hw, None)
    # from the run's length to the iteration its first layer reaches the failed bound (x 4)
    ends = []
    for i, (_, writes, _) in enumerate(layers):
        e = _endurance(hw, i, writes.shape)
        t = np.sort(failure_iterations(writes[None], e, T).ravel())
        k = max(1, math.ceil(hw.endurance.failed_bound * t.size))
        if math.isfinite(float(t[k - 1])):
            ends.append(float(t[k - 1]))
    last = 4 * min(ends) if ends else 4.0 * T
    grid = np.unique(np.geomspace(max(1.0, min(T, last / 100)), max(last, T + 1.0),
                                  points).round())
    acc, failed = [], []
    for t in grid:
        wear = {n: cell_wear(writes, hw, i, l2p, scale=float(t) / T)
                for i, (n, writes, l2p) in enumerate(layers)}
        acc.append(scorer.chip(hw, wear))
        cells = sum(w.stuck.size for w in wear.values())
        failed.append(sum(float((w.stuck != 0).sum()) for w in wear.values()) / cells)
    return {"model": scorer.name, "test_images": int(scorer.size), "digital": digital,
            "fault_free": fault_free, "iterations": [float(t) for t in grid],
            "failed_fraction": failed, "accuracy": acc}
