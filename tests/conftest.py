import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

import timesim

# CI runs the same hypothesis examples every time (a red CI must be reproducible); local runs
# explore new examples.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


_WARM: list[subprocess.Popen] = []


def pytest_configure(config):
    """Fill numba's cache on the second core while the suite runs on the first (tests/_warm.py
    says why); ``TIMESIM_NO_WARM=1`` turns it off."""
    if os.environ.get("TIMESIM_NO_WARM") or hasattr(config, "workerinput"):
        return
    _WARM.append(subprocess.Popen([sys.executable, str(Path(__file__).with_name("_warm.py"))],
                                  cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))


def pytest_unconfigure(config):
    for proc in _WARM:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()


@pytest.fixture
def tiny_hw():
    return timesim.load_hwconfig(timesim.config.bundled_hwconfig("tiny"))


def make_hw(selection="sgs", wear_leveling="none", interval=4, R=4, block_rows=8, rct=8,
            density=0.05, cols=8, endurance=None, sigma=None, seed=0):
    sets = [f"controller.selection={selection}", f"controller.wear_leveling={wear_leveling}",
            f"controller.interval={interval}", f"controller.rows={R}",
            f"xbar.rows={block_rows}", f"xbar.cols={cols}", f"controller.rct={rct}",
            f"controller.topk_density={density}", "adc.cols_per_adc=1", f"controller.seed={seed}"]
    if endurance is not None:
        sets.append(f"endurance.cycles={endurance}")
    if sigma is not None:
        sets.append(f"endurance.sigma={sigma}")
    return timesim.load_hwconfig(None, sets)


def random_grads(rng, T, rows, cols, style="normal"):
    if style == "normal":
        g = rng.standard_normal((T, rows, cols))
    elif style == "ties":                      # few distinct magnitudes: many exact ties
        g = rng.integers(-2, 3, size=(T, rows, cols)).astype(np.float64)
    elif style == "hot-row":                   # one row always wins
        g = 0.01 * rng.standard_normal((T, rows, cols))
        g[:, rows // 2, :] += 10.0
    else:
        raise ValueError(style)
    return g.astype(np.float32)


def timing_manifest(folder, layers, iterations=1, batch_size=1):
    """A timing-only trace manifest (no gradient chunks) in ``folder``; returns its path."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "format": "timesim-trace", "version": 1, "model": "m", "iterations": iterations,
        "chunk_iterations": 1, "dtype": "float32", "timing_only": True,
        "batch_size": batch_size, "layers": layers}))
    return str(folder)
