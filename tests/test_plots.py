"""--plots: each figure is produced, non-empty and sane in a headless backend."""

import json

import numpy as np
import pytest

from timesim.cli import main

pytest.importorskip("matplotlib")


def test_run_plots_writes_readable_figures(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--trace", "synth:resnet20?iterations=200", "--set",
                 "controller.selection=topk", "--set", "controller.topk_density=0.01",
                 "--out", str(out), "--plots"]) == 0
    import matplotlib.image as mpimg
    report = json.loads((out / "report.json").read_text())
    names = [l["name"] for l in report["trace"]["layers"]]
    figures = [f"heatmap_{n}.png" for n in names] + ["writes_boxplot.png", "max_writes.png",
                                                     "breakdown.png"]
    for f in figures:
        img = mpimg.imread(out / f)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert np.std(img[..., :3]) > 0.05          # not a blank canvas


def test_big_layers_are_pooled_for_display():
    from timesim.plots import MAX_HEATMAP_PIXELS, _pool
    w = np.arange(4096 * 512).reshape(4096, 512)
    img, f = _pool(w)
    assert img.size <= MAX_HEATMAP_PIXELS and f == 2
    assert img[0, 0] == w[:2, :2].max()


def test_compare_axes_do_not_magnify_tiny_differences():
    from timesim.plots import value_scale

    assert value_scale([107.6, 107.6000001]) == "linear"
    assert value_scale([103.9, 107.6]) == "linear"
    assert value_scale([1.0, 184.0]) == "log"
    assert value_scale([0.0, 5.0]) == "linear"
