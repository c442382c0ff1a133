"""Checkpoints of a running simulation: one .npz written atomically into the run folder.

Everything that evolves is saved: each layer's residual accumulator, write counts, row counters,
row maps, kernel statistics and top-k threshold; the engine's signature counts; the max-writes
history; the trace position; the state of a stateful trace generator (hammer-chase's shadow).
Synthetic noise is counter-based, so it needs no RNG state. A fingerprint of the resolved
hwconfig and the trace guards against resuming with other arguments.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import SimulationError

NAME = "checkpoint.npz"
FORMAT = 1


def fingerprint(hw_dict: dict, trace_label: str, meta_dict: dict) -> str:
    blob = json.dumps({"hw": hw_dict, "trace": trace_label, "meta": meta_dict},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def saved_info(out: Path, name: str = NAME) -> dict:
    """The info of ``out``'s checkpoint ``name`` (fingerprint, iterations, ...), or {} when
    there is none (or it is unreadable)."""
    try:
        with np.load(Path(out) / name, allow_pickle=False) as z:
            return json.loads(z["info"].tobytes().decode())
    except Exception:
        return {}


def saved_fingerprint(out: Path) -> str | None:
    """The fingerprint of ``out``'s checkpoint, or None when there is none (or it is
    unreadable)."""
    return saved_info(out).get("fingerprint")


def state_arrays(policies, trace) -> dict[str, np.ndarray]:
    """Every policy's state (``layer{i}/...``) and a stateful generator's (``trace/...``)."""
    arrays: dict[str, np.ndarray] = {}
    for i, policy in enumerate(policies):
        for k, v in policy.state().items():
            arrays[f"layer{i}/{k}"] = v
    for k, v in (trace.state() if hasattr(trace, "state") else {}).items():
        arrays[f"trace/{k}"] = v
    return arrays


def load_state_arrays(arrays: dict[str, np.ndarray], policies, trace) -> None:
    """The inverse of ``state_arrays``."""
    for i, policy in enumerate(policies):
        prefix = f"layer{i}/"
        policy.load_state({k[len(prefix):]: v for k, v in arrays.items()
                           if k.startswith(prefix)})
    if hasattr(trace, "load_state"):
        trace.load_state({k[6:]: v for k, v in arrays.items() if k.startswith("trace/")})


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def save(out: Path, sim, trace, fp: str, extra: dict | None = None) -> Path:
    """``extra``: JSON-able state of the caller (trace position, non-finite counters)."""
    arrays = state_arrays(sim.policies, trace)
    info = {"format": FORMAT, "fingerprint": fp, "iterations": sim.iterations,
            "engine": sim.engine.state(),
            "hist_t": sim.hist_t, "hist_max": sim.hist_max, "step": sim._step,
            "next_mark": sim._next_mark, "extra": extra or {},
            "hwconfig": sim.hw.to_dict()}        # to name what differs on a refused resume
    arrays["info"] = np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)
    return write_npz(out / NAME, arrays)


def flat_keys(d: dict, prefix: str = "") -> dict:
    """A resolved hwconfig (``to_dict``, or as saved in JSON) as {dotted key: value}, lists
    where ``to_dict`` has tuples (so that a saved and a fresh one compare equal)."""
    out = {}
    for k, v in json.loads(json.dumps(d)).items():
        if isinstance(v, dict):
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(old, new, limit: int = 3) -> str:
    """The hwconfig keys whose values differ between two resolved hwconfigs (``to_dict``), as
    ``key: old -> new`` (the first ``limit``, and how many more); "" when none or unknown."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ""

    a, b = flat_keys(old), flat_keys(new)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    text = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit])
    return text + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load(out: Path, sim, trace, fp: str) -> dict:
    """Restore ``sim`` (and the trace generator) from ``out``'s checkpoint; return the caller's
    ``extra`` state as saved, with ``iterations`` (simulated) added."""
    path = out / NAME
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # a damaged checkpoint is a user-visible condition, not a crash
        raise SimulationError(f"{path}: unreadable checkpoint ({exc}); remove it to start "
                              f"over") from None
    info = json.loads(arrays.pop("info").tobytes().decode())
    if info.get("format") != FORMAT:
        raise SimulationError(f"{path}: checkpoint format {info.get('format')!r} not "
                              f"supported")
    if info["fingerprint"] != fp:
        hint = ("; a synth: spec without gen= now means generator 2 (earlier versions: 1): "
                "a run started by an earlier version resumes with gen=1 in its spec"
                if getattr(trace, "params", {}).get("gen") == 2 else "")
        keys = differences(info.get("hwconfig"), sim.hw.to_dict())
        what = (f"other hwconfig values ({keys})" if keys else
                "another trace or --nonfinite" if "hwconfig" in info else
                "other arguments (hwconfig, --set or trace differ)")
        raise SimulationError(f"{path}: made with {what}; rerun with the same arguments or "
                              f"another --out{hint}")
    try:
        load_state_arrays(arrays, sim.policies, trace)
    except (KeyError, ValueError) as exc:
        raise SimulationError(f"{path}: checkpoint does not match this run ({exc})") from None
    sim.engine.load_state(info["engine"])
    sim.iterations = info["iterations"]
    sim.hist_t, sim.hist_max = info["hist_t"], info["hist_max"]
    sim._step, sim._next_mark = info["step"], info["next_mark"]
    return {**info.get("extra", {}), "iterations": sim.iterations}
