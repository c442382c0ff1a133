"""Synthetic workloads: shapes from shared/workloads.md, determinism, generator statistics."""

import numpy as np
import pytest

from timesim.errors import TraceError
from timesim.kernels.synth import normal
from timesim.trace import open_trace
from timesim.trace.models import MODELS
from timesim.trace.synth import SynthTrace


def shapes(model):
    return [(l.rows, l.cols) for l in MODELS[model][0]()]


def test_resnet20_shapes_match_the_paper():
    s = shapes("resnet20")
    assert len(s) == 20 and sum(r * c for r, c in s) == 268_336
    assert s[0] == (27, 16) and s[-1] == (64, 10)
    assert s.count((144, 16)) == 6 and s.count((288, 32)) == 5 and s.count((576, 64)) == 5
    assert (144, 32) in s and (288, 64) in s


def test_vgg16_vgg11_resnet50_shapes():
    v16 = shapes("vgg16")
    assert len(v16) == 16 and v16[0] == (27, 64)
    assert v16[-3:] == [(512, 512), (512, 512), (512, 10)]
    assert v16.count((4608, 512)) == 5
    v11 = shapes("vgg11")
    assert v11[-1] == (1024, 10) and len(v11) == 11
    r50 = MODELS["resnet50"][0]()
    assert (r50[0].rows, r50[0].cols) == (147, 64)
    assert (r50[-1].rows, r50[-1].cols) == (2048, 1000)
    assert len([l for l in r50 if l.kind == "conv2d"]) == 53
    assert 25.4e6 < sum(l.cells for l in r50) < 25.6e6


def test_conv_geometry_is_consistent():
    for build, _, _ in MODELS.values():
        for l in build():
            if l.kind == "conv2d":
                assert l.rows == l.in_channels * l.kernel[0] * l.kernel[1]
                assert l.cols == l.out_channels
    r20 = {l.name: l for l in MODELS["resnet20"][0]()}
    down = r20["layer2.0.conv1"]
    assert down.input_hw == (32, 32) and down.output_hw == (16, 16) and down.stride == (2, 2)


def test_hash_normal_statistics():
    x = np.concatenate([normal(seed, 0, 0, 1 << 16) for seed in range(4)]).astype(np.float64)
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.01
    assert np.abs(x).max() <= np.sqrt(12) + 1e-6                  # Irwin-Hall support
    # neighbouring values and neighbouring streams are uncorrelated
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.01
    a, b = normal(1, 0, 5, 1 << 16), normal(1, 0, 6, 1 << 16)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02


def collect(trace, layer):
    return np.concatenate([np.array(c.arrays[layer]) for c in trace.chunks()])


def test_deterministic_and_independent_of_chunking():
    a = collect(open_trace("synth:mlp-small?iterations=10&seed=3&chunk=4"), "fc2")
    b = collect(open_trace("synth:mlp-small?iterations=10&seed=3&chunk=3"), "fc2")
    c = collect(open_trace("synth:mlp-small?iterations=10&seed=4"), "fc2")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == (10, 128, 16)


def test_importance_persists_and_is_heavy_tailed():
    tr = SynthTrace("resnet20", iterations=400, seed=0)
    g = collect(tr, "layer1.0.conv1")                      # 144 x 16
    row_energy = (g.astype(np.float64) ** 2).mean(axis=(0, 2))
    first, second = (g[:200] ** 2).mean(axis=(0, 2)), (g[200:] ** 2).mean(axis=(0, 2))
    assert np.corrcoef(first, second)[0, 1] > 0.9         # the same rows stay important
    assert row_energy.max() / np.median(row_energy) > 2.5  # and a few rows dominate


def test_topk_on_synthetic_gradients_gives_striped_unbalanced_writes():
    """The paper's Fig. 2: conventional GS concentrates writes on a few rows and columns."""
    import timesim
    hw = timesim.load_hwconfig(None, ["controller.selection=topk",
                                      "controller.wear_leveling=none",
                                      "controller.topk_density=0.01"])
    r = timesim.simulate(hw, "synth:resnet20?iterations=1000")
    s = r["writes"]["by_layer"]["layer1.0.conv2"]
    assert s["max"] > 3 * s["mean"]


@pytest.mark.parametrize("source,needle", [
    ("synth:alexnet", "unknown model"),
    ("synth:resnet20?iterations=0", "iterations: must be in"),
    ("synth:resnet20?iterations=abc", "iterations: expected an integer"),
    ("synth:resnet20?foo=1", "unknown parameter 'foo'"),
    ("synth:resnet20?row_sigma=-1", "row_sigma: must be in"),
    ("synth:resnet20?iterations=10&iterations=20", "iterations: given twice"),
    ("synth:resnet20?iterations=1e+3", r"'\+' means a space: write 1e4"),
    ("synth:fit?model=m.yaml&seed=1&seed=2", "seed: given twice"),
])
def test_bad_synth_sources(source, needle):
    with pytest.raises(TraceError, match=needle):
        open_trace(source)
