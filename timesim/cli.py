"""Command line (DESIGN §4). User errors: one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from importlib import resources
from pathlib import Path

from .errors import ConfigError, TimesimError, TraceError

EXAMPLE_TRACE = "digits-lenet-sgs"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _n(count: int, noun: str) -> str:
    """``1 layer``, ``3 layers``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _int(text: str) -> int:
    """An integer as everywhere in timesim: ``64000``, ``64_000`` or ``1e4`` (units.py)."""
    from .units import parse_integer

    try:
        return parse_integer(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _nonneg_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {value}")
    return value


def _seconds(text: str) -> float:
    from .units import parse_number

    try:
        value = parse_number(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


def _pos_int(text: str) -> int:
    value = _nonneg_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be positive, got 0")
    return value


def bundled_trace() -> Path:
    return Path(str(resources.files("timesim") / "data" / "traces" / EXAMPLE_TRACE))


def _progress(total: int, label: str, unit: str = "it", every: float | None = None):
    """(update(done), closer): a bar on a TTY, progress lines every ``every`` seconds without
    one, and a projected wall time for a long run (progress.py)."""
    from .progress import EVERY_S, Progress

    p = Progress(total, label, unit, every=EVERY_S if every is None else every)
    return p.update, p


def _say_interrupted(out: Path, args) -> None:
    """One line for an interrupted run: the checkpoint it left (the trace position a resume
    continues from) and the command that continues it, or why there is none."""
    from . import checkpoint

    info = checkpoint.saved_info(out)
    pos = (info.get("extra") or {}).get("trace_pos", info.get("iterations"))
    shards = [checkpoint.saved_info(p.parent, p.name).get("iterations", 0)
              for p in sorted((out / "shards").glob("shard-*.npz"))] if pos is None else []
    again = "--resume" if args.out else f"--out {out} --resume"
    if pos is not None:
        say = f"{out} keeps the checkpoint of iteration {pos}; add {again} to continue"
    elif shards:
        say = (f"{out}/shards keeps {_n(len(shards), 'shard checkpoint')} (iterations "
               f"{min(shards)}-{max(shards)}); add {again} to continue")
    elif args.checkpoint_every == 0:
        say = "checkpoints were off (--checkpoint-every 0): nothing to continue from"
    else:
        say = (f"before the first checkpoint (every {args.checkpoint_every} iterations): "
               f"nothing in {out} to continue from")
    print(f"timesim: interrupted: {say}", file=sys.stderr)


def cmd_run(args) -> int:
    from .config import load_hwconfig
    from .simulate import simulate
    from .trace import open_trace

    hw = load_hwconfig(args.hw, args.set or ())
    args.plots = args.plots or args.plots_format is not None
    if args.plots:
        from .plots import require_matplotlib

        require_matplotlib()
    trace = open_trace(args.trace if args.trace else bundled_trace())
    evaluator = _evaluator(args.eval, args.faults)
    if args.resume and not args.out:
        raise ConfigError("--resume: needs the --out of the run to continue")
    out = Path(args.out) if args.out else Path("runs") / datetime.now().strftime(
        "run-%Y%m%d-%H%M%S")
    update, bar = _progress(trace.meta.iterations, "simulating", every=args.progress_every)
    before = _stamp(out / "report.json")
    try:
        report = simulate(hw, trace, out=out, progress=update,
                          checkpoint_every=args.checkpoint_every, resume=args.resume,
                          nonfinite=args.nonfinite, faults=args.faults, threads=args.threads,
                          scheduler=args.scheduler, shards=args.shards, evaluator=evaluator,
                          verify=not args.no_verify)
    except KeyboardInterrupt:
        _say_interrupted(out, args)
        return 130
    finally:
        if bar is not None:
            bar.close()
    if args.plots:
        from .plots import write_plots

        write_plots(out, report, fmt=args.plots_format or "png")
    # a finished run resumed is returned as it was stored: nothing written (simulate logs
    # that; its report is the stored one, so the folder's stamp is what tells it here)
    kept = before is not None and _stamp(out / "report.json") == before
    if "estimate" in report:
        _print_estimate(report, out, kept)
    else:
        _print_summary(report, out, kept)
    _print_left_digital(report)
    return 0


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _print_left_digital(r: dict) -> None:
    """The digital work the attention unit timed (report ``digital``), and the weights and the
    work the chip does not cover (``skipped``, ``left_out``): cycles, energy and lifetime above
    are for the mapped layers and the timed digital work only."""
    skipped, left, timed = r.get("skipped") or [], r.get("left_out") or [], r.get("digital") or []
    if timed:
        total = sum(d.get("macs", 0) for d in timed)
        names = (", ".join(f"{d['name']} -> {d['layer']}" for d in timed[:3])
                 + (", ..." if len(timed) > 3 else ""))
        print(f"attention  {total:.4g} digital MACs per iteration timed on the attention unit "
              f"in {len(timed)} module{'s' * (len(timed) > 1)}, each charged to the layer "
              f"that follows its products ({names}; report.json digital)")
    if skipped:
        cov = r["coverage"]
        names = "; ".join(f"{d['name']} ({d['reason']}, {d['parameters']} parameters)"
                          for d in skipped[:6])
        more = f"; and {len(skipped) - 6} more (report.json skipped)" if len(skipped) > 6 else ""
        print(f"not mapped {len(skipped)} weight-bearing module{'s' * (len(skipped) > 1)}, "
              f"{1 - cov['mapped_fraction']:.2%} of the weights, left digital and not timed: "
              f"{names}{more}")
    if left:
        total = sum(d.get("macs", 0) for d in left)
        names = ", ".join(d["name"] for d in left[:3]) + (", ..." if len(left) > 3 else "")
        print(f"not timed  {total:.4g} digital MACs per iteration: {left[0]['work']} in "
              f"{len(left)} module{'s' * (len(left) > 1)} ({names}; report.json left_out)")


def _evaluator(spec: str | None, faults: bool):
    """``--eval module:function``, imported before the run so that a wrong name fails first."""
    if spec is None:
        return None
    if not faults:
        raise ConfigError("--eval: scores the model on the worn chip; give --faults too")
    from .faults import load_evaluator

    return load_evaluator(spec)


def _print_phases(r: dict, indent: int = 10) -> None:
    """Per phase: cycles the layers spent in it and its energy, per iteration; chip area."""
    c, e, T = r["cycles"], r["energy_j"], max(1, r["iterations"])
    f = r["hwconfig"]["clock"]["frequency_hz"]
    parts = []
    for ph, span in c["by_phase"].items():
        if not (span or e["by_phase"].get(ph)):
            continue
        busy = c.get("by_phase_layer_sum", {}).get(ph, span)
        # the phase's span on the chip; the layers' own durations when they differ much
        extra = f" (layers {busy / T / f:.3g} s)" if abs(busy - span) > 0.01 * max(span, 1) else ""
        parts.append(f"{ph} {span / T / f:.3g} s{extra} / {e['by_phase'][ph] / T:.3g} J")
    said = ("; 'layers': the phase's layers' own durations summed"
            if any("(layers" in p for p in parts) else "")
    print(f"{'phases':<{indent}}" + ", ".join(parts) + "  (per iteration; a phase lasts from "
          f"its first start to its last end, and phases overlap{said})")
    a = r.get("area_mm2")
    if a:
        top = max(a["by_component"], key=a["by_component"].get)
        print(f"{'area':<{indent}}{a['total']:.4g} mm2 ({top} "
              f"{a['by_component'][top] / a['total']:.0%})")


def _print_estimate(r: dict, out: Path, kept: bool = False) -> None:
    c, e = r["cycles"], r["energy_j"]
    print(f"trace     {r['trace']['path']}  ({r['trace']['model']}, timing only, "
          f"{_n(len(r['trace']['layers']), 'layer')})")
    print(f"chip      {r['hwconfig']['name']}  {r['hwconfig']['xbar']['rows']}x"
          f"{r['hwconfig']['xbar']['cols']} crossbars, pipeline {c['pipeline']}")
    print(f"policy    {r['policy']['selection']} + {r['policy']['wear_leveling']}")
    print(f"time      {c['per_iteration']:.4g} cycles per iteration "
          f"({c['per_iteration'] / r['hwconfig']['clock']['frequency_hz']:.4g} s)")
    print(f"energy    {e['total'] / r['iterations']:.4g} J per iteration")
    _print_phases(r)
    print(f"note      {r['estimate']['assumptions']}")
    print(f"{'kept ' if kept else 'wrote'}     {out}/report.json, actions.csv"
          f"{' (a finished run)' if kept else ''}")


def _print_summary(r: dict, out: Path, kept: bool = False) -> None:
    p, lt, w = r["policy"], r["lifetime"], r["writes"]
    wl = p["wear_leveling"]
    if wl != "none":
        wl += f" (SI={p['interval']}, R={p['rows']})"
    print(f"trace     {r['trace']['path']}  ({r['trace']['model']}, {r['iterations']} iterations, "
          f"{_n(len(r['trace']['layers']), 'layer')})")
    print(f"chip      {r['hwconfig']['name']}  {r['hwconfig']['xbar']['rows']}x"
          f"{r['hwconfig']['xbar']['cols']} crossbars")
    print(f"policy    {p['selection']} + {wl}")
    width = max([21] + [len(layer["name"]) for layer in r["trace"]["layers"]]) + 1
    print(f"{'layer':<{width}}{'policy':<13}{'rows x cols':>13}{'max':>9}{'mean':>10}"
          f"{'sparsity':>10}")
    for layer in r["trace"]["layers"]:
        s = w["by_layer"][layer["name"]]
        print(f"{layer['name']:<{width}}{p['by_layer'][layer['name']]:<13}"
              f"{str(layer['rows']) + ' x ' + str(layer['cols']):>13}{s['max']:>9}"
              f"{s['mean']:>10.2f}{s['sparsity']:>10.4f}")
    print(f"max writes per cell      {w['max']}  (dense baseline: {r['iterations']})")
    print(f"lifetime extension       {lt['extension']:.1f}x  (balanced bound "
          f"{lt['balanced_extension']:.1f}x, set by {lt['binding_layer']})")
    print(f"ARS swaps                {r['ars']['swaps']}  ({r['ars']['rewrite_cells']} cells "
          f"rewritten)")
    c, e = r["cycles"], r["energy_j"]
    top = max(e["by_component"], key=e["by_component"].get)
    print(f"time                     {c['per_iteration']:.4g} cycles per iteration, "
          f"{r['seconds']:.4g} s in all")
    ars = (f"; ARS overhead {e['ars_overhead'] / e['total']:.2%}"
           if p["wear_leveling"] != "none" else "")
    print(f"energy                   {e['total'] / r['iterations']:.4g} J per iteration "
          f"({top} {e['by_component'][top] / e['total']:.0%}){ars}")
    _print_phases(r, 25)
    if p["wear_leveling"] != "none" and p["interval"] >= r["iterations"]:
        print(f"note: ARS interval {p['interval']} >= {r['iterations']} iterations, so no swap "
              f"could happen; lower --set controller.interval=N, or simulate more iterations "
              f"(e.g. --trace 'synth:resnet20?iterations=16000')")
    elif p["wear_leveling"] != "none" and p["rows"] < 2:
        print(f"note: controller.rows = {p['rows']}: ARS swaps floor(R/2) = 0 row pairs per "
              f"pass, so wear levelling does nothing; R >= 2 swaps R/2 pairs (an odd R "
              f"swaps (R-1)/2)")
    print(f"endurance {lt['endurance']:.3g}: first cell fails after "
          f"{lt['iterations_to_failure']:.3g} iterations ({lt['trainings_to_failure']:.3g} "
          f"trainings of this length)")
    if lt.get("seconds_to_failure") is not None:
        print(f"          that is {_duration(lt['seconds_to_failure'])} of training at "
              f"{lt['seconds_per_iteration']:.3g} s per iteration")
    f = r.get("faults", {})
    if f.get("probe"):
        worst = max(f["mvm_rel_error"], key=lambda k: f["mvm_rel_error"][k] or 0)
        print(f"faults    failed cells {max(f['failed_fraction'].values()):.2%} (worst layer); "
              f"MVM error {f['mvm_rel_error'][worst]:.3f} on {worst} (fault-free "
              f"{f['mvm_rel_error_fault_free'][worst]:.3f})")
    a = f.get("accuracy")
    if a:
        pts = ", ".join(f"{t:.3g}: {acc:.3f}" for t, acc in zip(a["iterations"], a["accuracy"]))
        print(f"accuracy  {a['model']} on the worn chip by iteration: {pts} (digital "
              f"{a['digital']:.3f}, fault-free chip {a['fault_free']:.3f})")
    if kept:
        print(f"kept      {out}/report.json, actions.csv, writes/, rowmap/ (a finished run)")
    else:
        print(f"wrote     {out}/report.json, actions.csv, writes/, rowmap/")


def _duration(seconds: float) -> str:
    """A training time in the largest unit that keeps it at least 1."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600),
                       ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def cmd_trace_synth(args) -> int:
    import shutil

    from .trace import TraceWriter
    from .trace.format import STORAGE
    from .trace.synth import SynthTrace

    synth = SynthTrace(args.model, iterations=args.iterations, seed=args.seed, chunk=args.chunk,
                       gen=args.gen)
    meta = synth.meta
    size = meta.iterations * sum(l.cells for l in meta.layers) * STORAGE[args.dtype].itemsize
    out = Path(args.out)
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if size > free and not args.no_space_check:
        raise TraceError(f"{out}: the trace needs {_bytes(size)} and {probe} has {_bytes(free)} "
                         f"free; use fewer --iterations, --dtype float16, a synth: trace "
                         f"(never on disk), or --no-space-check")
    writer = TraceWriter(args.out, meta.layers, model=meta.model, source=meta.source,
                         dataset=meta.dataset, batch_size=meta.batch_size, dtype=args.dtype,
                         chunk_iterations=meta.chunk_iterations, overwrite=args.force)
    print(f"writing {_bytes(size)} to {out} ({meta.iterations} iterations of "
          f"{_n(len(meta.layers), 'layer')}, {args.dtype}; {_bytes(free)} free there)")
    update, bar = _progress(meta.iterations, "writing")
    try:
        with writer as w:
            for chunk in synth.chunks():
                w.append_chunk(chunk.arrays)
                if update:
                    update(chunk.t0 + chunk.n)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {args.out}: {meta.model}, {meta.iterations} iterations, "
          f"{_n(len(meta.layers), 'layer')}, {args.dtype}")
    return 0


def cmd_trace_fit(args) -> int:
    import time

    from .trace.fit import fit_trace
    from .trace.fitted import write_model

    out = Path(args.out)
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise TraceError(f"--out {args.out}: expected a .yaml file name (the importances go "
                         f"beside it as {out.stem}.npz)")
    t = time.perf_counter()
    update, bar = _progress(1000, "fitting")
    try:
        doc, arrays = fit_trace(args.trace, windows=args.windows, start=args.start,
                                progress=(lambda f: update(int(1000 * f))) if update else None)
    finally:
        if bar is not None:
            bar.close()
    write_model(out, doc, arrays)
    w = max(20, 2 + max(len(L["layer"]["name"]) for L in doc["layers"]))
    print(f"{'layer':<{w}}{'rows x cols':>13}{'bias':>7}{'tau_dir':>11}{'gate0 r/c':>11}"
          f"{'imp R2':>8}{'kurt real/model':>17}{'VR real/model':>15}")
    for L in doc["layers"]:
        info, f, g = L["layer"], L["fit"], L["gates"]
        print(f"{info['name']:<{w}}{str(info['rows']) + ' x ' + str(info['cols']):>13}"
              f"{L['bias']:>7.3f}{L['tau_direction']:>11.4g}"
              f"{g['row_zero']:>6.2f}/{g['col_zero']:<4.2f}{f['importance_r2']:>8.3f}"
              f"{f['kurtosis_raw']:>9.3g}/{f['kurtosis_raw_model']:<7.3g}"
              f"{f['variance_ratio']['real']:>8.2f}/{f['variance_ratio']['model']:<6.2f}")
    print("VR: variance of a cell's gradient summed over "
          f"{doc['layers'][0]['fit']['variance_ratio']['iterations']} iterations over that "
          "many times its variance (1: uncorrelated; > 1: a persistent direction; < 1: "
          "reverting, as gradients near a minimum do); kurt: a cell's kurtosis, power-weighted")
    print("closed loop (loop=on; docs/fidelity.md): " + "; ".join(
        f"{L['layer']['name']} kappa {L['loop']['kappa']:.2f} rho {L['loop']['rho']:.2f} "
        f"cell {L['loop']['kappa_cell']:.2f}/{L['loop']['rho_cell']:.2f}"
        for L in doc["layers"]))
    print(f"wrote {out} and {out.with_suffix('.npz').name} in {time.perf_counter() - t:.1f} s; "
          f"replay: timesim run --trace 'synth:fit?model={out}&iterations=N'")
    return 0


def cmd_trace_info(args) -> int:
    from .trace import open_trace

    t = open_trace(args.trace)
    m = t.meta
    if args.json:
        print(json.dumps({"path": getattr(t, "label", args.trace), **m.to_dict()}, indent=2))
        return 0
    print(f"trace       {getattr(t, 'label', args.trace)}")
    print(f"model       {m.model}   dataset {m.dataset or '-'}   batch {m.batch_size}")
    print(f"source      {m.source}")
    if m.updates:
        print(f"updates     {m.updates} (how the recorded training applied its gradients)")
    print(f"iterations  {m.iterations} in {_n(m.n_chunks, 'chunk')} of "
          f"{min(m.chunk_iterations, m.iterations)}, "
          f"dtype {m.dtype}")
    cells = sum(l.cells for l in m.layers)
    weights = sum(l.cells // (l.groups or 1) for l in m.layers)
    print(f"layers      {len(m.layers)}, {weights} weights" + (
        f" in {cells} crossbar cells (a grouped layer's cells off its diagonal blocks are "
        f"unused)" if cells != weights else ""))
    for l in m.layers:
        geo = ""
        if l.kind == "conv2d":
            geo = f"  k={l.kernel[0]}x{l.kernel[1]} {l.in_channels}->{l.out_channels}"
            if l.output_hw:
                geo += f" out {l.output_hw[0]}x{l.output_hw[1]}"
            if l.groups and l.groups > 1:
                geo += f" groups={l.groups}"
        if l.vectors_per_sample:
            geo += f"  {l.vectors_per_sample} vectors per sample"
        print(f"  {l.name:<24}{l.kind:<8}{l.rows:>7} x {l.cols:<6}{geo}")
    for d in m.skipped:
        n = f", {d['parameters']} parameters" if "parameters" in d else ""
        print(f"  not mapped: {d['name']} ({d['reason']}{n})")
    for d in m.left_out:
        print(f"  digital: {d['name']}: {d.get('macs', '?')} MACs per iteration ({d['work']}; "
              f"timed on the attention unit with {d['name']}.out_proj, else left out)")
    return 0


def cmd_trace_validate(args) -> int:
    from .trace import TraceDir

    if isinstance(args.trace, str) and args.trace.startswith("synth:"):
        raise TraceError(f"{args.trace}: synthetic streams are generated, not stored; "
                         f"validate a trace directory")
    t = TraceDir(args.trace)
    info = t.validate()
    print(f"{args.trace}: valid timesim trace v1: {t.meta.iterations} iterations, "
          f"{_n(info['layers'], 'layer')}, {_n(info['chunks'], 'chunk')}, "
          f"{info['checksums']} checksums verified, all values finite")
    for key, what in (("extra_dirs", "folders that are no layer of the manifest"),
                      ("extra_files", "chunk files beyond the manifest's iterations")):
        if info.get(key):
            more = f" and {len(info[key]) - 3} more" if len(info[key]) > 3 else ""
            print(f"note: {_n(len(info[key]), 'file' if key == 'extra_files' else 'folder')} "
                  f"not read ({what}): {', '.join(info[key][:3])}{more}")
    return 0


def cmd_trace_seal(args) -> int:
    from .trace.writer import seal

    meta = seal(args.trace)
    print(f"{args.trace}: sealed: {meta.iterations} iterations in {meta.n_chunks} chunks, "
          f"all validated")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import METRICS, parse_grid, run_sweep

    grid = parse_grid(args.grid)
    args.plots = args.plots or args.plots_format is not None
    if args.plots:
        from .plots import require_matplotlib

        require_matplotlib()
    n = 1
    for _, vals in grid:
        n *= len(vals)
    step, bar = _progress(n, "sweep", unit="point", every=args.progress_every)
    update = (lambda done, total: step(done)) if step else None
    try:
        rows = run_sweep(args.hw, args.trace, grid, args.out, base_sets=args.set or (),
                         workers=args.workers, scheduler=args.scheduler,
                         checkpoint_every=args.checkpoint_every, progress=update)
    finally:
        if bar is not None:
            bar.close()
    keys = [k for k, _ in grid]
    show = ("lifetime.extension", "writes.max", "cycles.total", "energy_j.total")
    print("  ".join(f"{c:>22}" for c in (*keys, *show)))
    for r in rows:
        print("  ".join(f"{_fmt(r[c]):>22}" for c in (*keys, *show)))
    if args.plots:
        from .plots import sweep_plots

        for p in sweep_plots(Path(args.out), keys, rows, fmt=args.plots_format or "png"):
            print(f"wrote {p}")
    print(f"wrote {args.out}/sweep.csv, sweep.json and points/ ({len(rows)} points; metrics: "
          f"{', '.join(METRICS)})")
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def cmd_compare(args) -> int:
    from .compare import compare_runs

    compare_runs(args.runs, plot=args.plot, quantiles=args.quantiles, qq=args.qq)
    return 0


def cmd_hwconfigs(args) -> int:
    from .config import bundled_hwconfig, preset_about, presets

    if args.show:
        print(bundled_hwconfig(args.show).read_text(), end="")
        return 0
    import shutil
    import textwrap

    width = max(60, min(100, shutil.get_terminal_size().columns))
    for name in presets():
        print(textwrap.fill(preset_about(name), width=width, initial_indent=f"{name:<22}",
                            subsequent_indent=" " * 22))
    print("use one with --hw NAME; print one with timesim hwconfigs --show NAME")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    result = run_bench(quick=args.quick, progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="timesim", description="Cycle-level simulator of TIME with SGS-ARS.")
    p.add_argument("--version", action="version", version=f"timesim {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="simulate a trace on a chip and write a run folder")
    run.add_argument("--hw", help="hwconfig YAML or a preset's name (timesim hwconfigs; "
                                  "default: the bundled TIME chip)")
    run.add_argument("--trace", help="trace directory or synth:MODEL?iterations=N&seed=S "
                                     "(default: the bundled example trace)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a hwconfig key, e.g. controller.interval=512 (repeatable)")
    run.add_argument("--out", help="run folder (default: runs/run-DATE-TIME)")
    run.add_argument("--plots", action="store_true", help="also write PNG figures")
    run.add_argument("--plots-format", choices=("png", "pdf", "svg"),
                     help="the figures as png (default), or as vector pdf or svg (implies "
                          "--plots)")
    run.add_argument("--threads", type=_pos_int, metavar="N",
                     help="process layers on N threads (default: all cores; results are the "
                          "same for every N)")
    run.add_argument("--faults", action="store_true",
                     help="also measure each worn layer's analog MVM error (report faults; "
                          "with --plots, faults.png); the failed fractions are always there")
    run.add_argument("--eval", metavar="MODULE:FUNCTION",
                     help="with --faults: score the trace's model on the worn chip with this "
                          "evaluator (report faults.accuracy; docs/analog.md)")
    run.add_argument("--checkpoint-every", type=_nonneg_int, default=10000, metavar="N",
                     help="save the full state into --out every N iterations (0: never; "
                          "default 10000)")
    run.add_argument("--no-verify", action="store_true",
                     help="do not check the chunks' crc32 checksums while replaying (a trace "
                          "already checked by 'timesim trace validate': replay at the "
                          "kernels' speed; local runs only)")
    run.add_argument("--nonfinite", choices=("error", "skip", "zero"), default="error",
                     help="a NaN/Inf gradient: stop with an error (default), skip its iteration, "
                          "or replace it by 0 (both counted in the report)")
    run.add_argument("--resume", action="store_true",
                     help="continue from --out's last checkpoint (same arguments); a finished "
                          "run is kept as it is")
    run.add_argument("--progress-every", type=_seconds, metavar="SECONDS",
                     help="without a terminal (nohup, CI), a progress line on stderr every "
                          "SECONDS (default 30; 0: after every chunk)")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="split the layers over a Dask cluster, e.g. tcp://10.0.0.5:8786 "
                          "(the trace and --out on a filesystem every worker sees; "
                          "docs/performance.md)")
    run.add_argument("--shards", type=_pos_int, metavar="N",
                     help="with --scheduler: layer groups (default: one per worker)")
    run.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="run a grid of hwconfig settings, in parallel")
    sw.add_argument("--hw", help="hwconfig YAML or a preset's name (default: the bundled "
                                 "TIME chip)")
    sw.add_argument("--trace", required=True, help="trace directory or synth:MODEL?...")
    sw.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                    help="a swept hwconfig key and its values (repeatable: a full grid)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a fixed override for every point (repeatable)")
    sw.add_argument("--out", default="sweep", help="sweep folder (default: ./sweep)")
    where = sw.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_pos_int, help="local processes (default: all cores)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on an existing Dask cluster, e.g. tcp://10.0.0.5:8786")
    sw.add_argument("--checkpoint-every", type=_nonneg_int, default=0, metavar="N",
                    help="checkpoint each point every N iterations (resumed on rerun)")
    sw.add_argument("--progress-every", type=_seconds, metavar="SECONDS",
                    help="without a terminal, a progress line every SECONDS (default 30)")
    sw.add_argument("--plots", action="store_true",
                    help="lifetime extension vs SI per R (Fig. 6) and vs ARS write energy "
                         "(Fig. 7)")
    sw.add_argument("--plots-format", choices=("png", "pdf", "svg"),
                    help="the figures as png (default), pdf or svg (implies --plots)")
    sw.set_defaults(func=cmd_sweep)

    cmp_ = sub.add_parser("compare", help="one table (and a plot) across run folders")
    cmp_.add_argument("runs", nargs="+", metavar="RUN_DIR")
    cmp_.add_argument("--plot", metavar="FILE.png", help="also draw the comparison")
    cmp_.add_argument("--quantiles", action="store_true",
                      help="per-layer quantiles of the write counts, and the Wasserstein "
                           "distance to the first run")
    cmp_.add_argument("--qq", metavar="FILE.png",
                      help="Q-Q plot of per-cell write counts per layer against the first run")
    cmp_.set_defaults(func=cmd_compare)

    tr = sub.add_parser("trace", help="make, inspect and check traces")
    tsub = tr.add_subparsers(dest="trace_command", required=True, parser_class=_Parser)
    synth = tsub.add_parser("synth", help="write a synthetic trace directory")
    from .trace.models import MODELS

    synth.add_argument("--model", required=True, choices=sorted(MODELS))
    synth.add_argument("--iterations", type=_pos_int, required=True)
    synth.add_argument("--seed", type=_nonneg_int, default=0)
    synth.add_argument("--gen", type=int, choices=(1, 2), default=2,
                       help="noise generator (as synth:MODEL?gen=; 1: the docs' streams)")
    synth.add_argument("--out", required=True)
    synth.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    synth.add_argument("--chunk", type=_pos_int, default=64, help="iterations per chunk file")
    synth.add_argument("--force", action="store_true",
                       help="replace the trace already in --out (never another folder)")
    synth.add_argument("--no-space-check", action="store_true",
                       help="write even when the estimated size exceeds the free disk space")
    synth.set_defaults(func=cmd_trace_synth)
    fit = tsub.add_parser("fit", help="fit a synthetic workload to a recorded trace "
                                      "(replay: synth:fit?model=MODEL.yaml&iterations=N)")
    fit.add_argument("trace", help="a trace directory (a few hundred to a few thousand "
                                   "iterations recorded with TraceRecorder)")
    fit.add_argument("--out", required=True, metavar="MODEL.yaml",
                     help="the fitted model (and MODEL.npz beside it)")
    fit.add_argument("--start", type=float, default=0.5,
                     help="statistics from this fraction of the trace on (default 0.5: the "
                          "second half; the scale uses all of it)")
    fit.add_argument("--windows", type=_pos_int, default=8,
                     help="windows for the drift and direction statistics (default 8)")
    fit.set_defaults(func=cmd_trace_fit)
    info = tsub.add_parser("info", help="summarize a trace")
    info.add_argument("trace")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_trace_info)
    val = tsub.add_parser("validate", help="check every chunk: shapes, dtypes, checksums, NaN/Inf")
    val.add_argument("trace")
    val.set_defaults(func=cmd_trace_validate)
    seal = tsub.add_parser("seal", help="keep the complete chunks of an interrupted recording")
    seal.add_argument("trace")
    seal.set_defaults(func=cmd_trace_seal)

    hwc = sub.add_parser("hwconfigs", help="list the bundled chips (presets for --hw NAME)")
    hwc.add_argument("--show", metavar="NAME", help="print one preset's YAML")
    hwc.set_defaults(func=cmd_hwconfigs)

    bench = sub.add_parser("bench", help="kernel throughput against same-run baselines")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions")
    bench.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="timesim: %(message)s")
    try:
        return args.func(args)
    except TimesimError as exc:
        print(f"timesim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("timesim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`timesim ... | head`): what was written stays written; the
        # rest of the output goes nowhere, and Python's exit flush must not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141                                    # 128 + SIGPIPE, as a shell reports it
    except OSError as exc:
        # a path that cannot be written or read (a missing or read-only folder, a full disk):
        # one line naming it, as for bad input
        where = exc.filename if exc.filename is not None else "file system"
        print(f"timesim: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
