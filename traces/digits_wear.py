"""Accuracy under wear: the digits MLP trained under SGS for 8000 iterations (SparseUpdate,
co-simulated live), then evaluated on the default chip (calibrated ADCs) whose physical cells
wore out at a given endurance (timesim.analog.cell_wear: faults per cell).

    python traces/digits_wear.py        # ~30 s; the numbers of docs/results.md
"""

import numpy as np
import torch
from torch.nn import functional as F

import timesim
from timesim.analog import cell_wear
from timesim.examples.digits import MLP, load_digits_split
from timesim.pytorch import SparseUpdate, crossbar_forward


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = load_digits_split(0)
    model = MLP()
    hw = timesim.load_hwconfig(None, ["controller.selection=sgs"])
    opt = SparseUpdate(torch.optim.SGD(model.parameters(), lr=0.1), hw, model=model)
    g = torch.Generator().manual_seed(0)
    for _ in range(8000):
        idx = torch.randint(0, len(y_tr), (32,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
        opt.step()
    opt.report()

    def acc(out):
        return (out.argmax(1) == y_te).float().mean().item()

    print(f"digital: accuracy {acc(model(x_te).detach()):.3f}")
    print(f"crossbars, no faults: accuracy {acc(crossbar_forward(model, x_te, hw)):.3f}")
    for endurance in (160, 80, 40, 20, 10):
        worn = hw.replace(endurance={"cycles": endurance})
        wear = {p.layer.name: cell_wear(p.writes, worn, i, p.l2p)
                for i, p in enumerate(opt.sim.policies)}
        failed = np.mean([w.failed_fraction for w in wear.values()])
        out = crossbar_forward(model, x_te, hw, wear)
        print(f"endurance {endurance}: failed {failed:.3f}, accuracy {acc(out):.3f}")


if __name__ == "__main__":
    main()
