"""End to end through the command line and the Python API (DESIGN §4, §8)."""

import json
import subprocess
import sys

import numpy as np
import pytest

import timesim
from timesim.cli import main
from timesim.config import bundled_hwconfig
from timesim.kernels.convert import to_float32
from timesim.trace import open_trace

from .reference import run_reference


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "timesim", *args], capture_output=True,
                          text=True, cwd=cwd)


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("traces") / "mlp"
    assert main(["trace", "synth", "--model", "mlp-small", "--iterations", "23", "--seed", "5",
                 "--chunk", "5", "--dtype", "bfloat16", "--out", str(path)]) == 0
    return path


def test_run_writes_report_and_matrices_equal_to_the_reference(tmp_path, small_trace):
    out = tmp_path / "run"
    r = cli("run", "--hw", str(bundled_hwconfig("tiny")), "--trace", str(small_trace),
            "--set", "controller.selection=sgs", "--out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    for key in ("timesim_version", "hwconfig", "trace", "policy", "iterations", "writes", "ars",
                "lifetime"):
        assert key in report
    for key in ("path", "model", "iterations", "layers"):
        assert key in report["trace"]
    for key in ("selection", "rct", "topk_density", "wear_leveling", "interval", "rows"):
        assert key in report["policy"]
    for key in ("endurance", "extension", "balanced_extension", "binding_layer",
                "trainings_to_failure", "iterations_to_failure"):
        assert key in report["lifetime"]
    assert report["iterations"] == 23 and report["hwconfig"]["name"] == "tiny"
    # independent replay: decode the trace, run the numpy reference per layer
    tr = open_trace(small_trace)
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"))
    grand_max = 0
    for layer in tr.meta.layers:
        G = np.concatenate([to_float32(np.array(c.arrays[layer.name]), "bfloat16")
                            for c in tr.chunks()])
        ref = run_reference(G, "sgs", rct=hw.controller.rct, wear_leveling="ars",
                            interval=hw.controller.interval, R=hw.controller.rows,
                            block_rows=hw.xbar.rows)
        got = np.load(out / "writes" / f"{layer.name}.npy", allow_pickle=False)
        assert got.dtype == np.int64 and got.shape == (layer.rows, layer.cols)
        np.testing.assert_array_equal(got, ref.writes)
        np.testing.assert_array_equal(np.load(out / "rowmap" / f"{layer.name}.npy"), ref.l2p)
        s = report["writes"]["by_layer"][layer.name]
        assert s["max"] == ref.writes.max() and s["total"] == ref.writes.sum()
        assert s["mean"] == pytest.approx(ref.writes.mean())
        assert s["p99"] == pytest.approx(np.percentile(ref.writes, 99))
        assert s["sparsity"] == pytest.approx(1 - ref.policy_cells / (23 * layer.cells))
        grand_max = max(grand_max, ref.writes.max())
    assert report["writes"]["max"] == grand_max
    assert report["lifetime"]["extension"] == pytest.approx(23 / grand_max)
    assert "lifetime extension" in r.stdout


def test_api_matches_cli_and_is_deterministic(tmp_path, small_trace):
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"), ["controller.selection=topk"])
    a = timesim.simulate(hw, timesim.open_trace(str(small_trace)), out=tmp_path / "a")
    r = cli("run", "--hw", str(bundled_hwconfig("tiny")), "--set", "controller.selection=topk",
            "--trace", str(small_trace), "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    for k in ("writes", "ars", "lifetime", "policy", "hwconfig", "cycles", "energy_j",
              "hwconfig_hash"):
        assert json.loads(json.dumps(a[k])) == b[k], k
    assert a["trace"]["fingerprint"] == b["trace"]["fingerprint"]
    for f in (tmp_path / "a" / "writes").iterdir():
        np.testing.assert_array_equal(np.load(f), np.load(tmp_path / "b" / "writes" / f.name))


def test_trace_on_disk_equals_synthetic_stream(tmp_path):
    assert main(["trace", "synth", "--model", "mlp-small", "--iterations", "17", "--seed", "2",
                 "--chunk", "4", "--out", str(tmp_path / "t")]) == 0
    hw = timesim.load_hwconfig(bundled_hwconfig("tiny"))
    disk = timesim.simulate(hw, str(tmp_path / "t"))
    synth = timesim.simulate(hw, "synth:mlp-small?iterations=17&seed=2")
    assert disk["writes"] == synth["writes"] and disk["ars"] == synth["ars"]


