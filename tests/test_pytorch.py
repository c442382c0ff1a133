"""PyTorch integration: recorder orientation, kill safety, in-loop policy, exact replay."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import timesim  # noqa: E402
from timesim.pytorch import SparseUpdate, TraceRecorder, timing_manifest  # noqa: E402
from timesim.trace import open_trace  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, kernel_size=(3, 2), stride=2, padding=(1, 0))
        self.head = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 7))

    def forward(self, x):
        return self.head(self.conv(x))


def batch(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 9, generator=g), torch.randint(0, 7, (n,), generator=g)


def record_steps(net, rec, steps=3):
    """``steps`` training iterations (no optimizer step), each recorded."""
    for it in range(steps):
        x, y = batch(it)
        net.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        rec.step()


def test_recorder_orientation_and_geometry_match_torch(tmp_path):
    torch.manual_seed(0)
    net = Net()
    grads = []
    with TraceRecorder(net, tmp_path / "t", chunk_iterations=2) as rec:
        for it in range(3):
            x, y = batch(it)
            net.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            rec.step()
            grads.append((net.conv.weight.grad.clone(), net.head[2].weight.grad.clone()))
    tr = open_trace(tmp_path / "t")
    conv, fc = tr.meta.layers
    assert (conv.name, conv.kind, conv.rows, conv.cols) == ("conv", "conv2d", 3 * 3 * 2, 5)
    assert conv.kernel == (3, 2) and conv.stride == (2, 2) and conv.padding == (1, 0)
    assert conv.input_hw == (8, 9) and conv.output_hw == (4, 4)
    assert (fc.name, fc.rows, fc.cols) == ("head.2", 80, 7)
    assert tr.meta.batch_size == 4 and tr.meta.source.startswith("pytorch ")
    G_conv = np.concatenate([np.array(c.arrays["conv"]) for c in tr.chunks()])
    G_fc = np.concatenate([np.array(c.arrays["head.2"]) for c in tr.chunks()])
    for t, (wc, wf) in enumerate(grads):
        wc, wf = wc.numpy(), wf.numpy()
        for co in range(5):                      # r = c_in*kh*kw + i*kw + j, column = c_out
            for ci in range(3):
                for i in range(3):
                    for j in range(2):
                        assert G_conv[t, ci * 6 + i * 2 + j, co] == wc[co, ci, i, j]
        np.testing.assert_array_equal(G_fc[t], wf.T)      # G[in, out] = dL/dW[out, in]


def test_sparse_update_moves_only_the_selected_row_by_sgd():
    torch.manual_seed(1)
    lin = nn.Linear(6, 4, bias=False)
    hw = timesim.load_hwconfig(None, ["controller.selection=sgs-row", "controller.rct=1"])
    opt = SparseUpdate(torch.optim.SGD(lin.parameters(), lr=0.5), hw)
    x = torch.randn(3, 6)
    w0 = lin.weight.detach().clone().numpy().T            # rows = inputs
    lin(x).pow(2).sum().backward()
    G = lin.weight.grad.detach().clone().numpy().T
    opt.step()
    r = int(np.argmax(np.abs(G).max(axis=1)))
    want = w0.copy()
    want[r] -= 0.5 * G[r]
    np.testing.assert_allclose(lin.weight.detach().numpy().T, want, rtol=1e-6)
    # second step: the residual of the other rows is carried (DESIGN §2 accumulation)
    opt.zero_grad()
    lin(x).pow(2).sum().backward()
    G2 = lin.weight.grad.detach().clone().numpy().T
    A = G.copy()
    A[r] = 0
    A += G2
    r2 = int(np.argmax(np.abs(A).max(axis=1)))
    w1 = lin.weight.detach().clone().numpy().T
    opt.step()
    want = w1.copy()
    want[r2] -= 0.5 * A[r2]
    np.testing.assert_allclose(lin.weight.detach().numpy().T, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("selection", ["sgs", "sgs-row", "sgs-element", "topk"])
def test_replaying_the_recorded_trace_reproduces_the_in_loop_policy(tmp_path, selection):
    from timesim.examples.digits import train
    hw = timesim.load_hwconfig(None, [f"controller.selection={selection}", "controller.rct=40",
                                      "controller.interval=8", "controller.rows=6",
                                      "xbar.rows=16", "controller.topk_density=0.01"])
    live = train("lenet", iterations=40, hw=hw, record=str(tmp_path / "trace"),
                 chunk_iterations=16, out=str(tmp_path / "live"))
    replay = timesim.simulate(hw, str(tmp_path / "trace"), out=tmp_path / "replay")
    assert live.report["ars"]["swaps"] > 0
    for key in ("writes", "ars", "lifetime", "cycles", "energy_j"):
        a, b = live.report[key], replay[key]
        assert a == b, key
    for name in live.report["writes"]["by_layer"]:
        for sub in ("writes", "rowmap"):
            np.testing.assert_array_equal(np.load(tmp_path / "live" / sub / f"{name}.npy"),
                                          np.load(tmp_path / "replay" / sub / f"{name}.npy"))


def test_digits_mlp_dense_training_reaches_stated_accuracy():
    from timesim.examples.digits import train
    r = train("mlp", iterations=1500)
    assert r.test_accuracy >= 0.95            # docs/results.md: ~0.99 after 2000 iterations


def test_killed_recording_keeps_complete_chunks(tmp_path):
    script = textwrap.dedent(f"""
        import time, torch
        from torch import nn
        from timesim.pytorch import TraceRecorder
        net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
        with TraceRecorder(net, {str(tmp_path / 't')!r}, chunk_iterations=4) as rec:
            for it in range(10**6):
                net.zero_grad()
                net(torch.randn(2, 10)).sum().backward()
                rec.step()
                if it == 9:
                    print("ready", flush=True)
                if it >= 9:
                    time.sleep(0.01)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run([sys.executable, "-m", "timesim", "trace", "validate",
                        str(tmp_path / "t")], capture_output=True, text=True)
    assert r.returncode == 2 and "incomplete trace" in r.stderr and "seal" in r.stderr
    r = subprocess.run([sys.executable, "-m", "timesim", "trace", "seal", str(tmp_path / "t")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    meta = open_trace(tmp_path / "t").meta
    assert meta.iterations >= 8 and meta.iterations % 4 == 0
    open_trace(tmp_path / "t").validate()


def test_recording_that_fails_or_records_nothing(tmp_path):
    """An exception before the first chunk leaves no folder behind (the same path records
    again); one after it keeps the chunks for ``timesim trace seal``; no step() at all says
    so and writes nothing."""
    net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))

    def steps(n, path, fail):
        with TraceRecorder(net, path, chunk_iterations=4) as rec:
            for _ in range(n):
                net.zero_grad()
                net(torch.randn(2, 10)).sum().backward()
                rec.step()
            if fail:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        steps(3, tmp_path / "a", True)              # 3 < one chunk of 4
    assert not (tmp_path / "a").exists()
    steps(3, tmp_path / "a", False)
    assert open_trace(tmp_path / "a").meta.iterations == 3
    with pytest.raises(KeyboardInterrupt):
        steps(6, tmp_path / "b", True)              # one chunk of 4 written
    assert main_seal(tmp_path / "b") == 0 and open_trace(tmp_path / "b").meta.iterations == 4
    with pytest.warns(Warning, match="no iteration recorded"):
        steps(0, tmp_path / "c", False)
    assert not (tmp_path / "c").exists()


