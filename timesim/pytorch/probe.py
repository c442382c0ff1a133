"""Forward hooks on a model's crossbar layers: geometry, input vectors per sample (tokens),
the batch size and its source, input activity, attention work left out."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from ..errors import TraceError
from ..trace.format import LayerInfo
from .layers import _Layer, _tell
from .products import Products

log = logging.getLogger(__name__)


def _convention(model: nn.Module, path: str) -> tuple[bool | None, str]:
    """Whether the inputs of the module at ``path`` put the batch first, from the model's own
    convention: the nearest enclosing module with a ``batch_first`` attribute (or a
    ``self_attn`` that has one, as nn.TransformerEncoderLayer), else the one setting all of the
    model's nn.MultiheadAttention modules share. (None, "") when the model does not say."""
    mods = dict(model.named_modules())
    parts = path.split(".") if path != "model" else []
    for i in range(len(parts), -1, -1):
        where = ".".join(parts[:i])
        m = mods.get(where)
        for owner in (m, getattr(m, "self_attn", None)):
            bf = getattr(owner, "batch_first", None)
            if isinstance(bf, bool):
                return bf, f"batch_first={bf} of {where or 'the model'!r}"
    flags = {m.batch_first for m in mods.values() if isinstance(m, nn.MultiheadAttention)}
    if len(flags) == 1:
        bf = flags.pop()
        return bf, f"batch_first={bf} of the model's nn.MultiheadAttention"
    return None, ""


# POP[v]: bits that are 1 in v (input activity is a histogram of quantized values times this)
_POP = np.array([bin(v).count("1") for v in range(1 << 16)], dtype=np.int64)
ACTIVITY_SAMPLE = 1 << 16      # input values per forward pass that input activity counts


