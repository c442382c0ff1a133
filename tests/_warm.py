"""Compile the numba kernels in a second process while the test suite runs (started by
tests/conftest.py; ``TIMESIM_NO_WARM=1`` turns it off).

The suite runs in one process on one core; with a cold numba cache (a clean clone, as CI has)
it spent about half its time compiling: 11 min 14 s against 5 min 28 s with the cache
filled, on the 2-core machine of 2026-12-02. This process fills the cache on the other core,
roughly in the order the suite first needs the kernels. Numba writes each cache entry to a
temporary file and renames it into place, so neither process reads half an entry; a kernel
that both need at the same moment is compiled twice, which costs no more than before.
Nothing is checked here: the tests check the kernels.
"""

from __future__ import annotations

import numpy as np

import timesim
from timesim.bench import run_bench
from timesim.kernels import select as K
from timesim.policies import LayerPolicy
from timesim.simulate import simulate
from timesim.trace.format import LayerInfo

SELECTIONS = ("sgs-row", "sgs-element", "topk", "dense")


def _hw(selection: str, wear_leveling: str = "ars") -> timesim.HwConfig:
    return timesim.load_hwconfig(None, [f"controller.selection={selection}",
                                        f"controller.wear_leveling={wear_leveling}",
                                        "controller.interval=4"])


def _chunks() -> None:
    """The chunk kernels (float32 and float16), each selection, plain and blocked in time."""
    g = np.random.default_rng(0).standard_normal((9, 200, 24)).astype(np.float32)
    layer = LayerInfo("w", "linear", 200, 24)
    for temporal in (False, True):
        K.TB_CELLS = 0 if temporal else 1 << 17
        for sel in SELECTIONS:
            for wl in ("none", "ars"):
                a, b = LayerPolicy(layer, _hw(sel, wl)), LayerPolicy(layer, _hw(sel, wl))
                a.process(g, 0)
                b.process_half(g.astype(np.float16).view(np.uint16), 0)
    K.TB_CELLS = 1 << 17


def main() -> None:
    run_bench(quick=True, progress=False, targets=False)
    _chunks()
    for sel in SELECTIONS:
        for gen in (1, 2):
            simulate(_hw(sel), f"synth:resnet20?iterations=16&gen={gen}")


if __name__ == "__main__":
    main()
