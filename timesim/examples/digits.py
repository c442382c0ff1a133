"""Real training on scikit-learn's bundled 8x8 digits (no download): an MLP and a LeNet-like CNN,
under dense SGD or under the chip's update policy (``SparseUpdate``), optionally recording a trace.

Used by ``traces/make_digits_traces.py`` (example traces), ``traces/digits_results.py``
(docs/results.md) and the tests; ``evaluator`` scores a digits trace's model on the worn chip
(``timesim run --faults``, report ``faults.accuracy``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..accuracy import ModelScorer
from ..pytorch import SparseUpdate, TraceRecorder, load_weights


class MLP(nn.Module):
    """64-256-256-10."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LeNet(nn.Module):
    """conv 1->6 3x3 -> pool -> conv 6->16 3x3 -> pool -> fc 64->32 -> fc 32->10 (8x8 inputs)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 16, 3, padding=1)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class TanhMLP(nn.Module):
    """64-128-64-10 with tanh: held out from the design of the fitted workloads (added to
    docs/fidelity.md after the model was fixed; no modelling decision looked at it)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class CNN3(nn.Module):
    """conv 1->8 3x3 -> conv 8->8 3x3 -> pool -> conv 8->16 3x3 -> pool -> fc 64->10 (ReLU):
    the second model held out from the design of the fitted workloads (as ``TanhMLP``)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc(x.flatten(1))


class GeluMLP(nn.Module):
    """64-160-48-10 with GELU: held out from the design of the closed loop (added to
    docs/fidelity.md after the loop was fixed; docs/fidelity_loop.py trains it at lr 0.05)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 160)
        self.fc2 = nn.Linear(160, 48)
        self.fc3 = nn.Linear(48, 10)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class AvgCNN(nn.Module):
    """conv 1->4 5x5 -> avg pool -> conv 4->12 3x3 -> avg pool -> fc 48->24 -> fc 24->10
    (ELU): the closed loop's held-out CNN (as ``GeluMLP``)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5, padding=2)
        self.conv2 = nn.Conv2d(4, 12, 3, padding=1)
        self.fc1 = nn.Linear(48, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        x = F.avg_pool2d(F.elu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.elu(self.conv2(x)), 2)
        return self.fc2(F.elu(self.fc1(x.flatten(1))))


class LeakyMLP(nn.Module):
    """64-96-96-10 with LeakyReLU: a third model added after the closed loop's design
    (docs/fidelity_loop.py trains it at lr 0.02)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 96)
        self.fc3 = nn.Linear(96, 10)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.fc3(F.leaky_relu(self.fc2(F.leaky_relu(self.fc1(x)))))


MODELS = {"mlp": MLP, "lenet": LeNet, "mlp-tanh": TanhMLP, "cnn3": CNN3,
          "mlp-gelu": GeluMLP, "cnn-avg": AvgCNN, "mlp-leaky": LeakyMLP}


def load_digits_split(seed: int = 0):
    """(x_train, y_train, x_test, y_test) as tensors; x is (n, 1, 8, 8) in [0, 1]; 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    cut = int(0.8 * len(y))
    tr, te = order[:cut], order[cut:]
    return x[tr], y[tr], x[te], y[te]


def evaluator(meta, weights) -> ModelScorer | None:
    """The evaluator of a trace recorded from these examples (manifest ``model`` digits-mlp,
    digits-lenet, ...; ``faults.EVALUATORS``): its model with the weights ``TraceRecorder``
    saved (weights.npz), scored on the digits test set (360 images); None for another model."""
    key = meta.model.removeprefix("digits-")
    if weights is None or key not in MODELS or not meta.model.startswith("digits-"):
        return None
    model = load_weights(MODELS[key](), weights).eval()
    _, _, x_te, y_te = load_digits_split(0)
    return ModelScorer(model, x_te, y_te, name=meta.model)


@dataclass
class Result:
    model: str
    policy: str
    iterations: int
    test_accuracy: float
    report: dict | None
    net: nn.Module | None = None        # the trained model


def train(model_name: str = "mlp", iterations: int = 2000, hw=None, batch: int = 32,
          lr: float = 0.1, seed: int = 0, record: str | None = None, record_dtype="float32",
          chunk_iterations: int = 64, out: str | None = None, record_last: int | None = None
          ) -> Result:
    """Train with plain SGD; with ``hw`` the updates go through ``SparseUpdate(hw)``.

    ``record``: a trace of the training's gradients (and its final weights); ``record_last``:
    only of its last that many iterations (a short trace whose model is trained).

    One intra-op thread: these models are far too small to gain from more, and several
    threads per process oversubscribe the cores when runs go in parallel.
    """
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits_split(seed)
    model = MODELS[model_name]()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sparse = SparseUpdate(opt, hw, model=model, model_name=f"digits-{model_name}",
                          dataset="sklearn-digits") if hw is not None else None
    stepper = sparse or opt
    g = torch.Generator().manual_seed(seed)
    recorder = (TraceRecorder(model, record, dtype=record_dtype,
                              chunk_iterations=chunk_iterations, dataset="sklearn-digits",
                              model_name=f"digits-{model_name}")
                if record else None)
    start = iterations - min(iterations, record_last) if record_last is not None else 0
    entered = False
    try:
        for it in range(iterations):
            if recorder and it == start:
                recorder.__enter__()
                entered = True
            idx = torch.randint(0, len(y_tr), (batch,), generator=g)
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            stepper.zero_grad()
            loss.backward()
            if entered:
                recorder.step()
            stepper.step()
    except BaseException as exc:
        if entered:
            recorder.__exit__(type(exc), exc, None)
        raise
    if entered:
        recorder.__exit__(None, None, None)
    with torch.no_grad():
        acc = (model(x_te).argmax(1) == y_te).float().mean().item()
    report = sparse.report(out) if sparse is not None else None
    policy = "dense-sgd" if hw is None else hw.controller.selection
    return Result(model_name, policy, iterations, acc, report, model)
