"""The TraceRecorder's overhead on a MobileNetV2 training step (issue 24: at most 20%).

Two copies of the same MobileNetV2 (width 0.35, 32x32, batch 32, SGD), one recorded, one
not, take their steps alternately, so that a machine shared with other work slows both
alike; the overhead is the median of the paired ratios. Recorded three ways: input activity
counted (input_bits=8, the default), not counted (input_bits=0), and the trace written as
float16 in chunks of 64 iterations (the chunk writes are in the recorded steps).

    python docs/recorder_overhead.py [--steps 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn

from timesim.examples.mobilenet import MobileNetV2
from timesim.pytorch import TraceRecorder


def _step(net, opt, x, y, rec=None) -> float:
    t = time.perf_counter()
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    if rec is not None:
        rec.step()
    opt.step()
    return time.perf_counter() - t


def paired(input_bits: int, steps: int, batch: int = 32) -> dict:
    torch.manual_seed(0)
    nets = [MobileNetV2(), MobileNetV2()]
    opts = [torch.optim.SGD(n.parameters(), lr=0.01) for n in nets]
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    plain, recorded = [], []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with TraceRecorder(nets[1], f"{tmp}/t", dtype="float16", input_bits=input_bits,
                           save_weights=False) as rec:
            for i in range(steps + 2):
                a = _step(nets[0], opts[0], x, y)
                b = _step(nets[1], opts[1], x, y, rec)
                if i >= 2:                           # warm-up steps
                    plain.append(a)
                    recorded.append(b)
            layers = len(rec.layers)
    ratios = [b / a for a, b in zip(plain, recorded)]
    return {"input_bits": input_bits, "layers": layers,
            "plain_step_s": statistics.median(plain),
            "recorded_step_s": statistics.median(recorded),
            "overhead": statistics.median(ratios) - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for bits in (8, 0):
        r = paired(bits, args.steps)
        print(f"input_bits={bits}: {r['layers']} layers recorded, step {r['plain_step_s']:.3f} s "
              f"plain, {r['recorded_step_s']:.3f} s recorded: overhead {r['overhead']:.1%} "
              f"(median of {args.steps} paired steps)")


if __name__ == "__main__":
    main()
