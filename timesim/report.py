"""report.json (DESIGN §4) and the run folder: writes/, rowmap/, history, resolved hwconfig."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from ._version import __version__
from .config import HwConfig
from .errors import SimulationError
from .lifetime import lifetime_report
from .mapping import attention_work
from .policies import LayerPolicy


def trace_fingerprint(trace) -> str:
    """What identifies a trace's content: its manifest (shapes, geometry, batch, iterations,
    per-chunk checksums when the writer recorded them) and, for a synthetic stream, its
    generator, seed and parameters; not where it lies on disk."""
    meta = trace.meta.to_dict()
    synth = (getattr(trace, "fingerprint_label", getattr(trace, "label", ""))
             if not hasattr(trace, "path") else "")
    blob = json.dumps({"meta": meta, "synth": synth}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def hwconfig_hash(hw: HwConfig) -> str:
    """The resolved chip (every key, SI values; the name and source file excluded)."""
    d = hw.to_dict()
    d.pop("name", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def writes_summary(w: np.ndarray, policy_cells: int, T: int) -> dict:
    return {"max": int(w.max()), "mean": float(w.mean()), "p99": float(np.percentile(w, 99)),
            "total": int(w.sum(dtype=np.int64)), "sparsity": 1.0 - policy_cells / (T * w.size)}


def build_report(hw: HwConfig, trace, policies: Sequence[LayerPolicy], T: int,
                 wall_s: float) -> dict:
    meta = trace.meta
    names = [p.layer.name for p in policies]
    writes = [p.writes for p in policies]
    total = sum(int(w.sum(dtype=np.int64)) for w in writes)
    cells = sum(w.size for w in writes)
    c = hw.controller
    report = {
        "timesim_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "hwconfig": hw.to_dict(),
        "trace": {"path": trace.label,
                  "model": meta.model, "source": meta.source, "dataset": meta.dataset,
                  "dtype": meta.dtype, "iterations": meta.iterations,
                  "layers": [{"name": l.name, "kind": l.kind, "rows": l.rows, "cols": l.cols}
                             for l in meta.layers],
                  **({"updates": meta.updates} if getattr(meta, "updates", "") else {})},
        "policy": {"selection": c.selection, "rct": c.rct, "topk_density": c.topk_density,
                   "wear_leveling": c.wear_leveling, "interval": c.interval, "rows": c.rows,
                   "by_layer": {p.layer.name: p.selection for p in policies}},
        "iterations": T,
        "writes": {"total": total, "max": max(int(w.max()) for w in writes),
                   "mean": total / cells,
                   "by_layer": {p.layer.name: writes_summary(p.writes, p.policy_cell_writes, T)
                                for p in policies}},
        "ars": {"swaps": sum(p.swaps for p in policies),
                "rewrite_cells": sum(p.ars_cells for p in policies),
                "by_layer": {p.layer.name: {"swaps": p.swaps, "rewrite_cells": p.ars_cells}
                             for p in policies}},
        "lifetime": lifetime_report(T, names, writes, [p.policy_cell_writes for p in policies],
                                    hw.endurance),
        "wall_s": wall_s,
    }
    return report


def left_digital(meta, hw: HwConfig) -> dict:
    """report.json's ``skipped`` (DESIGN §10: weight-bearing layers left digital or out, from
    the manifest), ``digital`` (attention's activation x activation products that the attention
    unit times, each with the out_proj ``layer`` it is charged to), ``left_out`` (digital work
    not timed: products whose out_proj is not mapped, or a chip without an attention unit; MACs
    per iteration) and ``coverage``: the share of the model's weights that the report covers
    (older manifests without parameter counts: the skipped ones count as 0)."""
    skipped = [{"name": d.get("name", ""), "reason": d.get("reason", ""),
                "parameters": int(d.get("parameters", 0))} for d in meta.skipped]
    mapped = sum(layer.weights for layer in meta.layers)
    left = sum(d["parameters"] for d in skipped)
    _, timed, untimed = attention_work(meta.layers, meta.left_out, hw)
    return {"skipped": skipped, "digital": timed, "left_out": untimed,
            "coverage": {"mapped_parameters": mapped, "skipped_parameters": left,
                         "mapped_fraction": mapped / (mapped + left) if mapped + left else 1.0}}


RUN_FILES = ("report.json", "actions.csv", "max_writes_history.csv", "hwconfig.yaml",
             *(f"{fig}.{ext}" for fig in ("writes_boxplot", "max_writes", "breakdown", "faults")
               for ext in ("png", "pdf", "svg")))
RUN_DIRS = ("writes", "rowmap")


def clear_run_folder(out: str | Path) -> bool:
    """Remove what an earlier run wrote into ``out`` (report, CSVs, arrays, figures), so a new
    run never sits next to stale results; anything else in the folder is left alone. Returns
    whether there was an earlier run."""
    out = Path(out)
    if not out.is_dir():
        return False
    earlier = (out / "report.json").exists()
    try:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for ext in ("png", "pdf", "svg"):               # --plots-format
            for fig in out.glob(f"heatmap_*.{ext}"):
                fig.unlink()
        for d in RUN_DIRS:
            if (out / d).is_dir():
                for f in (out / d).glob("*.npy"):
                    f.unlink()
                if not any((out / d).iterdir()):
                    (out / d).rmdir()
        shards = out / "shards"                    # a distributed run's shard checkpoints
        if shards.is_dir():
            for f in shards.glob("shard-*.npz"):
                f.unlink()
            if not any(shards.iterdir()):
                shards.rmdir()
    except OSError as exc:
        raise SimulationError(f"{out}: cannot clear the earlier run: {exc}") from None
    return earlier


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
    os.replace(tmp, path)


def write_run(out: str | Path, report: dict, policies: Sequence[LayerPolicy],
              history: tuple[list[int], list[list[int]]], write_actions=None) -> Path:
    """Write the run folder; report.json goes last so its presence means the run is complete."""
    out = Path(out)
    try:
        (out / "writes").mkdir(parents=True, exist_ok=True)
        (out / "rowmap").mkdir(exist_ok=True)
        (out / "report.json").unlink(missing_ok=True)
        for p in policies:
            _atomic_save(out / "writes" / f"{p.layer.name}.npy", p.writes)
            _atomic_save(out / "rowmap" / f"{p.layer.name}.npy", p.l2p)
        iters, maxima = history
        lines = ["iteration," + ",".join(p.layer.name for p in policies)]
        lines += [f"{t}," + ",".join(str(m) for m in row) for t, row in zip(iters, maxima)]
        _atomic_write(out / "max_writes_history.csv", ("\n".join(lines) + "\n").encode())
        if write_actions is not None:
            write_actions(out / "actions.csv")
    except OSError as exc:
        raise SimulationError(f"{out}: cannot write run folder: {exc}") from None
    return write_report_only(out, report)


def write_report_only(out: str | Path, report: dict) -> Path:
    """hwconfig.yaml, then report.json (last: its presence means the run folder is complete).
    Alone, the run folder of a timing-only estimate."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "hwconfig.yaml",
                      yaml.safe_dump(report["hwconfig"], sort_keys=False).encode())
        _atomic_write(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    except OSError as exc:
        raise SimulationError(f"{out}: cannot write run folder: {exc}") from None
    return out
