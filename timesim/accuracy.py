"""Accuracy under wear for any PyTorch model (needs torch; the core never imports this module).

``accuracy_under_wear(model, run_dir, (x, y))``: the per-cell wear of a finished run
(``writes/<layer>.npy``, ``rowmap/<layer>.npy``, the run's resolved ``hwconfig.yaml``: endurance
and fault model, ``analog.cell_wear``) applied to the model's crossbar layers (every Linear and
Conv2d, matched to the run's layers by module name, as ``TraceRecorder`` names them), and the
model evaluated on the user's data through ``timesim.pytorch.crossbar_forward`` at iterations
from the run's length to past its wear-out (``faults.accuracy_curve``): the same dict as
report.json's ``faults.accuracy``.

``ModelScorer`` is what an evaluator returns for ``timesim run --faults --eval module:function``
(``faults.model_accuracy``); ``timesim.examples.digits.evaluator`` is one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import HwConfig, load_hwconfig
from .errors import TraceError
from .faults import EVAL_POINTS, accuracy_curve
from .pytorch import crossbar_forward, select_layers, weight_to_matrix


def top1(out: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples whose largest output is the label."""
    return float((out.argmax(1) == y).float().mean())


class ModelScorer:
    """A model and its evaluation data: ``digital()`` scores ``model(x)``, ``chip(hw, wear)``
    the model with its crossbar layers on (worn) crossbars (``crossbar_forward``; ``wear``:
    {layer: ``analog.Wear`` or stuck mask}, None for the fault-free chip). ``metric(out, y)``
    defaults to top-1 accuracy."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 metric: Callable[[torch.Tensor, torch.Tensor], float] = top1,
                 name: str | None = None, seed: int = 0):
        self.model, self.x, self.y, self.metric, self.seed = model.eval(), x, y, metric, seed
        self.name = name or type(model).__name__
        self.size = len(y)

    def digital(self) -> float:
        with torch.no_grad():
            return float(self.metric(self.model(self.x), self.y))

    def chip(self, hw: HwConfig, wear: dict | None = None) -> float:
        return float(self.metric(crossbar_forward(self.model, self.x, hw, wear, self.seed),
                                 self.y))


def run_layers(run_dir: str | Path) -> tuple[HwConfig, int, list[tuple[str, np.ndarray,
                                                                      np.ndarray]]]:
    """A run folder's chip, iterations and (name, writes, rowmap) per layer, in trace order."""
    run = Path(run_dir)
    try:
        report = json.loads((run / "report.json").read_text())
    except (OSError, ValueError) as exc:
        raise TraceError(f"{run}: not a finished run folder (report.json: {exc})") from None
    hw = load_hwconfig(run / "hwconfig.yaml")
    layers = []
    for layer in report["trace"]["layers"]:
        name = layer["name"]
        try:
            writes = np.load(run / "writes" / f"{name}.npy", allow_pickle=False)
            rowmap = np.load(run / "rowmap" / f"{name}.npy", allow_pickle=False)
        except OSError as exc:
            raise TraceError(f"{run}: layer {name}: no write counts ({exc})") from None
        layers.append((name, writes, rowmap))
    return hw, int(report["iterations"]), layers


def accuracy_under_wear(model: nn.Module, run_dir: str | Path, data,
                        metric: Callable[[torch.Tensor, torch.Tensor], float] = top1,
                        points: int = EVAL_POINTS, name: str | None = None, seed: int = 0
                        ) -> dict:
    """``model`` (trained weights loaded) scored on ``data`` = (x, y) as the chip of run
    ``run_dir`` wears out: {``model``, ``test_images``, ``digital``, ``fault_free``,
    ``iterations``, ``failed_fraction``, ``accuracy``} (report.json ``faults.accuracy``).

    Every crossbar layer of the model must be a layer of the run with the run's matrix shape
    (a TraceError names the first that is not); the run's layers the model lacks still count
    in ``failed_fraction``."""
    hw, T, layers = run_layers(run_dir)
    shapes = {n: w.shape for n, w, _ in layers}
    for layer in select_layers(model, frozen=True)[0]:
        lname = layer.name
        if lname not in shapes:
            raise TraceError(f"{run_dir}: the model's layer {lname} is not a layer of the run "
                             f"({', '.join(shapes)})")
        shape = weight_to_matrix(layer.weight.detach(), layer.groups).shape
        if shape != shapes[lname]:
            raise TraceError(f"{run_dir}: layer {lname}: the model's matrix is {shape}, the "
                             f"run's {shapes[lname]}")
    x, y = data
    return accuracy_curve(hw, layers, T, ModelScorer(model, x, y, metric, name, seed), points)
