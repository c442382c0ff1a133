"""Activation x activation products outside nn.MultiheadAttention, and mapped layers whose
weight a model uses without calling the module (timesim/pytorch/products.py, issue 24)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import timesim  # noqa: E402
from timesim.pytorch import SparseUpdate, TraceRecorder, timing_manifest  # noqa: E402
from timesim.pytorch.products import _einsum_macs  # noqa: E402
from timesim.trace import open_trace  # noqa: E402


class HandAttention(nn.Module):
    """Single-head attention written with @ and softmax, on (N, L, E) inputs."""

    def __init__(self, e: int = 8, classes: int = 3):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(e, e) for _ in range(4))
        self.head = nn.Linear(e, classes)

    def forward(self, x):
        v = self.v(x)
        a = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(x.shape[-1]), -1)
        return self.head(self.o(a @ v).mean(1))


def _record(model, x, y, path, steps=2, **kw):
    with TraceRecorder(model, path, **kw) as rec:
        for _ in range(steps):
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            rec.step()
    return open_trace(path).meta


def test_hand_written_attention_is_counted_and_timed_on_the_attention_unit(tmp_path):
    """Scores (N·L·L·E) and context (N·L·L·E) forward, two more products each backward: 6·N·L²·E
    MACs per iteration, charged to the output projection o (the next mapped layer after
    both); report.json times them (digital), leaves nothing out, and the cycles grow by
    what the attention unit needs for them."""
    torch.manual_seed(0)
    N, L, E = 4, 6, 8
    model = HandAttention(E)
    x, y = torch.randn(N, L, E), torch.randint(0, 3, (N,))
    meta = _record(model, x, y, tmp_path / "t", steps=3, batch_size=N)
    (entry,) = meta.left_out
    assert entry["macs"] == 6 * N * L * L * E and entry["layer"] == "o"
    assert entry["name"] == "model" and "matmul" in entry["work"]
    rep = timesim.simulate(timesim.load_hwconfig(), str(tmp_path / "t"))
    assert [d["layer"] for d in rep["digital"]] == ["o"] and not rep.get("left_out")
    off = timesim.simulate(timesim.load_hwconfig(None, ["attention.units=0"]),
                           str(tmp_path / "t"))
    assert off["left_out"][0]["macs"] == 6 * N * L * L * E
    assert rep["energy_j"]["by_component"]["attention"] > 0


def test_products_are_counted_on_the_first_step_only_and_hooks_leave(tmp_path):
    """Later steps with another sequence length do not change what was counted, and no
    hook of the counter stays on the model after the first step."""
    torch.manual_seed(1)
    model = HandAttention()
    x, y = torch.randn(2, 5, 8), torch.randint(0, 3, (2,))
    with TraceRecorder(model, tmp_path / "t", batch_size=2) as rec:
        for s in (5, 9, 9):
            model.zero_grad()
            F.cross_entropy(model(torch.randn(2, s, 8)), y).backward()
            rec.step()
        assert all(not m._forward_pre_hooks for m in model.modules())
    assert open_trace(tmp_path / "t").meta.left_out[0]["macs"] == 6 * 2 * 5 * 5 * 8
    del x


class WeightMatmul(nn.Module):
    """A weight used as x @ w.t() (a parameter, not a module): weight work, not a product."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 8))
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) @ self.w.t()


def test_a_product_with_a_weight_is_not_an_activation_product(tmp_path):
    torch.manual_seed(2)
    with pytest.warns(timesim.errors.TimesimWarning, match="w"):
        meta = _record(WeightMatmul(), torch.randn(4, 8), torch.randint(0, 3, (4,)),
                       tmp_path / "t")
    assert meta.left_out == ()
    assert [s["name"] for s in meta.skipped] == ["model"]        # its parameter w, named


class Functional(nn.Module):
    """Like torchvision's Swin: a module's weight applied with F.linear, never the module."""

    def __init__(self, e: int = 8):
        super().__init__()
        self.qkv = nn.Linear(e, 3 * e)
        self.proj = nn.Linear(e, e)
        self.head = nn.Linear(e, 3)

    def forward(self, x):                          # (N, L, E)
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, -1)
        a = torch.einsum("nld,nsd->nls", q, k).softmax(-1)
        h = F.linear(torch.einsum("nls,nsd->nld", a, v), self.proj.weight, self.proj.bias)
        return self.head(h.mean(1))


