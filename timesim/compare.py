"""``timesim compare RUN_DIR...``: one table (and a plot) across run folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import TimesimError

QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)

COLUMNS = ("run", "policy", "max writes", "extension", "balanced", "cycles/iter", "energy J/iter",
           "select busy cycles/iter", "select J/iter")


def load_report(run: str | Path) -> dict:
    p = Path(run) / "report.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise TimesimError(f"{run}: no report.json (not a finished run folder)") from None
    except (OSError, ValueError) as exc:
        raise TimesimError(f"{p}: unreadable report ({exc})") from None


def summarize(run: str | Path, r: dict) -> dict:
    p = r.get("policy", {})
    policy = p.get("selection", "?")
    if p.get("wear_leveling", "none") != "none":
        policy += f" + {p['wear_leveling']} ({p.get('interval')}, {p.get('rows')})"
    T = r.get("iterations") or 1
    lt = r.get("lifetime", {})
    return {"run": str(run), "policy": policy, "max writes": r.get("writes", {}).get("max"),
            "extension": lt.get("extension"), "balanced": lt.get("balanced_extension"),
            "cycles/iter": r.get("cycles", {}).get("per_iteration"),
            "energy J/iter": (r["energy_j"]["total"] / T) if "energy_j" in r else None,
            # the selection's own work (paper Sec. 3.2: top-k's O(n log2 k) comparisons),
            # which phase overlap hides in the iteration's cycles
            "select busy cycles/iter": _per(r.get("cycles", {}).get("busy_by_phase"), T),
            "select J/iter": _per(r.get("energy_j", {}).get("by_phase"), T),
            # not columns: what the selection notes need to know the runs differ only in it
            "_trace": (r.get("trace") or {}).get("fingerprint"), "_iterations": T,
            "_hwconfig": r.get("hwconfig")}


def _per(by_phase: dict | None, T: int) -> float | None:
    if not by_phase or "select" not in by_phase:
        return None
    return by_phase["select"] / T


def selection_notes(rows: list[dict]) -> list[str]:
    """Against the first run: how much more (or less) the selection works, and whether that
    lengthens the iteration or hides under other layers' work."""
    ref = rows[0]
    keys = ("select busy cycles/iter", "cycles/iter")
    if any(ref[k] is None for k in keys):
        return []
    notes = []
    for r in rows[1:]:
        if any(r[k] is None for k in keys):
            continue
        ds, dc = (r[k] - ref[k] for k in keys)
        if ds == 0 and dc == 0:
            continue
        other = _beyond_selection(r, ref)
        if other:           # the iteration's difference is not the selection's alone
            how = f"iteration {dc:+.4g} cycles, not the selection's alone ({other})"
        elif ds > 0 and dc > 0:
            how = (f"lengthens the iteration by {dc:.4g} cycles "
                   f"({100 * min(1.0, dc / ds):.3g}% of its extra selection time)")
        elif ds > 0:
            how = "hidden by overlap: the iteration is not longer"
        else:
            how = f"iteration {dc:+.4g} cycles"
        notes.append(f"{r['run']} against {ref['run']}: selection busy {ds:+.4g} cycles/iter, "
                     f"energy {_delta(r, ref)} J/iter; {how}")
    return notes


# the controller keys that choose what is written: a difference in any other key (wear
# levelling and its interval and rows, the crossbars, ...) changes the iteration too
SELECTION_KEYS = ("controller.selection", "controller.rct", "controller.topk_density")


def _beyond_selection(r: dict, ref: dict) -> str:
    """What else differs between two runs than the selection: the workload (or its length),
    or a hwconfig key other than SELECTION_KEYS and the chip's ``name`` ("" when nothing, or
    when a report does not say)."""
    from .checkpoint import flat_keys

    if r["_trace"] != ref["_trace"]:
        return "another workload or length"
    a, b = r["_hwconfig"], ref["_hwconfig"]
    if isinstance(a, dict) and isinstance(b, dict):
        fa, fb = flat_keys(a), flat_keys(b)
        keys = [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)
                and k not in SELECTION_KEYS and k != "name"]
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            return f"hwconfig {', '.join(keys[:3])}{more} differ{'s' if len(keys) == 1 else ''}"
    return ""


def _delta(r: dict, ref: dict) -> str:
    a, b = r["select J/iter"], ref["select J/iter"]
    if a is None or b is None:
        return "-"
    d = a - b
    # the same work summed in another order differs in the last bits: that is no difference
    return "+0" if abs(d) <= 1e-9 * max(abs(a), abs(b)) else f"{d:+.4g}"


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _plot_path(plot: str) -> Path:
    """``--plot`` checked before any work: a .png (added when there is no suffix) whose
    folder exists or can be made (``_make_folder``, just before writing, as ``run --out``
    makes its run folder)."""
    p = Path(plot)
    if p.suffix == "":
        p = p.with_suffix(".png")
    if p.suffix.lower() != ".png":
        raise TimesimError(f"--plot {plot}: expected a .png file name, got {p.suffix!r}")
    there = next((a for a in (p.parent, *p.parent.parents) if a.exists()), Path("."))
    if not there.is_dir() or not os.access(there, os.W_OK):
        raise TimesimError(f"--plot {plot}: cannot make its folder {p.parent} ({there} is "
                           f"{'not a folder' if not there.is_dir() else 'not writable'})")
    return p


