"""The synthetic generators: ``gen=1`` reproduces the streams behind every number in the docs,
bit for bit (digests stored from the code before generator v2 existed)."""

import hashlib

import numpy as np
import pytest

import timesim
from timesim.kernels.synth import normal
from timesim.simulate import Simulation
from timesim.trace import open_trace


def run_digest(spec: str, sets: list[str], threads: int = 1, fused: bool = True) -> str:
    """sha256 (16 hex digits) of every layer's write counts, row counters, row maps, stats
    and accumulator after simulating ``spec`` on the default chip with ``sets``."""
    hw = timesim.load_hwconfig(None, sets)
    trace = open_trace(spec)
    sim = Simulation(hw, trace.meta, threads=threads)
    sim.fused = fused
    for chunk in trace.chunks():
        sim.feed(chunk.arrays, chunk.t0, chunk.n)
    h = hashlib.sha256()
    for p in sim.policies:
        for a in (p.writes, p.counters, p.l2p, p.stats, p.A):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# computed on main at 5e35408, before generator v2 (issue 27)
GEN1 = [
    ("synth:resnet20?iterations=300&seed=3",
     ["controller.wear_leveling=ars", "controller.interval=50"], "2794ed79da472bab"),
    ("synth:resnet20?iterations=120&seed=1",
     ["controller.selection=topk", "controller.topk_density=0.01"], "8474fa6810de9245"),
    ("synth:mlp?iterations=400",
     ["controller.selection=sgs-element", "controller.wear_leveling=ars-random",
      "controller.interval=20", "write.pulses=delta"], "f9a6ed86b2727df7"),
    ("synth:resnet20?iterations=100&profile=digits",
     ["controller.wear_leveling=ars", "controller.interval=25"], "44696b4802079f68"),
    ("synth:hammer-chase?iterations=300",
     ["controller.wear_leveling=ars", "controller.interval=10"], "b3bc49873e1ddcf4"),
]


@pytest.mark.parametrize("spec,sets,digest", GEN1)
def test_gen1_write_matrices_unchanged(spec, sets, digest):
    assert run_digest(spec, sets) == digest


def test_gen1_unfused_and_threaded_unchanged():
    spec, sets, digest = GEN1[0]
    assert run_digest(spec, sets, fused=False) == digest
    assert run_digest(spec, sets, threads=2) == digest


def test_gen1_values_unchanged():
    assert hashlib.sha256(normal(7, 3, 11, 1000).tobytes()).hexdigest()[:16] \
        == "52357e750f731cb5"
    chunk = open_trace("synth:resnet20?iterations=20&seed=2").generate(5, 4, 3)
    assert hashlib.sha256(chunk.tobytes()).hexdigest()[:16] == "4b23de0759d79fb3"