def test_a_weight_used_functionally_counts_its_vectors_and_its_products(tmp_path):
    """qkv and proj never run as modules: their vectors (L per sample) come from the F.linear
    calls on their weights, and the einsum products (6·N·L²·E) are charged to proj."""
    torch.manual_seed(3)
    N, L, E = 2, 7, 8
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error", timesim.errors.TimesimWarning)
        meta = _record(Functional(E), torch.randn(N, L, E), torch.randint(0, 3, (N,)),
                       tmp_path / "t", batch_size=N)
    by = {layer.name: layer for layer in meta.layers}
    assert by["qkv"].vectors_per_sample == L and by["proj"].vectors_per_sample == L
    assert by["head"].vectors_per_sample is None and meta.batch_size == N
    assert [(d["layer"], d["macs"]) for d in meta.left_out] == [("proj", 6 * N * L * L * E)]
    assert "einsum" in meta.left_out[0]["work"]


def test_scaled_dot_product_attention_and_timing_manifest(tmp_path):
    """F.scaled_dot_product_attention on (N, H, L, D) and (N, H, S, D): N·H·L·S·(D + D) MACs
    forward, three times that in training; timing_manifest (no backward run) counts the
    same."""
    class Sdpa(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(8, 24), nn.Linear(8, 3)

        def forward(self, x):                      # (N, L, 8) -> 2 heads of 4
            q, k, v = (t.unflatten(-1, (2, 4)).transpose(1, 2)
                       for t in self.inp(x).chunk(3, -1))
            h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
            return self.out(h.mean(1))

    torch.manual_seed(4)
    N, L = 3, 5
    x, y = torch.randn(N, L, 8), torch.randint(0, 3, (N,))
    meta = _record(Sdpa(), x, y, tmp_path / "t", batch_size=N)
    want = 3 * N * 2 * L * L * (4 + 4)
    assert [(d["layer"], d["macs"]) for d in meta.left_out] == [("out", want)]
    tm = timing_manifest(Sdpa(), x, tmp_path / "m", batch_size=N)
    assert [(d["layer"], d["macs"]) for d in tm.left_out] == [("out", want)]


@pytest.mark.parametrize("seed", range(4))
def test_einsum_macs_against_a_loop_count(seed):
    """Random two-operand contractions: the MAC count is the number of multiply-adds of the
    plain loop over every label (output and summed)."""
    rng = np.random.default_rng(seed)
    sizes = dict(zip("abcde", rng.integers(1, 5, size=5).tolist()))
    labels = list("abcde")
    rng.shuffle(labels)
    t1, t2 = "".join(labels[:3]), "".join(labels[2:5])
    outl = "".join(sorted(set(t1 + t2) - {labels[2]}))
    x = torch.randn(*[sizes[c] for c in t1])
    y = torch.randn(*[sizes[c] for c in t2])
    eq = f"{t1},{t2}->{outl}"
    out = torch.einsum(eq, x, y)
    loops = math.prod(sizes[c] for c in set(t1 + t2))
    assert _einsum_macs(eq, (x, y), out) == loops
    # with an ellipsis (batch dims broadcast) and in implicit mode
    b = int(rng.integers(1, 4))
    xb, yb = torch.randn(b, 2, 3, 4), torch.randn(b, 2, 4, 5)
    assert _einsum_macs("...ij,...jk->...ik", (xb, yb),
                        torch.einsum("...ij,...jk->...ik", xb, yb)) == b * 2 * 3 * 4 * 5
    p, q = torch.randn(3, 4), torch.randn(4, 6)
    assert _einsum_macs("ij,jk", (p, q), torch.einsum("ij,jk", p, q)) == 3 * 4 * 6


def test_replay_equals_live_with_hand_written_attention(tmp_path):
    """The products' timing is part of the trace: a live SparseUpdate run and the replay of
    its trace agree on cycles, energy, digital work and writes."""
    torch.manual_seed(5)
    model = HandAttention()
    hw = timesim.load_hwconfig(None, ["controller.selection=sgs", "controller.interval=2"])
    opt = SparseUpdate(torch.optim.SGD(model.parameters(), lr=0.05), hw, model=model,
                       batch_size=2)
    with TraceRecorder(model, tmp_path / "t", chunk_iterations=2, batch_size=2) as rec:
        for it in range(4):
            g = torch.Generator().manual_seed(it)
            x, y = torch.randn(2, 6, 8, generator=g), torch.randint(0, 3, (2,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            rec.step()
            opt.step()
    live = opt.report(out=tmp_path / "live")
    replay = timesim.simulate(hw, str(tmp_path / "t"), out=tmp_path / "replay")
    for key in ("writes", "cycles", "energy_j", "digital", "coverage"):
        assert live[key] == replay[key], key
    assert live["digital"][0]["macs"] == 6 * 2 * 6 * 6 * 8
