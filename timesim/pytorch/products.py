"""Activation × activation products outside nn.MultiheadAttention (issue 24: never silently).

A model may compute attention, or any product of two activations, with plain tensor
operations: torchvision's Swin (``shifted_window_attention``: ``q.matmul(k.transpose(-2,
-1))``, ``attn.matmul(v)``), a hand-written attention, ``F.scaled_dot_product_attention``.
No stored weight takes part, so it is not crossbar work; the probe counts it while the model
runs its first training step, with a ``TorchFunctionMode`` that sees every ``matmul``, ``mm``,
``bmm``, ``baddbmm``, ``einsum`` and ``scaled_dot_product_attention`` call:

- a product with an operand that shares storage with one of the model's parameters (a
  weight used as ``x @ self.w.t()``) is weight work, not counted here (that parameter is in
  ``skipped`` unless a mapped module owns it);
- a call inside an ``nn.MultiheadAttention`` is counted by the probe's attention hook
  (6·N·L·S·E), not again here;
- MACs of a forward product C = A·B are batch·n·k·m (einsum: the output's size times the
  summed labels' sizes; SDPA: batch·L·S·(E + Eᵥ)); training adds the two products of its
  backward pass (dA = dC·Bᵀ, dB = Aᵀ·dC) for each operand that needs a gradient (SDPA: 3×);
- the products are charged to the next mapped layer whose forward runs after them (Swin's
  ``proj``, an attention's output projection), named by the innermost module that computed
  them; what no mapped layer follows is reported as left out.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

PRODUCTS = {"matmul", "mm", "bmm", "baddbmm", "einsum", "scaled_dot_product_attention",
            "__matmul__", "__rmatmul__"}


def _pair_macs(a: torch.Tensor, b: torch.Tensor) -> int:
    """MACs of torch.matmul(a, b) (1-D operands as torch treats them)."""
    n = a.shape[-2] if a.dim() > 1 else 1
    k = a.shape[-1]
    m = b.shape[-1] if b.dim() > 1 else 1
    batch = torch.broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2]))
    return math.prod(batch) * n * k * m


def _einsum_macs(eq: str, ops, out: torch.Tensor) -> int:
    """MACs of a two-operand einsum: the output's size times the summed labels' sizes."""
    lhs, _, rhs = eq.replace(" ", "").partition("->")
    terms = lhs.split(",")
    letters = [c for t in terms for c in t.replace("...", "") if c.isalpha()]
    if not rhs and "->" not in eq:             # implicit output: the labels seen once
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    size = {}
    for t, x in zip(terms, ops):
        named = t.replace("...", "")
        offset = x.dim() - len(named) if "..." in t else 0
        head = t.index("...") if "..." in t else len(t)
        for j, c in enumerate(named):
            size[c] = x.shape[j if j < head else j + offset]
    summed = {c for c in letters if c not in rhs}
    return out.numel() * math.prod(size[c] for c in summed)


class ProductCounter(TorchFunctionMode):
    """Counts activation × activation products while active; ``on_product(macs, name)`` gets
    each one's training MACs and the function's name. ``on_functional(weight, x, out)`` gets
    each ``F.linear`` / ``F.conv2d`` call (a mapped layer's weight used without its module)."""

    def __init__(self, weights: set[int], on_product, training_factor, on_functional=None):
        super().__init__()
        self.weights = weights
        self.on_product = on_product
        self.factor = training_factor
        self.on_functional = on_functional

    def _is_weight(self, x) -> bool:
        return isinstance(x, torch.Tensor) and x.untyped_storage().data_ptr() in self.weights

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in ("linear", "conv2d") and self.on_functional is not None:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            if isinstance(w, torch.Tensor):
                self.on_functional(w.untyped_storage().data_ptr(), args[0] if args
                                   else kwargs.get("input"), out)
            return out
        if name not in PRODUCTS:
            return out
        if name == "einsum":
            eq, ops = args[0], args[1:]
            if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
                ops = tuple(ops[0])
            if len(ops) != 2 or any(self._is_weight(x) for x in ops):
                return out
            macs, grads = _einsum_macs(eq, ops, out), [x.requires_grad for x in ops]
        elif name == "scaled_dot_product_attention":
            q, k, v = (args + tuple(kwargs.get(n) for n in ("query", "key", "value")
                                    [len(args):]))[:3]
            L, S = q.shape[-2], k.shape[-2]
            batch = math.prod(torch.broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2])))
            macs, grads = batch * L * S * (q.shape[-1] + v.shape[-1]), [True, True]
        else:
            a, b = (args[1], args[2]) if name == "baddbmm" else (args[0], args[1])
            if name == "__rmatmul__":
                a, b = b, a
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
                return out
            if self._is_weight(a) or self._is_weight(b):
                return out
            macs, grads = _pair_macs(a, b), [a.requires_grad, b.requires_grad]
        self.on_product(macs * self.factor(grads), name)
        return out


