"""Record, replay and co-simulate a torchvision model and a transformer encoder (issue 24).

    python traces/torchvision_models.py [--steps 6] [--out runs/torchvision]

Needs the `torch` extra (`pip install -e '.[torch]'`: torch 2.14.1 with torchvision 0.29.1).
For each model it trains a few SGD steps on random data under SGS (SparseUpdate, co-simulated
live) while TraceRecorder records the same steps, then replays the trace with `timesim.simulate`
and prints: the layers mapped (depthwise ones on their block-diagonal matrix), what is left
digital (`skipped`, with parameters), the mapped share of the weight parameters, the attention
products timed on the digital unit, and whether the live run and its replay agree (they must:
same writes, cycles and energy).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import timesim
from timesim.errors import TimesimWarning
from timesim.pytorch import SparseUpdate, TraceRecorder
from timesim.trace import open_trace


class Encoder(nn.Module):
    """A token embedding (left digital), two post-norm encoder layers (PyTorch's default
    (S, N, E) layout), a mean-pooled classifier."""

    def __init__(self, vocab: int = 100, e: int = 32, heads: int = 4, classes: int = 10):
        super().__init__()
        self.emb = nn.Embedding(vocab, e)
        layer = nn.TransformerEncoderLayer(e, heads, 2 * e, dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(e, classes)

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(tok)).mean(0))


def _models():
    import torchvision.models as tv
    torch.manual_seed(0)
    yield ("mobilenet_v2", tv.mobilenet_v2(num_classes=10, width_mult=0.35),
           lambda g: torch.randn(8, 3, 32, 32, generator=g))
    torch.manual_seed(0)
    yield ("transformer_encoder", Encoder(),
           lambda g: torch.randint(0, 100, (16, 8), generator=g))        # 16 tokens, batch 8


def run(name: str, model: nn.Module, batch, steps: int, out: Path) -> dict:
    hw = timesim.load_hwconfig(None, ["controller.selection=sgs", "controller.interval=4"])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", TimesimWarning)
        opt = SparseUpdate(torch.optim.SGD(model.parameters(), lr=0.05), hw, model=model)
        with TraceRecorder(model, out / name / "trace", chunk_iterations=4) as rec:
            for it in range(steps):
                g = torch.Generator().manual_seed(it)
                x, y = batch(g), torch.randint(0, 10, (8,), generator=g)
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                rec.step()
                opt.step()
    live = opt.report(out=out / name / "live")
    replay = timesim.simulate(hw, str(out / name / "trace"), out=out / name / "replay")
    same = all(live[k] == replay[k] for k in ("writes", "cycles", "energy_j", "coverage"))
    same = same and all(
        np.array_equal(np.load(out / name / "live" / "writes" / f"{n}.npy"),
                       np.load(out / name / "replay" / "writes" / f"{n}.npy"))
        for n in live["writes"]["by_layer"])
    meta = open_trace(out / name / "trace").meta
    return {"layers": len(meta.layers), "grouped": sum(1 for l in meta.layers
                                                      if (l.groups or 1) > 1),
            "coverage": replay["coverage"], "skipped": replay["skipped"],
            "digital": replay.get("digital", []), "replay_equals_live": same,
            "warnings": [str(w.message) for w in said]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("runs/torchvision"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    for name, model, batch in _models():
        r = run(name, model, batch, a.steps, a.out)
        cov = r["coverage"]
        whole = cov["mapped_parameters"] + cov["skipped_parameters"]
        print(f"{name}: {r['layers']} layers mapped ({r['grouped']} grouped), "
              f"{cov['mapped_parameters']} of {whole} weight parameters "
              f"({cov['mapped_fraction']:.4f}); replay equals live: "
              f"{r['replay_equals_live']}")
        for s in r["skipped"]:
            print(f"  left digital: {s['name']} ({s['reason']}, {s['parameters']} parameters)")
        for d in r["digital"]:
            print(f"  on the attention unit: {d}")


if __name__ == "__main__":
    main()