class _Probe:
    """Forward hooks that record each layer's geometry, its input vectors per sample, the
    batch size (first pass) and the input activity (every pass up to the last ``mark``)."""

    def __init__(self, model: nn.Module, layers: list[_Layer], input_bits: int = 0,
                 batch_size: int | None = None, timing: bool = False):
        self.model = model
        self.timing = timing
        self.layers = layers
        self.seen: dict[str, tuple] = {}
        self.vectors: dict[str, int] = {}       # input vectors before the first mark()
        self.macs: dict[str, int] = {}          # attention products before the first mark()
        self.batch = batch_size or 0
        self.batch_note = "batch_size=" if batch_size else ""
        self.guessed = False
        self.input_bits = input_bits
        self.ones: dict[str, int] = {}
        self.bits: dict[str, int] = {}
        self._frozen = False
        by_module: dict[int, list[_Layer]] = {}
        for layer in layers:
            by_module.setdefault(id(layer.module), []).append(layer)
        self.handles = []
        for group in by_module.values():
            mod = group[0].module
            if isinstance(mod, nn.MultiheadAttention):
                self.handles.append(mod.register_forward_hook(self._attention(group),
                                                              with_kwargs=True))
            else:
                self.handles.append(mod.register_forward_hook(self._hook(group[0])))
        # products of two activations outside nn.MultiheadAttention, first step only
        self.products: Products | None = Products(
            model, lambda: not self._frozen and self._training(),
            {layer.weight.untyped_storage().data_ptr(): (layer.path, self._functional(layer))
             for layer in layers if layer.role in ("linear", "conv2d")})

    def _batch(self, layer: _Layer, n: int, how: str, shape: tuple) -> None:
        """The batch size from the first layer that runs (unless batch_size= gave it)."""
        if not self.batch:
            self.batch = int(n)
            self.batch_note = f"{how} of {layer.path!r}'s input {list(shape)}"

    def _training(self) -> bool:
        """A pass that sets geometry, batch and vectors: one with gradients (an evaluation
        under no_grad before training does not), or any pass of ``timing_manifest``."""
        return self.timing or torch.is_grad_enabled()

    def _count(self, name: str, n: int, macs: int = 0) -> None:
        """Input vectors (and attention MACs) of the training passes before the first step."""
        if not self._frozen and self._training():
            self.vectors[name] = self.vectors.get(name, 0) + n
            if macs:
                self.macs[name] = self.macs.get(name, 0) + macs
            if self.products is not None:
                self.products.layer_ran(name)

    def _hook(self, layer: _Layer):
        def hook(_mod, inputs, output):
            self._ran(layer, inputs[0], output)
        return hook

    def _ran(self, layer: _Layer, x: torch.Tensor, output: torch.Tensor) -> None:
        """Layer ``layer`` computed ``output`` from ``x``: through its module's forward (the
        hook) or by a functional call on its weight (``products``: Swin's attention calls
        F.linear on its qkv and proj weights, never the modules)."""
        mod, name = layer.module, layer.name
        if name not in self.seen and self._training():
            shape = tuple(x.shape)
            self.seen[name] = (shape, tuple(output.shape))
            if x.dim() < (4 if layer.role == "conv2d" else 2):
                self._batch(layer, 1, "an unbatched input", shape)
            elif x.dim() == 2 or layer.role == "conv2d":
                self._batch(layer, shape[0], "dim 0", shape)
            else:                       # (batch, tokens, features) or (tokens, batch, ...)
                bf, why = _convention(self.model, layer.path)
                if bf is None and not self.batch:
                    self.guessed = True
                    why = "the model states no batch_first; pass batch_size= if wrong"
                self._batch(layer, shape[0] if bf in (None, True) else shape[1],
                            f"dim {0 if bf in (None, True) else 1} ({why})", shape)
        if layer.role == "conv2d":
            self._count(name, output.numel() // output.shape[-3])
        else:
            self._count(name, x.numel() // max(1, mod.in_features))
        if self.input_bits:
            self._count_bits(name, x.detach())

    def _functional(self, layer: _Layer):
        return lambda x, out: self._ran(layer, x, out)

    def _attention(self, group: list[_Layer]):
        """Geometry of an nn.MultiheadAttention call: query (L tokens), key/value (S tokens),
        batch dim from its batch_first; the packed Q/K/V projection reads the query's tokens
        (self-attention) or the query's and the key's (else); the output projection L."""
        mod = group[0].module

        def hook(_mod, args, kwargs, output):
            names = ("query", "key", "value")
            q, k, v = (args[i] if len(args) > i else kwargs.get(names[i]) for i in range(3))
            bf = bool(mod.batch_first)
            if q.dim() == 3:
                n, L = (q.shape[0], q.shape[1]) if bf else (q.shape[1], q.shape[0])
                S = k.shape[1] if bf else k.shape[0]
            else:                                                # unbatched (L, E)
                n, L, S = 1, q.shape[0], k.shape[0]
            first = group[0]
            training = self._training()
            if first.name not in self.seen and training:
                self._batch(first, n, f"dim {0 if bf else 1} (batch_first={bf})"
                            if q.dim() == 3 else "an unbatched input", tuple(q.shape))
            per = {"qkv": L if (k is q and v is q) else L + S, "q": L, "k": S, "v": S, "out": L}
            src = {"qkv": q, "q": q, "k": k, "v": v, "out": None}
            for layer in group:
                if training:
                    self.seen.setdefault(layer.name, (tuple(q.shape), tuple(output[0].shape)))
                # the scores Q·Kᵀ and the context A·V: L·S·E MACs each per sample forward;
                # backward computes four such products (dA, dV, dQ, dK): 6·L·S·E in training
                macs = 6 * n * L * S * mod.embed_dim if layer is first else 0
                self._count(layer.name, n * per[layer.role], macs)
                if self.input_bits and src[layer.role] is not None:
                    self._count_bits(layer.name, src[layer.role].detach())
        return hook

    def _count_bits(self, name: str, x: torch.Tensor) -> None:
        """Input bits that are 1 when the layer's input is quantized to ``input_bits``
        magnitude bits over its range (bit-serial inputs, the sign applied apart).

        Counted on all values of an input of up to ``ACTIVITY_SAMPLE`` values, else on that
        many on an odd stride (range and bits both from the sample: a pass over the sample,
        not the input), as a histogram of the quantized values times their number of 1 bits."""
        flat = x.reshape(-1)
        step = -(-flat.numel() // ACTIVITY_SAMPLE)
        a = (flat[::step | 1] if step > 1 else flat).abs().float()
        if a.numel() == 0:
            return
        top = float(a.max())
        levels = (1 << self.input_bits) - 1
        if top == 0.0:
            ones = 0
        else:
            q = torch.round(a * (levels / top)).to(torch.int64)
            if self.input_bits <= 16:
                hist = torch.bincount(q, minlength=levels + 1).numpy()
                ones = int(hist @ _POP[:hist.size])
            else:
                ones = sum(int(((q >> b) & 1).sum()) for b in range(self.input_bits))
        self.ones[name] = self.ones.get(name, 0) + ones
        self.bits[name] = self.bits.get(name, 0) + a.numel() * self.input_bits

    def mark(self) -> None:
        """A training step was taken: forward passes so far count (later ones, e.g. an
        evaluation after the last step, do not); input vectors are those of the first step."""
        self._marked = (dict(self.ones), dict(self.bits))
        self._frozen = True
        if self.products is not None:        # counted: its hooks cost every later pass
            self._product_entries = self.products.entries()
            self.products.remove()
            self.products = None

    def activity(self, name: str) -> float | None:
        ones, bits = getattr(self, "_marked", ({}, {}))
        n = bits.get(name, 0)
        return round(ones[name] / n, 6) if n else None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        if self.products is not None:
            self._product_entries = self.products.entries()
            self.products.remove()
            self.products = None

    def left_out(self) -> tuple[dict, ...]:
        """Activation x activation products: nn.MultiheadAttention's scores and context
        (charged to its out_proj by name) and the others (``products``, each with the mapped
        layer that followed them, if any)."""
        mha = tuple({"name": name.rsplit(".", 1)[0], "work": "attention scores and context "
                     "(activation x activation, forward and backward)",
                     "macs": m} for name, m in self.macs.items())
        rest = (self.products.entries() if self.products is not None
                else getattr(self, "_product_entries", []))
        return mha + tuple(rest)

    def layer_infos(self) -> tuple[LayerInfo, ...]:
        infos = []
        batch = max(1, self.batch)
        unseen = [layer.name for layer in self.layers if layer.name not in self.seen]
        if unseen:
            _tell(f"no forward pass reached {', '.join(unseen[:4])}"
                  f"{' ...' if len(unseen) > 4 else ''}: timed as one input vector per sample "
                  f"(a fused fast path, or a layer the loss does not use)", stacklevel=5)
        for layer in self.layers:
            w, name, mod = layer.weight, layer.name, layer.module
            per = -(-self.vectors.get(name, 0) // batch) or None
            if layer.role == "conv2d":
                shape_in, shape_out = self.seen.get(name, (None, None))
                kh, kw = mod.kernel_size
                if isinstance(mod.padding, str):
                    raise TraceError(f"layer {name}: padding={mod.padding!r}: give explicit "
                                     f"padding so the geometry is known")
                positions = shape_out[-2] * shape_out[-1] if shape_out else None
                infos.append(LayerInfo(
                    name=name, kind="conv2d", rows=mod.in_channels * kh * kw,
                    cols=mod.out_channels, kernel=(kh, kw), in_channels=mod.in_channels,
                    out_channels=mod.out_channels,
                    input_hw=tuple(shape_in[-2:]) if shape_in else None,
                    output_hw=tuple(shape_out[-2:]) if shape_out else None,
                    stride=tuple(mod.stride), padding=tuple(mod.padding),
                    groups=mod.groups if mod.groups > 1 else None,
                    vectors_per_sample=per if per and per != positions else None))
            else:
                infos.append(LayerInfo(name=name, kind="linear", rows=w.shape[1],
                                       cols=w.shape[0],
                                       vectors_per_sample=per if per and per > 1 else None))
        return tuple(infos)


def _say_batch(probe: _Probe) -> None:
    """Say where the batch size came from: a log record, and a warning when it was a guess."""
    log.info("batch size %d: %s", probe.batch, probe.batch_note)
    if probe.guessed:
        _tell(f"batch size {probe.batch} taken from {probe.batch_note}", stacklevel=4)
