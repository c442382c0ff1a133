"""What figures and listings show: every layer named, labels that do not collide, significant
figures, whole sentences, vector output."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from timesim.cli import main

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[1]


class KeepFigure:
    """pyplot, except that ``close(fig)`` keeps the figure for the test to read."""

    def __init__(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.fig = plt, None

    def __getattr__(self, name):
        return getattr(self.plt, name)

    def close(self, fig):
        self.fig = fig


def test_max_writes_names_every_layer(tmp_path):
    from timesim.plots import max_writes_plot

    names = [f"layer{i}.conv" for i in range(20)]
    t = np.arange(1, 6) * 100
    rows = ["iteration," + ",".join(names)]
    rows += [f"{ti}," + ",".join(str(ti // 50 + i) for i in range(20)) for ti in t]
    (tmp_path / "h.csv").write_text("\n".join(rows) + "\n")
    keep = KeepFigure()
    max_writes_plot(keep, tmp_path / "h.csv", "sgs", tmp_path / "m.png", 500)
    fig = keep.fig
    legend = fig.axes[0].get_legend()
    shown = [t.get_text() for t in legend.get_texts()]
    assert sorted(shown) == sorted(names + ["dense baseline"])
    # ... and the legend lies inside the figure
    fig.canvas.draw()
    box = legend.get_window_extent()
    w, h = fig.canvas.get_width_height()
    assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= w + 1 and box.y1 <= h + 1
    keep.plt.close(fig)


def shown(ax, labels):
    lo, hi = ax.get_xlim()
    return [l for l in labels if l.get_text() and lo <= l.get_position()[0] <= hi]


def overlapping(labels) -> bool:
    boxes = sorted((l.get_window_extent() for l in labels), key=lambda b: b.x0)
    return any(a.x1 > b.x0 for a, b in zip(boxes, boxes[1:]))


@pytest.mark.parametrize("lo,hi,width", [(1.3e4, 4.5e4, 3.4), (1.5e3, 6e4, 3.4),
                                         (50, 3e9, 3.4), (1.05e5, 1.2e5, 3.4)])
def test_fault_plot_log_axes_labels_do_not_overlap(lo, hi, width):
    from timesim.plots import _log_x

    keep = KeepFigure()
    fig, ax = keep.plt.subplots(figsize=(width, 3))
    ax.plot(np.geomspace(lo, hi, 10), np.arange(10))
    _log_x(ax)
    fig.canvas.draw()
    labels = shown(ax, ax.get_xticklabels() + ax.get_xticklabels(minor=True))
    assert len(labels) >= 2                                      # readable: labelled at all
    assert not overlapping(labels)
    keep.plt.close(fig)


def test_heatmap_title_in_significant_figures(tmp_path):
    from timesim.plots import heatmap

    w = np.zeros((40, 25), dtype=np.int64)
    w[0, 0] = 3                                  # mean 3 / 1000 = 0.003
    keep = KeepFigure()
    heatmap(keep, w, "fc", "sgs", tmp_path / "h.png")
    title = keep.fig.axes[0].get_title()
    assert "mean 0.003" in title
    keep.plt.close(keep.fig)


def test_hwconfigs_lists_whole_sentences(capsys, monkeypatch):
    from timesim.config import presets

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["hwconfigs"]) == 0
    out = capsys.readouterr().out.splitlines()[:-1]
    assert all(len(l) <= 80 for l in out)
    entries, cur = {}, None
    for line in out:
        if not line.startswith(" "):
            cur = line.split()[0]
            entries[cur] = line[22:]
        else:
            entries[cur] += " " + line.strip()
    assert sorted(entries) == presets()
    for name, about in entries.items():
        assert re.search(r"[.!?)]$", about.strip()), (name, about)     # not cut mid-sentence


def test_hwconfig_doc_lists_every_bundled_chip_as_generated():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_hwconfig_keys
    finally:
        sys.path.pop(0)
    from timesim.config import presets

    doc = (ROOT / "docs" / "hwconfig.md").read_text()
    section = doc[doc.index("## Bundled chips"):doc.index("## Keys")]
    for name in presets():
        assert f"`{name}`" in section
    assert gen_hwconfig_keys.chips() in doc        # regenerate: python docs/gen_hwconfig_keys.py


@pytest.mark.parametrize("fmt,magic", [("svg", b"<svg"), ("pdf", b"%PDF")])
def test_plots_format_writes_vector_figures(tmp_path, fmt, magic):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--threads", "1", "--plots-format", fmt]) == 0
    for fig in ("max_writes", "writes_boxplot", "heatmap_fc1"):
        data = (out / f"{fig}.{fmt}").read_bytes()
        assert magic in data[:400]
        assert not (out / f"{fig}.png").exists()