def test_run_with_no_arguments_uses_bundled_chip_and_trace(tmp_path):
    r = cli("run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    reports = list((tmp_path / "runs").glob("run-*/report.json"))
    assert len(reports) == 1
    rep = json.loads(reports[0].read_text())
    assert rep["hwconfig"]["name"] == "time-default" and rep["trace"]["model"] == "digits-lenet"
    assert rep["trace"]["source"].startswith("pytorch ")


def test_ars_that_cannot_swap_is_said(tmp_path, capsys):
    """controller.rows = 1 swaps floor(1/2) = 0 pairs (DESIGN §2: min(R/2, ...)): the run
    reports 0 swaps and says why; R = 2 with the same interval swaps."""
    args = ["run", "--threads", "1", "--set", "controller.interval=16"]
    assert main(args + ["--set", "controller.rows=1", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "controller.rows = 1: ARS swaps floor(R/2) = 0 row pairs" in out
    assert json.loads((tmp_path / "a" / "report.json").read_text())["ars"]["swaps"] == 0
    assert main(args + ["--set", "controller.rows=2", "--out", str(tmp_path / "b")]) == 0
    assert "ARS swaps floor" not in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "report.json").read_text())["ars"]["swaps"] > 0


def test_trace_info_and_validate(small_trace):
    r = cli("trace", "info", str(small_trace))
    assert r.returncode == 0 and "mlp-small" in r.stdout and "bfloat16" in r.stdout
    r = cli("trace", "info", "--json", "synth:resnet20?iterations=7")
    assert json.loads(r.stdout)["iterations"] == 7
    r = cli("trace", "validate", str(small_trace))
    assert r.returncode == 0 and "valid" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["run", "--set", "xbar.rows=-4"], "xbar.rows: must be positive"),
    (["run", "--set", "controller.selection=best"], "controller.selection: must be one of"),
    (["run", "--hw", "no/such.yaml"], "no such hwconfig"),
    (["run", "--trace", "no/such/trace"], "no such trace directory"),
    (["run", "--trace", "synth:nonet"], "unknown model"),
    (["trace", "validate", "synth:resnet20"], "synthetic streams are generated"),
    (["trace", "synth", "--model", "mlp", "--iterations", "0", "--out", "x"], "iterations"),
    (["run", "--bogus"], "unrecognized arguments"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_corrupt_chunk_exits_2(tmp_path, small_trace):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(small_trace, bad)
    p = bad / "fc2" / "000002.npy"
    data = bytearray(p.read_bytes())
    data[200] ^= 1
    p.write_bytes(bytes(data))
    r = cli("run", "--trace", str(bad), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "fc2/000002.npy: checksum mismatch" in r.stderr
    assert not (tmp_path / "o" / "report.json").exists()
    # --no-verify reads the chunk as it is: the flipped bit changes one gradient value
    r = cli("run", "--trace", str(bad), "--out", str(tmp_path / "n"), "--no-verify",
            cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "n" / "report.json").is_file()


def test_no_verify_gives_the_verified_runs_numbers(small_trace, tmp_path):
    """Skipping the checksums changes what is checked, not what is computed."""
    import timesim
    hw = timesim.load_hwconfig()
    a = timesim.simulate(hw, str(small_trace), out=tmp_path / "a")
    b = timesim.simulate(hw, str(small_trace), out=tmp_path / "b", verify=False)
    for key in ("writes", "cycles", "energy_j", "lifetime"):
        assert a[key] == b[key], key
    with pytest.raises(timesim.errors.ConfigError, match="--no-verify"):
        timesim.simulate(hw, str(small_trace), scheduler="tcp://127.0.0.1:1", verify=False)


def test_bench_reports_ratios_against_same_run_baselines():
    from timesim.bench import run_bench
    res = run_bench(quick=True, progress=False, targets=False)   # targets: test_generator
    row = [r for r in res["policy_kernels"] if r["policy"] == "sgs-row"][-1]
    assert row["shape"] == [2304, 256]
    for r in res["policy_kernels"]:
        assert r["kernel_ns_per_element"] > 0 and r["warmup_s"] >= 0
    e = res["end_to_end"]
    assert e["iterations"] == 256
    for pipeline in ("none", "layer"):
        x = e[pipeline]
        # the engine simulated each distinct signature once: 256 sgs iterations < SI have one
        # (the per-signature arithmetic: test_bench_engine_time_per_simulated_signature)
        assert x["distinct_signatures"] == 1 and x["events"] > 0
    a = res["analog_mvm"]
    # the slices each case's settings imply: 8-bit DAC one slice, 1-bit DAC eight; 8-bit
    # weights in one 8-bit cell or two 5-bit cells (the default chip: 8 x 2)
    assert [(c["input_slices"], c["weight_slices"]) for c in a["cases"]] == [(1, 1), (1, 2),
                                                                             (8, 1), (8, 2)]
    assert all(c["ms"] > 0 and c["warmup_s"] >= 0 for c in a["cases"]) and a["blas_ms"] > 0
    lp = res["fit_loop"]              # the closed loop against the open loop, same run
    for sel in ("sgs", "topk"):
        assert lp[sel]["ratio"] == pytest.approx(lp[sel]["loop_s"] / lp[sel]["open_s"])


def test_bench_normalizes_by_the_work_actually_timed(monkeypatch):
    """Each timed call takes '1 s' (a stub clock); the per-element time and the bandwidth must
    then follow from the iterations the kernel really processed (counted here) and from the
    bytes one sgs-row step must touch: read G (float32), read and write A (float32) = 12."""
    import timesim.bench as bench
    from timesim.policies import LayerPolicy

    processed = []

    class Counting(LayerPolicy):
        def process(self, chunk, t0):
            processed.append(len(chunk))
            return super().process(chunk, t0)

    calls = []

    def one_second(fn, reps):
        calls.append(fn)
        before = sum(processed)
        fn()
        calls[-1] = sum(processed) - before      # iterations this timed call processed
        return 1.0

    monkeypatch.setattr(bench, "LayerPolicy", Counting)
    monkeypatch.setattr(bench, "_best", one_second)
    rows, cols, iters = 144, 16, 150            # not a multiple of the cached block (113)
    r = bench.bench_policy("sgs-row", rows, cols, iters, reps=1)
    timed = calls[0]                             # the kernel's call (numpy and copy follow)
    assert timed > 0
    bytes_per_element = 4 + 4 + 4                # G read, A read, A written
    assert r["kernel_ns_per_element"] == pytest.approx(1e9 / (timed * rows * cols))
    assert r["kernel_gb_per_s"] == pytest.approx(bytes_per_element * timed * rows * cols / 1e9)


def test_bench_engine_time_per_simulated_signature(monkeypatch):
    """On a run with ARS iterations (SI = 64 over 256 iterations): every distinct signature
    was simulated in simpy or derived from the quiet iteration (sgs writes one row a layer
    every iteration, so signatures differ by swaps only), the quiet one simulated; seconds per
    simulated signature = simpy's seconds / simulations; the projection to 64000 iterations
    (SI 64: 1001 signatures) is the per-chunk work scaled plus the simulations at this run's
    share of ARS signatures simulated."""
    import timesim.bench as bench

    real = bench.load_hwconfig
    monkeypatch.setattr(bench, "load_hwconfig",
                        lambda *a, **k: real(None, ["controller.interval=64"]))
    e = bench.bench_end_to_end(256)
    for pipeline in ("none", "layer"):
        x = e[pipeline]
        assert x["simulated"] + x["derived"] == x["distinct_signatures"] >= 4
        assert x["simulated"] >= 1
        per = x["simpy_seconds"] / x["simulated"]
        assert x["engine_seconds_per_signature"] == pytest.approx(per)
        share = (x["simulated"] - 1) / (x["simulated"] - 1 + x["derived"])
        engine_64k = ((x["engine_seconds"] - x["simpy_seconds"]) * 250
                      + per * (1 + share * 1000))
        policy_64k = e["policy_seconds"] * 250
        assert x["projected_64000_engine_overhead"] == pytest.approx(engine_64k / policy_64k)


def test_plot_paths_are_checked_before_any_work(tmp_path, small_trace):
    run = tmp_path / "r"
    assert main(["run", "--trace", str(small_trace), "--out", str(run)]) == 0
    (tmp_path / "a-file").write_text("x")
    r = cli("compare", str(run), "--plot", str(tmp_path / "a-file" / "x.png"), cwd=tmp_path)
    assert r.returncode == 2 and "cannot make its folder" in r.stderr
    assert "Traceback" not in r.stderr and "max writes" not in r.stdout     # before any work
    r = cli("compare", str(run), "--plot", str(tmp_path / "new" / "x.png"), cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "new" / "x.png").is_file()  # as run --out does
    r = cli("compare", str(run), "--plot", str(tmp_path / "out.txt"), cwd=tmp_path)
    assert r.returncode == 2 and "expected a .png" in r.stderr
    r = cli("compare", str(run), "--plot", str(tmp_path / "noext"), cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "noext.png").exists()
    assert "noext.png" in r.stdout


def test_compare_of_different_models_says_so(tmp_path, small_trace, capsys):
    """Runs of two models: a note naming both; --qq with no layer in common is refused
    before any table is printed."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", "--trace", str(small_trace), "--out", str(a)]) == 0
    assert main(["run", "--trace", "synth:resnet20?iterations=8", "--out", str(b)]) == 0
    model = json.loads((a / "report.json").read_text())["trace"]["model"]
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert f"different models ({model}, resnet20)" in out and "0 layer(s) they share" in out
    assert main(["compare", str(a), str(b), "--qq", str(tmp_path / "new" / "q.png")]) == 2
    captured = capsys.readouterr()
    assert "no layer in common" in captured.err and captured.out == ""
    assert not (tmp_path / "new").exists()             # a refused command makes nothing


def test_plots_on_a_timing_only_manifest(tmp_path):
    from tests.conftest import timing_manifest

    m = timing_manifest(tmp_path / "m", [{"name": "a", "kind": "linear", "rows": 40,
                                          "cols": 20}], iterations=3, batch_size=2)
    r = cli("run", "--trace", m, "--plots", "--out", str(tmp_path / "o"),
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "breakdown.png").exists()


def test_missing_extras_are_named_before_the_work(tmp_path):
    # matplotlib hidden: --plots fails at once with the extra to install, before simulating
    code = ("import sys; sys.modules['matplotlib'] = None; from timesim.cli import main; "
            "sys.exit(main(['run', '--trace', 'synth:resnet20?iterations=100000', '--plots', "
            f"'--out', {str(tmp_path / 'o')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "timesim[plots]" in r.stderr
    assert not (tmp_path / "o" / "report.json").exists()
    code = "import sys; sys.modules['torch'] = None; import timesim.pytorch"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "timesim[torch]" in r.stderr
