"""Figures of a run folder (``timesim run --plots``), headless (matplotlib's Agg backend); PNG,
or PDF/SVG with ``--plots-format``.

- ``heatmap_<layer>.png``: per-cell write counts, physical layout (the paper's Fig. 2)
- ``writes_boxplot.png``: distribution of write counts per layer (Fig. 8)
- ``max_writes.png``: max write count per layer vs iteration (Fig. 9)
- ``breakdown.png``: cycles by phase and energy by component
- ``faults.png``: failed-cell fraction and MVM error vs iteration (wear-out)
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .errors import SimulationError

MAX_HEATMAP_PIXELS = 1 << 20     # bigger layers are max-pooled down for display
FORMATS = ("png", "pdf", "svg")  # --plots-format: PNG, or vector output for papers


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise SimulationError(f"--plots-format: must be one of {'|'.join(FORMATS)}, got {fmt!r}")


def require_matplotlib(what: str = "--plots") -> None:
    """Fail before any work when the plots extra is missing (one line naming the extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SimulationError(f"{what} needs matplotlib: pip install 'timesim[plots]'") from None


def _pyplot():
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pool(w: np.ndarray) -> tuple[np.ndarray, int]:
    """Max-pool a big matrix by an integer factor so the image stays readable and small."""
    f = 1
    while (w.shape[0] // f) * (w.shape[1] // f) > MAX_HEATMAP_PIXELS:
        f *= 2
    if f == 1:
        return w, 1
    r, c = w.shape[0] // f * f, w.shape[1] // f * f
    return w[:r, :c].reshape(r // f, f, c // f, f).max(axis=(1, 3)), f


def heatmap(plt, w: np.ndarray, name: str, policy: str, path: Path) -> None:
    from matplotlib.colors import LogNorm

    img, f = _pool(w)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    lo, hi = max(1, int(img[img > 0].min()) if (img > 0).any() else 1), max(1, int(img.max()))
    norm = LogNorm(vmin=lo, vmax=max(hi, lo + 1)) if hi / lo > 20 else None
    shown = np.ma.masked_less_equal(img, 0) if norm is not None else img
    im = ax.imshow(shown, aspect="auto", interpolation="nearest", cmap="viridis", norm=norm)
    fig.colorbar(im, ax=ax, label="writes per cell" + (" (log scale)" if norm else ""))
    ax.set_xlabel("column (output)" + (f", max over {f}x{f} blocks" if f > 1 else ""))
    ax.set_ylabel("physical row (input)")
    ax.set_title(f"{name}: write counts, {policy}\n{w.shape[0]}x{w.shape[1]}, max {w.max()}, "
                 f"mean {w.mean():.3g}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def boxplot(plt, writes: dict[str, np.ndarray], policy: str, path: Path) -> None:
    names = list(writes)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4.5))
    data = [w.ravel() for w in writes.values()]
    ax.boxplot(data, whis=(0.35, 99.65), showfliers=True, flierprops={"markersize": 2,
               "markeredgecolor": "tab:red"})
    ax.set_xticks(range(1, len(names) + 1), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("writes per cell")
    top = max(int(d.max()) for d in data)
    low = min(int(d.min()) for d in data)
    if top > 0 and top / max(1, low) > 100:
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("writes per cell (symlog scale)")
    ax.set_title(f"Write count distribution per layer, {policy}\n(box: quartiles; whiskers: "
                 f"99.3% coverage; red: outliers)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def max_writes_plot(plt, history: Path, policy: str, path: Path, dense_T: int) -> None:
    """Every layer's curve, each named in a legend beside the axes (in order of the final max,
    largest first; the eight largest drawn thicker)."""
    with open(history, newline="") as fh:
        rows = list(csv.reader(fh))
    names, body = rows[0][1:], np.array(rows[1:], dtype=np.int64)
    per_col = 24                                        # legend entries per legend column
    ncol = max(1, -(-(len(names) + 1) // per_col))
    fig, ax = plt.subplots(figsize=(6.5 + 1.9 * ncol, max(4.5, 0.17 * min(len(names) + 1,
                                                                          per_col) + 1)))
    if body.size:
        t = body[:, 0]
        order = np.argsort(-body[-1, 1:], kind="stable")
        cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
        for rank, j in enumerate(order):
            ax.plot(t, body[:, 1 + j], lw=1.4 if rank < 8 else 0.8,
                    color=cmap(rank % cmap.N), ls=("-", "--", ":")[rank // cmap.N % 3],
                    label=names[j])
        ax.plot(t, t, "k--", lw=1, label="dense baseline")
        ax.set_ylim(1, max(2, int(t[-1]), int(body[:, 1:].max())) * 1.5)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("max writes per cell (log scale)")
    ax.set_title(f"Max write count per layer vs iteration, {policy}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=ncol,
              borderaxespad=0, title="layer (by final max)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log_x(ax) -> None:
    """A log x axis (call after plotting) whose labels cannot collide: at most six ticks, at
    1, 2 and 5 per decade, at decades only on a wide range, or at round linear steps inside a
    decade; written compactly (20k, 1.5M), minor ticks unlabelled."""
    from matplotlib.ticker import EngFormatter, FixedLocator, MaxNLocator, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    if not 0 < lo < hi:
        return
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks = [m * 10.0 ** k for k in decades for m in (1, 2, 5) if lo <= m * 10.0 ** k <= hi]
    if len(ticks) > 6:
        ticks = [10.0 ** k for k in decades if lo <= 10.0 ** k <= hi]
        ticks = ticks[::-(-len(ticks) // 6)]
    if len(ticks) < 2:
        ticks = [t for t in MaxNLocator(nbins=3).tick_values(lo, hi) if lo <= t <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)


def breakdown_plot(plt, report: dict, path: Path) -> None:
    """Cycles by phase (how long each phase lasted on the chip) and energy by component."""
    T = max(1, report["iterations"])
    c = report["cycles"]
    phases = {k: v / T for k, v in c["by_phase"].items() if v > 0}
    busy = c.get("busy_by_phase", {})
    comps = {k: v / T for k, v in report["energy_j"]["by_component"].items() if v > 0}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    x = np.arange(len(phases))
    ax1.bar(x - 0.2, list(phases.values()), 0.4, color="tab:blue",
            label="span (first start to last end)")
    if busy:
        ax1.bar(x + 0.2, [busy.get(k, 0) / T or np.nan for k in phases], 0.4,
                color="tab:green", label="busy (some unit of the phase working)")
    ax1.set_xticks(x, list(phases))
    ax1.set_yscale("log")
    ax1.set_ylabel("cycles per iteration (log scale)")
    ax1.legend(fontsize=7)
    ax1.set_title(f"Cycles by phase (makespan {c['per_iteration']:.3g} "
                  f"cycles/iteration;\nphases may overlap)")
    ax2.bar(list(comps), list(comps.values()), color="tab:orange")
    ax2.set_yscale("log")
    ax2.set_ylabel("energy per iteration (J, log scale)")
    ax2.set_title(f"Energy by component ({report['energy_j']['total'] / T:.3g} J/iteration)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out: str | Path, report: dict, fmt: str = "png") -> list[Path]:
    """Write the figures of a finished run folder as ``fmt`` files (FORMATS); returns their
    paths."""
    _check_format(fmt)
    plt = _pyplot()
    out = Path(out)
    if "estimate" in report:               # timing only: no write counts to draw
        breakdown_plot(plt, report, out / f"breakdown.{fmt}")
        return [out / f"breakdown.{fmt}"]
    p = report["policy"]
    label = p["selection"] + (f" + {p['wear_leveling']} (SI={p['interval']}, R={p['rows']})"
                              if p["wear_leveling"] != "none" else "")
    writes = {l["name"]: np.load(out / "writes" / f"{l['name']}.npy", allow_pickle=False)
              for l in report["trace"]["layers"]}
    made = []
    for name, w in writes.items():
        path = out / f"heatmap_{name}.{fmt}"
        heatmap(plt, w, name, label, path)
        made.append(path)
    boxplot(plt, writes, label, out / f"writes_boxplot.{fmt}")
    max_writes_plot(plt, out / "max_writes_history.csv", label, out / f"max_writes.{fmt}",
                    report["iterations"])
    made += [out / f"writes_boxplot.{fmt}", out / f"max_writes.{fmt}"]
    if "cycles" in report and "energy_j" in report:
        breakdown_plot(plt, report, out / f"breakdown.{fmt}")
        made.append(out / f"breakdown.{fmt}")
    fp = faults_plot(out, report, fmt=fmt)
    if fp is not None:
        made.append(fp)
    return made


def sweep_plots(out: Path, keys: list[str], rows: list[dict], fmt: str = "png") -> list[Path]:
    """Fig. 6 (extension vs ARS interval SI, one curve per R) and Fig. 7 (extension vs
    normalized ARS write energy), when the sweep varies controller.interval."""
    _check_format(fmt)
    plt = _pyplot()
    if "controller.interval" not in keys:
        return []
    group_key = "controller.rows" if "controller.rows" in keys else None
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[group_key] if group_key else "", []).append(r)
    made = []
    for fig_name, xkey, xlabel in (
            (f"fig6_extension_vs_interval.{fmt}", "controller.interval", "ARS interval SI "
             "(iterations)"),
            (f"fig7_extension_vs_ars_energy.{fmt}", "ars.normalized_write_energy",
             "normalized ARS write energy (per iteration, in row writes)")):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        xs, ys = [], []
        for g, rs in sorted(groups.items(), key=lambda kv: float(kv[0] or 0)):
            pts = sorted((float(r[xkey]), r["lifetime.extension"]) for r in rs
                         if r[xkey] is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"R = {g}" if g else None)
                xs += [p[0] for p in pts]
                ys += [p[1] for p in pts]
        bound = max((r["lifetime.balanced_extension"] or 0) for r in rows)
        ax.axhline(bound, color="k", ls="--", lw=1, label=f"balanced bound {bound:.0f}x")
        # axes that contain every point: log x only when all are positive over a decade
        scale = value_scale(xs) if xs else "linear"
        if scale == "log":
            ax.set_xscale("log")
            ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
        elif xs:
            ax.set_xlim(min(0.0, min(xs)), max(xs) * 1.1 if max(xs) > 0 else 1.0)
        ax.set_ylim(0, max(ys + [bound, 1.0]) * 1.1)
        ax.set_xlabel(f"{xlabel}{'; log scale' if scale == 'log' else ''}")
        ax.set_ylabel("lifetime extension (x)")
        ax.set_title("Lifetime extension vs " + ("ARS interval (paper Fig. 6)" if "6" in fig_name
                                                 else "ARS write energy (paper Fig. 7)"))
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fig_name, dpi=100)
        plt.close(fig)
        made.append(out / fig_name)
    return made


def value_scale(vals) -> str:
    """A log axis only when the values are all positive and span more than a decade; linear
    from zero otherwise, so that a 1e-7 relative difference does not look like a factor of 10."""
    pos = [v for v in vals if v > 0]
    return "log" if pos and len(pos) == len(vals) and max(pos) / min(pos) > 10 else "linear"


def compare_plot(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    labels = [f"{Path(r['run']).name}\n{r['policy']}" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(max(9, 2.2 * len(rows) + 3), 4.5))
    for ax, key, title in ((axes[0], "extension", "lifetime extension (x)"),
                           (axes[1], "cycles/iter", "cycles per iteration"),
                           (axes[2], "energy J/iter", "energy per iteration (J)")):
        vals = [r[key] or 0 for r in rows]
        bars = ax.bar(range(len(rows)), vals, color="tab:blue")
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(title)
        if value_scale(vals) == "log":
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, max(vals) * 1.15 if max(vals, default=0) > 0 else 1)
        ax.bar_label(bars, labels=[f"{v:.4g}" for v in vals], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def qq_plot(runs: list[tuple[str, dict]], path: Path, max_layers: int = 8) -> None:
    """Q–Q plot of per-cell write counts, one panel per layer: every run's quantiles against
    the first run's (the diagonal is equality)."""
    plt = _pyplot()
    ref_name, ref = runs[0]
    layers = [n for n in ref if all(n in w for _, w in runs[1:])][:max_layers]
    if not layers:
        from .errors import TimesimError

        raise TimesimError("--qq: the runs have no layer in common")
    cols = min(4, len(layers))
    nrows = -(-len(layers) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 3.2 * nrows), squeeze=False)
    levels = np.concatenate([np.linspace(0, 0.99, 100), 1 - np.logspace(-2.3, -5, 12), [1.0]])
    for ax, name in zip(axes.ravel(), layers):
        x = np.quantile(ref[name], levels)
        top = x.max()
        for run, w in runs[1:]:
            y = np.quantile(w[name], levels)
            top = max(top, y.max())
            ax.plot(x, y, ".-", ms=3, lw=0.8, label=Path(run).name)
        ax.plot([0, top], [0, top], color="0.6", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"{Path(ref_name).name} writes", fontsize=8)
        ax.set_ylabel("writes", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(layers):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle("per-cell write counts, quantile against quantile", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def faults_plot(out: Path, report: dict, max_layers: int = 4, fmt: str = "png") -> Path | None:
    """Failed-cell fraction and relative MVM error vs iteration (extrapolating each cell's
    measured write rate), for the layers that fail first."""
    from .analog import cell_wear, layer_probe, program, relative_error
    from .config import load_hwconfig
    from .faults import _endurance
    from .lifetime import failure_iterations

    if not report.get("faults", {}).get("probe"):
        return None                        # the analog probe was not asked for (--faults)
    plt = _pyplot()
    hw = load_hwconfig(out / "hwconfig.yaml")
    T = report["iterations"]
    e = hw.endurance
    layers = report["trace"]["layers"]
    firsts = []
    for i, l in enumerate(layers):
        w = np.load(out / "writes" / f"{l['name']}.npy", allow_pickle=False)
        end = _endurance(hw, i, w.shape)
        t = failure_iterations(w[None], end, T)
        firsts.append((float(t.min()), i, w, end, t))
    firsts.sort(key=lambda f: f[0])
    accuracy = report["faults"].get("accuracy")
    if accuracy:
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.5))
        ax3.plot(accuracy["iterations"], accuracy["accuracy"], marker="o", label="worn chip")
        ax3.axhline(accuracy["fault_free"], color="tab:green", ls=":",
                    label=f"fault-free chip {accuracy['fault_free']:.3f}")
        ax3.axhline(accuracy["digital"], color="k", ls="--", lw=1,
                    label=f"digital {accuracy['digital']:.3f}")
        _log_x(ax3)
        ax3.set_xlabel("training iteration (log scale; measured write rates extrapolated)")
        ax3.set_ylabel("test accuracy")
        ax3.set_title(f"{accuracy['model']} on the worn chip")
        ax3.legend(fontsize=7)
    else:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for first, i, w, _end, times in firsts[:max_layers]:
        if not np.isfinite(first):
            continue
        name = layers[i]["name"]
        rowmap = np.load(out / "rowmap" / f"{name}.npy", allow_pickle=False)
        half = float(np.quantile(times[np.isfinite(times)], 0.5))
        grid = np.unique(np.geomspace(first, max(half, first * 1.01), 10))
        frac = [(times <= t).mean() for t in grid]
        x, wt = layer_probe(w.shape[0], w.shape[1], e.seed)
        ref = x.astype(np.float64) @ wt.astype(np.float64)
        errs = []
        for t in grid:
            wear = cell_wear(w, hw, i, rowmap, scale=t / T)
            errs.append(relative_error(program(wt, hw, wear, e.seed, calib=x).mvm(x, e.seed),
                                       ref))
        clean = relative_error(program(wt, hw, None, e.seed, calib=x).mvm(x, e.seed), ref)
        ax1.plot(grid, frac, marker="o", label=name)
        line = ax2.plot(grid, errs, marker="o", label=f"{name} worn")[0]
        ax2.axhline(clean, color=line.get_color(), ls=":", lw=1,
                    label=f"{name} fault-free {clean:.3f}")
    bound = report["faults"]["bound"]
    ax1.axhline(bound, color="k", ls="--", lw=1, label=f"bound {bound:.0%}")
    for ax, ylabel in ((ax1, "failed cell fraction"), (ax2, "relative MVM error")):
        _log_x(ax)
        ax.set_xlabel("training iteration (log scale; measured write rates extrapolated)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    ax1.set_title("Worn-out cells vs iteration")
    ax2.set_title("MVM error of a random layer on the worn crossbars\n(dotted: the same "
                  "chip without faults)")
    fig.tight_layout()
    path = out / f"faults.{fmt}"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