class Products:
    """The model's activation × activation products in its training passes before the first
    step, charged to the next mapped layer that runs (``layer_ran``)."""

    def __init__(self, model: nn.Module, active, functional: dict | None = None):
        self.model = model
        self.active = active                 # () -> bool: count this pass?
        # weight storage -> (module path, callback(x, out)): mapped layers whose weight a
        # model may use functionally (F.linear on a module's weight, without calling it)
        self.functional = functional or {}
        self.stack: list[str] = []
        self.pending: dict[str, int] = {}    # module path -> MACs not yet charged
        self.funcs: dict[str, set] = {}
        self.charged: dict[tuple[str, str | None], int] = {}
        self.mode: ProductCounter | None = None
        self.handles = []
        self.paths = {id(m): p or "model" for p, m in model.named_modules()}
        self.attention = {p or "model" for p, m in model.named_modules()
                          if isinstance(m, nn.MultiheadAttention)}
        for m in model.modules():
            self.handles.append(m.register_forward_pre_hook(self._enter))
            self.handles.append(m.register_forward_hook(self._leave))

    def _factor(self, grads) -> int:
        if not torch.is_grad_enabled():        # timing_manifest's passes: a training step
            return 3
        return 1 + sum(bool(g) for g in grads)

    def _product(self, macs: int, func: str) -> None:
        if self.attention.intersection(self.stack):
            return                             # the attention hook counts those
        where = self.stack[-1] if self.stack else "model"
        self.pending[where] = self.pending.get(where, 0) + int(macs)
        self.funcs.setdefault(where, set()).add(func.strip("_"))

    def _enter(self, mod, _args):
        self.stack.append(self.paths.get(id(mod), "?"))
        if mod is self.model:
            self._stop()                       # left on by a pass that raised
            if self.active():
                weights = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
                self.mode = ProductCounter(weights, self._product, self._factor,
                                           self._functional)
                self.mode.__enter__()

    def _leave(self, mod, _args, _out):
        if self.stack:
            self.stack.pop()
        if mod is self.model:
            self._stop()
            self.stack.clear()

    def _stop(self) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode = None

    def _functional(self, weight: int, x, out) -> None:
        """A mapped layer's weight in an F.linear/F.conv2d call outside its own module's
        forward (there, its forward hook counts it): the layer ran."""
        path, ran = self.functional.get(weight, (None, None))
        if ran is not None and path not in self.stack and isinstance(x, torch.Tensor):
            ran(x, out)

    def layer_ran(self, layer: str) -> None:
        """A mapped layer's forward ran: it takes the products computed before it."""
        for where, macs in self.pending.items():
            self.charged[where, layer] = self.charged.get((where, layer), 0) + macs
        self.pending.clear()

    def remove(self) -> None:
        self._stop()
        for h in self.handles:
            h.remove()
        self.handles = []

    def entries(self) -> list[dict]:
        """``left_out`` entries: {name, work, macs, layer} (``layer`` absent when no mapped
        layer followed the products)."""
        out: dict[tuple[str, str | None], int] = dict(self.charged)
        for where, macs in self.pending.items():
            out[where, None] = out.get((where, None), 0) + macs
        entries = []
        for (where, layer), macs in out.items():
            if macs <= 0:
                continue
            funcs = ", ".join(sorted(self.funcs.get(where, ())))
            d = {"name": where, "work": f"activation x activation products ({funcs}), "
                 f"forward and backward", "macs": macs}
            if layer is not None:
                d["layer"] = layer
            entries.append(d)
        return entries
