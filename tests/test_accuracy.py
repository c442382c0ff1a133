"""Accuracy under wear for a model timesim does not ship (timesim.accuracy, --eval): a small
CNN defined here, recorded, simulated on a chip with a low endurance, and scored as it wears
out; the grid of iterations and the failed fractions recomputed here with numpy from the run
folder's write counts (DESIGN §3: a cell written w times in T iterations fails at E·T/w)."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import timesim  # noqa: E402
from timesim.cli import main  # noqa: E402
from timesim.errors import TraceError  # noqa: E402

CHIP = ["endurance.cycles=3", "endurance.sigma=0", "endurance.sa1_fraction=0"]


class TinyCNN(nn.Module):
    """conv 1->4 3x3 -> pool -> fc 64->10 on 8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))


def data(model=None):
    """64 fixed inputs, labelled by the model itself (its digital accuracy is 1 by
    construction) or random labels (for training)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 1, 8, 8, generator=g)
    if model is None:
        return x, torch.randint(0, 10, (64,), generator=g)
    with torch.no_grad():
        return x, model(x).argmax(1)


def evaluator(meta, weights):
    """The ``--eval tests.test_accuracy:evaluator`` of the recorded TinyCNN traces."""
    from timesim.accuracy import ModelScorer
    from timesim.pytorch import load_weights

    model = load_weights(TinyCNN(), weights).eval()
    return ModelScorer(model, *data(model), name="tiny-cnn")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from timesim.pytorch import TraceRecorder

    tmp = tmp_path_factory.mktemp("acc")
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data()
    with TraceRecorder(model, tmp / "trace", model_name="tiny-cnn") as rec:
        for it in range(24):
            idx = slice(8 * (it % 8), 8 * (it % 8) + 8)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            rec.step()
            opt.step()
    hw = timesim.load_hwconfig(None, CHIP)
    report = timesim.simulate(hw, str(tmp / "trace"), out=tmp / "run", threads=1)
    return tmp, model.eval(), report


def test_accuracy_under_wear_of_a_users_cnn(run):
    from timesim.accuracy import accuracy_under_wear
    from timesim.pytorch import crossbar_forward

    tmp, model, report = run
    x, y = data(model)
    a = accuracy_under_wear(model, tmp / "run", (x, y))
    hw = timesim.load_hwconfig(None, CHIP)
    T = report["iterations"]
    assert a["model"] == "TinyCNN" and a["test_images"] == 64
    assert a["digital"] == 1.0
    top1 = float((crossbar_forward(model, x, hw).argmax(1) == y).float().mean())
    assert a["fault_free"] == top1 > 0.9
    # the grid: 8 points from the run's length to 4x the first layer's 10%-failed iteration
    writes = [np.load(tmp / "run" / "writes" / f"{n}.npy") for n in ("conv", "fc")]
    ends = []
    for w in writes:
        t = np.sort(np.where(w > 0, 3.0 * T / np.maximum(w, 1), np.inf).ravel())
        ends.append(t[math.ceil(0.1 * t.size) - 1])
    last = 4 * min(e for e in ends if np.isfinite(e))
    grid = np.unique(np.geomspace(max(1.0, min(T, last / 100)), max(last, T + 1.0), 8).round())
    assert a["iterations"] == pytest.approx(list(grid))
    # every cell of a weight has the weight's writes; it fails once they pass the endurance
    cells = sum(w.size for w in writes)
    failed = [sum(int((w * (t / T) > 3.0).sum()) for w in writes) / cells for t in grid]
    assert a["failed_fraction"] == pytest.approx(failed)
    for f, acc in zip(a["failed_fraction"], a["accuracy"]):
        if f == 0:
            assert acc == a["fault_free"]        # no cell failed: the fault-free chip
    assert a["failed_fraction"][-1] > 0.02 and a["accuracy"][-1] < a["fault_free"]


def test_accuracy_under_wear_from_the_cli(run, tmp_path):
    from timesim.accuracy import accuracy_under_wear

    tmp, model, _ = run
    out = tmp_path / "r"
    assert main(["run", "--trace", str(tmp / "trace"), "--set", CHIP[0], "--set", CHIP[1],
                 "--set", CHIP[2], "--faults", "--eval", "tests.test_accuracy:evaluator",
                 "--threads", "1", "--out", str(out)]) == 0
    a = json.loads((out / "report.json").read_text())["faults"]["accuracy"]
    assert a["model"] == "tiny-cnn"
    b = accuracy_under_wear(model, out, data(model), name="tiny-cnn")
    assert a == b                              # the same numbers, from the run folder


def test_accuracy_under_wear_refuses_a_model_that_is_not_the_runs(run, capsys):
    from timesim.accuracy import accuracy_under_wear

    tmp, _, _ = run
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(TraceError, match="layer 1 is not a layer of the run"):
        accuracy_under_wear(other, tmp / "run", data())
    assert main(["run", "--trace", str(tmp / "trace"), "--eval", "tests.test_accuracy:evaluator",
                 "--out", str(tmp / "x")]) == 2
    assert "give --faults too" in capsys.readouterr().err
    assert main(["run", "--trace", str(tmp / "trace"), "--faults", "--eval", "no_such_mod:f",
                 "--out", str(tmp / "x")]) == 2
    assert "cannot import no_such_mod" in capsys.readouterr().err