def main_seal(path):
    from timesim.cli import main
    return main(["trace", "seal", str(path)])


def test_timing_only_manifest_is_timed_by_the_engine(tmp_path):
    from timesim.examples.digits import LeNet
    meta = timing_manifest(LeNet(), torch.rand(32, 1, 8, 8), tmp_path / "m", iterations=100)
    assert [l.name for l in meta.layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert meta.layers[1].input_hw == (4, 4) and meta.batch_size == 32
    r = subprocess.run([sys.executable, "-m", "timesim", "run", "--trace", str(tmp_path / "m"),
                        "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["estimate"]["timing_only"] and rep["iterations"] == 100
    assert rep["cycles"]["total"] > 0 and rep["energy_j"]["total"] > 0
    # sgs on a 4-layer net with 100 < SI iterations: every iteration has the same signature
    assert rep["cycles"]["distinct_signatures"] == 1


def test_core_package_does_not_import_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, timesim; timesim.simulate; "
                        "timesim.load_hwconfig(); print('torch' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "False"


def test_crossbar_forward_matches_the_model_and_applies_faults():
    from timesim.analog import SA0
    torch.manual_seed(3)
    net = Net()
    x, _ = batch(9, n=3)
    ideal = timesim.load_hwconfig(None, ["xbar.weight_bits=20", "xbar.cell_bits=20",
                                         "dac.input_bits=20", "dac.bits=20", "adc.bits=48"])
    from timesim.pytorch import crossbar_forward
    want = net(x)
    got = crossbar_forward(net, x, ideal)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    # every cell of the conv stuck at SA0: a differential pair reads 0 -> conv weight 0
    stuck = {"conv": np.full((18, 5), SA0, np.int8)}
    got = crossbar_forward(net, x, ideal, stuck=stuck)
    with torch.no_grad():
        w = net.conv.weight.clone()
        net.conv.weight.zero_()
        want = net(x)
        net.conv.weight.copy_(w)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    assert not net.conv._forward_hooks                   # hooks removed


def test_crossbar_forward_on_sequences_and_unmapped_layers():
    """Linear layers on (batch, tokens, features) inputs get their bias on the last axis; a
    grouped convolution (not mapped) stays digital; ideal settings give the model's output."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=2, dilation=2),
                               torch.nn.Conv2d(8, 8, 3, groups=2, padding=1),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5))
    ideal = timesim.load_hwconfig(None, ["xbar.weight_bits=20", "xbar.cell_bits=20",
                                         "dac.input_bits=20", "dac.bits=20", "adc.bits=48"])
    from timesim.pytorch import crossbar_forward
    for model, x in ((net, torch.randn(2, 9, 16)), (conv, torch.randn(3, 3, 6, 6))):
        with torch.no_grad():
            want = model(x)
        got = crossbar_forward(model, x, ideal)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def _bits_one(x: np.ndarray, bits: int = 8) -> tuple[int, int]:
    """Independent count: |x| scaled to 0..2^bits-1 over its range, bits that are 1."""
    a = np.abs(x.astype(np.float64))
    q = np.rint(a * ((2 ** bits - 1) / a.max())).astype(np.int64)
    ones = sum(bin(int(v)).count("1") for v in q.ravel())
    return ones, q.size * bits


def test_recorder_measures_input_activity(tmp_path):
    torch.manual_seed(0)
    net = Net()
    seen = {"conv": [0, 0], "head.2": [0, 0]}

    def grab(name):
        def hook(mod, inputs, out):
            o, n = _bits_one(inputs[0].detach().numpy())
            seen[name][0] += o
            seen[name][1] += n
        return hook

    net.conv.register_forward_hook(grab("conv"))
    net.head[2].register_forward_hook(grab("head.2"))
    with TraceRecorder(net, tmp_path / "t", chunk_iterations=2) as rec:
        record_steps(net, rec)
        with torch.no_grad():
            net(batch(9)[0])             # an evaluation pass after the last step: not counted
    layers = {l.name: l for l in open_trace(str(tmp_path / "t")).meta.layers}
    # the reference hooks also saw the evaluation pass: take it back out
    x9 = batch(9)[0]
    c = net.conv                         # computed without the module: no hook fires
    with torch.no_grad():
        h9 = torch.relu(nn.functional.conv2d(x9, c.weight, c.bias, c.stride, c.padding))
    h9 = h9.flatten(1)
    for name, inp in (("conv", x9), ("head.2", h9)):
        o, n = _bits_one(inp.numpy())
        want = (seen[name][0] - o) / (seen[name][1] - n)
        assert layers[name].input_activity == pytest.approx(want, abs=1e-6)
    # a ReLU output is half zeros: its activity is lower than the raw input's
    assert layers["head.2"].input_activity < layers["conv"].input_activity


class Mixed(nn.Module):
    """A frozen stem, a depthwise conv, a Conv1d and attention next to mappable layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stem.weight.requires_grad_(False)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.body = nn.Conv2d(4, 6, 3, padding=1)
        self.seq = nn.Conv1d(6, 6, 3, padding=1)
        self.att = nn.MultiheadAttention(6, 2, batch_first=True)
        self.head = nn.Linear(6, 7)

    def forward(self, x):
        h = self.body(self.dw(self.stem(x)))            # (n, 6, 8, 9)
        s = self.seq(h.flatten(2))                      # (n, 6, 72)
        a, _ = self.att(s.transpose(1, 2), s.transpose(1, 2), s.transpose(1, 2))
        return self.head(a.mean(1))


def test_recorder_records_what_maps_and_says_what_it_left_out(tmp_path, caplog):
    import logging

    from timesim.errors import TimesimWarning

    torch.manual_seed(0)
    net = Mixed()
    # a warning a plain script sees (a log record alone goes nowhere until logging is set
    # up: the library's NullHandler), and the same record for applications that log
    with caplog.at_level(logging.WARNING, logger="timesim"):
        with pytest.warns(TimesimWarning, match="not mapped to crossbars") as seen:
            with TraceRecorder(net, tmp_path / "t", chunk_iterations=2) as rec:
                record_steps(net, rec)
    assert "not mapped to crossbars" in caplog.text and "stem" in caplog.text
    meta = open_trace(str(tmp_path / "t")).meta
    # the depthwise conv and both attention projections are mapped (issue 24)
    assert [l.name for l in meta.layers] == ["dw", "body", "att.in_proj", "att.out_proj",
                                             "head"]
    reasons = {d["name"]: d["reason"] for d in meta.skipped}
    assert set(reasons) == {"stem", "seq"}
    assert reasons["stem"].startswith("frozen") and "Conv1d" in reasons["seq"]
    params = {d["name"]: d["parameters"] for d in meta.skipped}
    assert params == {"stem": 4 * 3 * 3 * 3, "seq": 6 * 6 * 3}
    assert any("stem" in str(w.message) for w in seen)
    # exclude= and layers= choose
    with TraceRecorder(net, tmp_path / "u", exclude=["head"]) as rec:
        x, y = batch(0)
        net.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        rec.step()
    assert [l.name for l in open_trace(str(tmp_path / "u")).meta.layers] == [
        "dw", "body", "att.in_proj", "att.out_proj"]
    with pytest.raises(timesim.TraceError, match="no module named 'nope'"):
        TraceRecorder(net, tmp_path / "v", layers=["nope"])


def test_recorder_memory_is_bounded_by_its_byte_budget(tmp_path):
    net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    weights = 256 * 512 + 512 * 10
    rec = TraceRecorder(net, tmp_path / "t", chunk_iterations=64, max_buffer_bytes=1 << 20)
    assert rec.chunk_iterations == (1 << 20) // (weights * 4) == 1
    rec = TraceRecorder(net, tmp_path / "t", chunk_iterations=64, dtype="float16",
                        max_buffer_bytes=1 << 22)
    assert rec.chunk_iterations == (1 << 22) // (weights * 2)
    for bad in (0, -1, 2.5, True):      # used to record one file per iteration, silently
        with pytest.raises(timesim.TraceError, match=f"chunk_iterations: .*got {bad!r}"):
            TraceRecorder(net, tmp_path / "t", chunk_iterations=bad)


def test_sparse_update_without_model_refuses_convolutions():
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(timesim.TraceError, match="pass SparseUpdate"):
        SparseUpdate(opt, None)
    mlp = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    su = SparseUpdate(torch.optim.SGD(mlp.parameters(), lr=0.1), None, batch_size=16)
    assert [n for n, _ in su.params] == ["param0", "param1"]


def test_sparse_update_skips_what_the_recorder_skips():
    torch.manual_seed(0)
    net = Mixed()
    su = SparseUpdate(torch.optim.SGD(net.parameters(), lr=0.1), None, model=net)
    assert [n for n, _ in su.params] == ["dw", "body", "att.in_proj", "att.out_proj", "head"]
    x, y = batch(0)
    su.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    seq_before = net.seq.weight.detach().clone()
    su.step()
    # a left-out weight is updated densely by the optimizer (digital)
    assert not torch.equal(seq_before, net.seq.weight.detach())


def test_sparse_update_without_model_says_which_weights_it_leaves_dense():
    """Without model= only 2-D weights are mapped; a Conv1d's 3-D weight is left to the dense
    optimizer, and a warning a script sees says so (it was silent), naming its shape."""
    from timesim.errors import TimesimWarning

    net = torch.nn.Sequential(torch.nn.Conv1d(4, 6, 3), torch.nn.Flatten(),
                              torch.nn.Linear(6 * 5, 3))
    with pytest.warns(TimesimWarning, match=r"shape \(6, 4, 3\) \(3-D weight without model=\)"):
        su = SparseUpdate(torch.optim.SGD(net.parameters(), lr=0.1), None, batch_size=2)
    assert [tuple(p.shape) for _, p in su.params] == [(3, 30)]


def _record_training(net, path, stepper, steps=2, **kw):
    with TraceRecorder(net, path, **kw) as rec:
        for it in range(steps):
            x, y = batch(it)
            stepper.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            rec.step()
            stepper.step()
    return open_trace(path).meta


def test_recording_says_how_its_training_applied_the_gradients(tmp_path):
    """manifest ``updates``: dense under the user's own optimizer, the selection under
    SparseUpdate, mixed where some recorded weights went through SparseUpdate and some not."""
    torch.manual_seed(0)
    net = Net()
    assert _record_training(net, tmp_path / "d", torch.optim.SGD(net.parameters(), lr=0.1)
                            ).updates == "dense"
    hw = timesim.load_hwconfig(None, ["controller.selection=topk",
                                      "controller.topk_density=0.01"])
    net = Net()
    sparse = SparseUpdate(torch.optim.SGD(net.parameters(), lr=0.1), hw, model=net)
    assert _record_training(net, tmp_path / "k", sparse).updates == "topk"
    net = Net()
    with pytest.warns(Warning, match="excluded"):   # the Linear stays with the optimizer
        part = SparseUpdate(torch.optim.SGD(net.parameters(), lr=0.1), hw, model=net,
                            exclude=["head"])
    assert _record_training(net, tmp_path / "m", part).updates == "mixed"
    net = Net()                     # a SparseUpdate made but not used: the training is dense
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    SparseUpdate(opt, hw, model=net)            # its step() never called
    assert _record_training(net, tmp_path / "u", opt, steps=3).updates == "dense"
    sparse = SparseUpdate(opt, hw, model=net)   # now every step through it (the weights
    assert _record_training(net, tmp_path / "k2", sparse, steps=3).updates == "topk"  # stamped)
    assert _record_training(net, tmp_path / "d2", opt, steps=3).updates == "dense"  # stale
    with TraceRecorder(net, tmp_path / "w") as rec:     # dense warm-up, then SparseUpdate
        for it in range(4):
            x, y = batch(it)
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            rec.step()
            (opt if it < 2 else sparse).step()
    assert open_trace(tmp_path / "w").meta.updates == "mixed"


def test_a_replay_under_another_policy_than_its_recording_says_so(tmp_path, caplog):
    """One warning where a dense recording (or a fit of one) is simulated under a sparse
    policy; none where the policy is the recording's, or dense (writes do not depend on the
    gradients), or where the recording does not say."""
    from timesim.trace.fit import fit_trace
    from timesim.trace.fitted import FittedTrace, write_model

    torch.manual_seed(0)
    net = Net()
    _record_training(net, tmp_path / "d", torch.optim.SGD(net.parameters(), lr=0.01),
                     steps=64)
    topk = timesim.load_hwconfig(None, ["controller.selection=topk",
                                        "controller.topk_density=0.01"])
    dense = timesim.load_hwconfig(None, ["controller.selection=dense"])

    def said(hw, trace):
        caplog.clear()
        with caplog.at_level("WARNING", logger="timesim"):
            report = timesim.simulate(hw, trace)
        return [r.getMessage() for r in caplog.records if "recorded from" in
                r.getMessage()], report

    lines, report = said(topk, str(tmp_path / "d"))
    assert len(lines) == 1 and "dense SGD" in lines[0] and "'topk'" in lines[0]
    assert report["trace"]["updates"] == "dense"
    assert said(dense, str(tmp_path / "d"))[0] == []
    doc, arrays = fit_trace(str(tmp_path / "d"), start=0.0)
    assert doc["source"]["updates"] == "dense"
    write_model(tmp_path / "f.yaml", doc, arrays)
    fitted = FittedTrace(model=str(tmp_path / "f.yaml"), iterations=32)
    assert fitted.meta.updates == "dense"
    assert len(said(topk, fitted)[0]) == 1
    sgs = timesim.load_hwconfig(None, ["controller.selection=sgs"])
    net = Net()
    _record_training(net, tmp_path / "s", SparseUpdate(
        torch.optim.SGD(net.parameters(), lr=0.01), sgs, model=net))
    assert said(sgs, str(tmp_path / "s"))[0] == []
    assert "'sgs' updates" in said(topk, str(tmp_path / "s"))[0][0]


def test_trace_info_counts_weights_not_the_unused_cells_of_grouped_layers(tmp_path, capsys):
    """A depthwise 3x3 conv over 4 channels is a 36 x 4 block-diagonal matrix: 144 cells, 36
    weights (docs/pytorch.md); with the Linear's 16·3 = 48 trace info says 84 weights in 192
    cells, and the run's coverage.mapped_parameters 84."""
    from timesim.cli import main

    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.Flatten(),
                        nn.Linear(4 * 2 * 2, 3, bias=False))
    with TraceRecorder(net, tmp_path / "t") as rec:
        net.zero_grad()
        net(torch.randn(2, 4, 2, 2)).sum().backward()
        rec.step()
    capsys.readouterr()
    assert main(["trace", "info", str(tmp_path / "t")]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("layers"))
    assert "2, 84 weights in 192 crossbar cells" in line
    report = timesim.simulate(timesim.load_hwconfig(None), str(tmp_path / "t"))
    assert report["coverage"]["mapped_parameters"] == 84