def _make_folder(p: Path) -> Path:
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TimesimError(f"{p}: cannot make its folder ({exc.strerror})") from None
    return p


def load_writes(run: str | Path) -> dict[str, np.ndarray]:
    """Per-layer physical write counts of a run folder (``writes/LAYER.npy``), in the order of
    its report's layers."""
    r = load_report(run)
    out = {}
    for layer in r.get("trace", {}).get("layers", []):
        p = Path(run) / "writes" / f"{layer['name']}.npy"
        if not p.is_file():
            raise TimesimError(f"{run}: writes/{layer['name']}.npy is missing (a run written "
                               f"without write counts?)")
        out[layer["name"]] = np.load(p)
    return out


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """W1 distance between two samples of per-cell write counts: ∫ |F_a(x) − F_b(x)| dx over
    their empirical CDFs (for equal sizes, the mean |difference| of the sorted samples)."""
    a = np.sort(np.ravel(a)).astype(np.float64)
    b = np.sort(np.ravel(b)).astype(np.float64)
    allv = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(a, allv[:-1], side="right") / a.size
    fb = np.searchsorted(b, allv[:-1], side="right") / b.size
    return float((np.abs(fa - fb) * np.diff(allv)).sum())


def distribution_rows(runs) -> list[dict]:
    """Per run and layer: write-count quantiles, and against the first run (the reference)
    the W1 distance normalised by the reference's mean."""
    data = [(str(run), load_writes(run)) for run in runs]
    ref = data[0][1]
    rows = []
    for i, (run, writes) in enumerate(data):
        for name, w in writes.items():
            row = {"run": run, "layer": name, "mean": float(w.mean()),
                   **{f"q{q:g}": float(np.quantile(w, q)) for q in QUANTILES}}
            if i > 0 and name in ref and ref[name].mean() > 0:
                row["w1/mean"] = wasserstein(w, ref[name]) / float(ref[name].mean())
            rows.append(row)
    return rows


def compare_runs(runs, plot: str | None = None, quantiles: bool = False,
                 qq: str | None = None) -> list[dict]:
    if plot or qq:
        from .plots import require_matplotlib

        require_matplotlib("--plot" if plot else "--qq")
    plot_path = _plot_path(plot) if plot else None
    qq_path = _plot_path(qq) if qq else None
    reports = [load_report(run) for run in runs]
    shared = set.intersection(*({layer.get("name") for layer in
                                 (r.get("trace") or {}).get("layers") or []} for r in reports))
    if qq and not shared:                       # before any table, not after them
        raise TimesimError("--qq: the runs have no layer in common")
    rows = [summarize(run, r) for run, r in zip(runs, reports)]
    widths = [max(len(c), *(len(_cell(r[c])) for r in rows)) for c in COLUMNS]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)))
    for r in rows:
        print("  ".join(_cell(r[c]).ljust(w) for c, w in zip(COLUMNS, widths)))
    models = list(dict.fromkeys(str((r.get("trace") or {}).get("model", "?")) for r in reports))
    if len(models) > 1:
        print(f"note: the runs are of different models ({', '.join(models)}); the per-layer "
              f"comparisons cover the {len(shared)} layer(s) they share")
    lengths = list(dict.fromkeys(r["_iterations"] for r in rows))
    if len(lengths) > 1:
        print(f"note: the runs are of different lengths ({', '.join(map(str, lengths))} "
              f"iterations); max writes grow with the length, and the extension and failure "
              f"figures are comparable only at equal lengths")
    notes = selection_notes(rows)
    if notes:
        print()
        print("selection (busy cycles of the CE and top-k unit, and their energy):")
        for n in notes:
            print("  " + n)
    if plot:
        from .plots import compare_plot

        compare_plot(rows, _make_folder(plot_path))
        print(f"wrote {plot_path}")
    if quantiles or qq:
        dist = distribution_rows(runs)
        if quantiles:
            cols = ("run", "layer", "mean", *(f"q{q:g}" for q in QUANTILES), "w1/mean")
            print()
            print("write counts per cell (w1/mean: Wasserstein distance to the first run's "
                  "layer, over its mean)")
            widths = [max(len(c), *(len(_cell(r.get(c))) for r in dist)) for c in cols]
            print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
            for r in dist:
                print("  ".join(_cell(r.get(c)).ljust(w) for c, w in zip(cols, widths)))
        if qq:
            from .plots import qq_plot

            qq_plot([(str(run), load_writes(run)) for run in runs], _make_folder(qq_path))
            print(f"wrote {qq_path}")
    return rows
