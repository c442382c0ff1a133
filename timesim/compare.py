"""``timesim compare RUN_DIR...``: one table (and a plot) across run folders."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import TimesimError

COLUMNS = ("run", "policy", "max writes", "extension", "balanced", "cycles/iter", "energy J/iter")


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
            "energy J/iter": (r["energy_j"]["total"] / T) if "energy_j" in r else None}


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _plot_path(plot: str) -> Path:
    """``--plot`` checked before any work: a .png (added when there is no suffix) in an
    existing folder."""
    p = Path(plot)
    if p.suffix == "":
        p = p.with_suffix(".png")
    if p.suffix.lower() != ".png":
        raise TimesimError(f"--plot {plot}: expected a .png file name, got {p.suffix!r}")
    if not p.parent.is_dir():
        raise TimesimError(f"--plot {plot}: folder {p.parent} does not exist")
    return p


def compare_runs(runs, plot: str | None = None) -> list[dict]:
    if plot:
        from .plots import require_matplotlib

        require_matplotlib("--plot")
        plot_path = _plot_path(plot)
    rows = [summarize(run, load_report(run)) for run in runs]
    widths = [max(len(c), *(len(_cell(r[c])) for r in rows)) for c in COLUMNS]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)))
    for r in rows:
        print("  ".join(_cell(r[c]).ljust(w) for c, w in zip(COLUMNS, widths)))
    if plot:
        from .plots import compare_plot

        compare_plot(rows, plot_path)
        print(f"wrote {plot_path}")
    return rows
