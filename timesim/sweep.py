"""Design-space sweeps: every point is a ``timesim run`` with extra ``--set`` overrides.

Points run in parallel on local processes (``workers``) or on an existing Dask cluster
(``scheduler``: dask.distributed's ``Client.get_executor()``, a concurrent.futures executor, so
both paths share this code). Each point's run folder is written as it finishes
(``OUT/points/<id>/report.json`` last); ``sweep.csv`` and ``sweep.json`` are rewritten after each
point. An interrupted sweep rerun with the same arguments skips the finished points: a point
counts as finished only when its run folder's report carries the same trace fingerprint and
resolved hwconfig hash (a different trace or setting into the same ``--out`` reruns it).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from pathlib import Path

from .config import load_hwconfig
from .errors import ConfigError, SimulationError

log = logging.getLogger(__name__)

METRICS = ("lifetime.extension", "lifetime.balanced_extension", "writes.max", "ars.swaps",
           "ars.normalized_write_energy", "cycles.total", "energy_j.total",
           "energy_j.ars_overhead")


def parse_grid(grids: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["controller.interval=256,1024", ...]`` -> [(key, [values])], checked against the
    hwconfig schema (each value must load)."""
    out = []
    for text in grids:
        key, sep, values = text.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(vals):
            raise ConfigError(f"--grid {text}: expected key.path=v1,v2,... ")
        if key in (k for k, _ in out):
            raise ConfigError(f"--grid {text}: {key} is swept twice")
        for v in vals:
            try:
                load_hwconfig(None, [f"{key}={v}"])
            except ConfigError as exc:              # name what the user typed: --grid
                msg = str(exc)
                head = f"--set {key}={v}: "
                raise ConfigError(f"--grid {text}: {msg[len(head):]}" if msg.startswith(head)
                                  else f"--grid {text}: {msg}") from None
        out.append((key, vals))
    if not out:
        raise ConfigError("--grid: give at least one key.path=v1,v2,...")
    return out


def points(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in grid))]


def point_id(index: int, settings: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"p{index:04d}-{digest}"


def _get(report: dict, dotted: str):
    node = report
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run_point(hw_path: str | None, base_sets: Sequence[str], trace: str,
              settings: dict[str, str], out: str, checkpoint_every: int) -> dict:
    """One point (runs in a worker process): the report of ``timesim run`` with these settings."""
    from . import checkpoint
    from .report import trace_fingerprint
    from .simulate import run_fingerprint, simulate
    from .trace import open_trace

    hw = load_hwconfig(hw_path, [*base_sets, *(f"{k}={v}" for k, v in settings.items())])
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    (out_p / "point.json").write_text(json.dumps(settings, sort_keys=True))
    tr = open_trace(trace)
    # continue only from a checkpoint of this very point (same chip and trace content)
    resume = (checkpoint_every > 0 and checkpoint.saved_fingerprint(out_p)
              == run_fingerprint(hw, trace_fingerprint(tr)))
    # one thread per point: the points themselves run in parallel
    report = simulate(hw, tr, out=out_p, checkpoint_every=checkpoint_every, resume=resume,
                      threads=1)
    return {k: _get(report, k) for k in METRICS}


def _finished(folder: Path, settings: dict[str, str], trace_fp: str, hw_hash: str
              ) -> dict | None:
    """The metrics of a point already run with these settings, this chip and this trace's
    content (the run folder's own fingerprints decide), else None."""
    try:
        if json.loads((folder / "point.json").read_text()) != settings:
            return None
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if (_get(report, "trace.fingerprint") != trace_fp
            or report.get("hwconfig_hash") != hw_hash):
        return None
    return {k: _get(report, k) for k in METRICS}


def _write_table(out: Path, keys: list[str], rows: list[dict]) -> None:
    done = sorted((r for r in rows if r is not None), key=lambda r: r["point"])
    tmp = out / "sweep.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["point", *keys, *METRICS])
        for r in done:
            w.writerow([r["point"], *(r[k] for k in keys), *(r[m] for m in METRICS)])
    os.replace(tmp, out / "sweep.csv")
    tmp = out / "sweep.json.tmp"
    tmp.write_text(json.dumps({"keys": keys, "metrics": list(METRICS), "points": done},
                              indent=2) + "\n")
    os.replace(tmp, out / "sweep.json")


def run_sweep(hw_path: str | None, trace: str, grid: list[tuple[str, list[str]]], out: str,
              base_sets: Sequence[str] = (), workers: int | None = None,
              scheduler: str | None = None, checkpoint_every: int = 0,
              progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Run every grid point not finished yet; return all rows (point order)."""
    from .report import hwconfig_hash, trace_fingerprint
    from .simulate import _say_recording
    from .trace import open_trace

    load_hwconfig(hw_path, base_sets)                 # bad inputs fail here, before any work
    opened = open_trace(trace)
    trace_fp = trace_fingerprint(opened)
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    keys = [k for k, _ in grid]
    todo, rows, said = [], [], set()
    for i, settings in enumerate(points(grid)):
        pid = point_id(i, settings)
        folder = out_p / "points" / pid
        row = {"point": pid, **settings}
        hw = load_hwconfig(hw_path, [*base_sets, *(f"{k}={v}" for k, v in settings.items())])
        if hw.controller.selection not in said:     # the workers' logs are not the user's
            said.add(hw.controller.selection)
            _say_recording(hw, opened)
        got = _finished(folder, settings, trace_fp, hwconfig_hash(hw))
        if got is not None:
            rows.append({**row, **got})
        else:
            rows.append(None)
            todo.append((len(rows) - 1, row, folder, settings))
    _write_table(out_p, keys, rows)
    done = len(rows) - len(todo)
    if progress:
        progress(done, len(rows))
    if not todo:
        return rows
    executor, client = _executor(workers, scheduler)
    try:
        futures = {executor.submit(run_point, hw_path, list(base_sets), trace, settings,
                                   str(folder), checkpoint_every): (idx, row)
                   for idx, row, folder, settings in todo}
        for fut in as_completed(futures):
            idx, row = futures[fut]
            rows[idx] = {**row, **fut.result()}
            _write_table(out_p, keys, rows)
            done += 1
            if progress:
                progress(done, len(rows))
    except KeyboardInterrupt:
        if client is None:              # Ctrl-C to the sweep alone: do not wait for the points
            stopped = _stop_workers(executor)
            again = ("continues from its last checkpoint" if checkpoint_every > 0 else
                     "starts over (no --checkpoint-every)")
            log.warning("interrupted: %d finished point%s kept in %s; %d worker%s stopped (a "
                        "point that was running %s when the sweep is run again on the same "
                        "--out)", done, "" if done == 1 else "s", out_p / "sweep.csv",
                        stopped, "" if stopped == 1 else "s", again)
        raise
    finally:
        if client is not None:
            executor.shutdown(wait=True)
            client.close()
        else:
            executor.shutdown(wait=True, cancel_futures=True)
    return rows


def _stop_workers(executor) -> int:
    """Terminate a local pool's worker processes (a sweep interrupted by a signal to itself
    alone; a terminal's Ctrl-C reaches the workers too). The points' checkpoints and run
    folders are written atomically, so nothing finished is lost. Returns how many were
    running."""
    procs = [p for p in (getattr(executor, "_processes", None) or {}).values()
             if p.is_alive()]
    for p in procs:
        p.terminate()
    return len(procs)


def _executor(workers: int | None, scheduler: str | None) -> tuple[Executor, object]:
    if scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise SimulationError("--scheduler needs dask.distributed: pip install "
                                  "'timesim[dist]'") from None
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise SimulationError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        return client.get_executor(), client
    n = workers or os.cpu_count() or 1
    # Workers start from a fresh interpreter (forkserver), never as a fork of this process:
    # a process whose numba threads have run (the analog MVM uses GNU OpenMP) cannot fork.
    ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    return ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_end_with,
                               initargs=(os.getpid(),)), None


def _alive(pid: int) -> bool:
    """``pid`` is running: it exists and is not a zombie (a killed sweep whose parent has not
    reaped it yet, e.g. one that reads the sweep's output to its end first, still answers
    kill(pid, 0); Linux's /proc says Z)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                     # exists, not ours to signal
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:                     # no /proc (macOS): kill's answer stands
        return True
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")


def _end_with(pid: int) -> None:
    """In a sweep worker: end when the sweep process ``pid`` is gone. A sweep killed outright
    (kill -9, the OOM killer) cannot shut its pool down, and its workers would wait forever
    for work, each keeping the forkserver alive too. POSIX only: on Windows kill(pid, 0)
    sends a Ctrl-C event instead of asking whether the process exists."""
    if os.name != "posix":
        return

    def watch():
        while True:
            time.sleep(1.0)
            if not _alive(pid):
                os._exit(1)

    threading.Thread(target=watch, name="timesim-sweep-watch", daemon=True).start()
