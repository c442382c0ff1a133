"""PyTorch integration (the ``torch`` extra; the core package never imports this module).

- ``TraceRecorder``: hooks every nn.Linear, nn.Conv2d (grouped ones as a block-diagonal
  matrix) and nn.MultiheadAttention projection and writes their weight gradients as a trace
  (DESIGN §6 orientation) while a model trains; what it leaves digital is listed.
- ``SparseUpdate``: wraps an optimizer and applies the chip's update policy in the loop, so the
  accuracy a user reports is the accuracy of the policy; it co-simulates live (write counts, ARS,
  lifetime, cycles, energy) and ``report(out)`` writes the same run folder as ``timesim run``.
- ``timing_manifest``: shapes and geometry of a model from one forward pass, no gradients, for
  timing a policy with the engine (``timesim run`` on the written manifest).
- ``crossbar_forward``: a model's forward pass with its Linear/Conv2d layers computed on
  (faulted) crossbars by ``timesim.analog``, for accuracy under wear.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as exc:                    # one clear line naming the extra
    raise ModuleNotFoundError(
        "timesim.pytorch needs PyTorch: pip install 'timesim[torch]' (torch==2.13.0)",
        name="torch") from exc

from .config import HwConfig, load_hwconfig
from .errors import TimesimWarning, TraceError
from .simulate import Simulation
from .trace.format import LayerInfo, TraceMeta
from .trace.writer import TraceWriter

log = logging.getLogger(__name__)


def _tell(message: str, stacklevel: int) -> None:
    """A warning for the user of the Python API: a Python warning, which a plain script shows
    (pointing at the user's line), and the same as a log record for applications that
    collect timesim's logging (a library's records go nowhere until logging is set up)."""
    warnings.warn(message, TimesimWarning, stacklevel=stacklevel)
    log.warning("%s", message)

__all__ = ["TraceRecorder", "SparseUpdate", "timing_manifest", "crossbar_forward",
           "weight_to_matrix", "matrix_to_weight"]


def weight_to_matrix(w: torch.Tensor, groups: int = 1) -> np.ndarray:
    """A Linear (out, in) or Conv2d (C_out, C_in/groups, kh, kw) tensor as the rows × cols
    matrix of DESIGN §6: rows = inputs (c_in·kh·kw + i·kw + j), cols = outputs. float32, C order.

    A grouped convolution is the block-diagonal matrix of CrossSim's grouped-conv mapping
    (sandialabs/cross-sim, ``AnalogConvolution.form_matrix``): rows for all C_in·kh·kw inputs,
    group g's kernels in rows [g·m, (g+1)·m) (m = C_in/groups·kh·kw) and columns
    [g·C_out/groups, ...); every other cell is 0 (the unused cells of that mapping)."""
    t = w.detach()
    if t.dim() not in (2, 4):
        raise TraceError(f"expected a Linear or Conv2d weight, got shape {tuple(t.shape)}")
    m = t.reshape(t.shape[0], -1).t().to(torch.float32).cpu().numpy()
    if groups == 1:
        return np.ascontiguousarray(m)
    per, co = m.shape[0], m.shape[1] // groups                 # rows per group, cols per group
    full = np.zeros((groups, per, groups, co), dtype=np.float32)
    g = np.arange(groups)
    full[g, :, g, :] = m.reshape(per, groups, co).transpose(1, 0, 2)
    return full.reshape(groups * per, groups * co)


def _fill_blocks(out: np.ndarray, w: torch.Tensor, groups: int, dtype: str) -> None:
    """Write the diagonal blocks of ``weight_to_matrix(w, groups)`` into ``out`` (a writer's
    slot in storage dtype, 0 off the blocks), without building the full matrix."""
    from .trace.writer import to_storage

    m = w.detach().reshape(w.shape[0], -1).t().to(torch.float32).cpu().numpy()
    per, co = m.shape[0], m.shape[1] // groups
    g = np.arange(groups)
    out.reshape(groups, per, groups, co)[g, :, g, :] = to_storage(
        np.ascontiguousarray(m.reshape(per, groups, co).transpose(1, 0, 2)), dtype)


def matrix_to_weight(g: np.ndarray, like: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Inverse of ``weight_to_matrix``: a tensor shaped, typed and placed like ``like`` (a
    grouped layer's diagonal blocks; the cells off them are dropped)."""
    if groups != 1:
        co = g.shape[1] // groups
        per = g.shape[0] // groups
        i = np.arange(groups)
        g = g.reshape(groups, per, groups, co)[i, :, i, :].transpose(1, 0, 2).reshape(per, -1)
    t = torch.from_numpy(np.ascontiguousarray(g.T)).reshape(like.shape)
    return t.to(dtype=like.dtype, device=like.device)


def _matches(name: str, patterns) -> bool:
    """A module path equals a pattern or lies under it (``features`` covers ``features.3``)."""
    return any(name == p or name.startswith(p + ".") for p in patterns)


@dataclasses.dataclass(frozen=True)
class _Layer:
    """One crossbar matrix of the model: its name, the module whose forward hook sees its
    inputs (the nn.MultiheadAttention for its projections), and where its weight lives."""

    name: str
    module: nn.Module
    path: str            # module path of ``module``
    owner: nn.Module     # the module holding the weight
    attr: str            # its attribute: weight, in_proj_weight, q_proj_weight, ...
    role: str            # linear | conv2d | qkv | q | k | v | out (attention projections)

    @property
    def weight(self) -> nn.Parameter:
        return getattr(self.owner, self.attr)

    @property
    def groups(self) -> int:
        return self.module.groups if self.role == "conv2d" else 1


def _weights(mod: nn.Module) -> dict[str, nn.Parameter]:
    """A module's own weight-bearing parameters (2-D and up; MultiheadAttention's bias_k and
    bias_v are biases)."""
    return {n: p for n, p in mod.named_parameters(recurse=False)
            if p is not None and p.dim() >= 2 and n not in ("bias_k", "bias_v")}


def _attention_layers(name: str, mod: nn.MultiheadAttention) -> list[_Layer]:
    """The input projection (packed Q/K/V, or three when kdim/vdim differ) and the output
    projection of an nn.MultiheadAttention, hooked on the attention module itself (its forward
    never calls out_proj as a module)."""
    if mod.in_proj_weight is not None:
        out = [_Layer(f"{name}.in_proj", mod, name, mod, "in_proj_weight", "qkv")]
    else:
        out = [_Layer(f"{name}.{r}_proj", mod, name, mod, f"{r}_proj_weight", r) for r in "qkv"]
    return out + [_Layer(f"{name}.out_proj", mod, name, mod.out_proj, "weight", "out")]


def select_layers(model: nn.Module, layers=None, exclude=(), frozen: bool = False
                  ) -> tuple[list[_Layer], list[dict]]:
    """The crossbar layers of ``model`` and the weight-bearing modules left out, with why.

    Mapped: every nn.Linear, nn.Conv2d (grouped and depthwise ones as a block-diagonal matrix,
    ``weight_to_matrix``) and nn.MultiheadAttention projection (``<path>.in_proj``, or
    ``.q_proj/.k_proj/.v_proj``, and ``<path>.out_proj``) whose weight trains, in registration
    order, restricted to ``layers`` (names or their prefixes) and minus ``exclude``. Left out,
    each with a reason and its parameter count (the manifest's ``skipped`` and a warning say
    so): excluded or unlisted layers, frozen weights (requires_grad=False), and modules with
    weights timesim does not map (embeddings, Conv1d, recurrent layers, ...). ``frozen``: map
    frozen weights too (inference: ``crossbar_forward``).
    """
    candidates, skipped, inside = [], [], set()
    for path, mod in model.named_modules():
        path = path or "model"
        if isinstance(mod, nn.MultiheadAttention):
            candidates += _attention_layers(path, mod)
            inside.add(id(mod.out_proj))
            own = {n: p for n, p in _weights(mod).items() if not n.endswith("proj_weight")}
        elif id(mod) in inside:
            continue
        elif type(mod) in (nn.Linear, nn.Conv2d) or (
                isinstance(mod, (nn.Linear, nn.Conv2d)) and set(_weights(mod)) == {"weight"}):
            candidates.append(_Layer(path, mod, path, mod, "weight",
                                     "conv2d" if isinstance(mod, nn.Conv2d) else "linear"))
            continue
        else:
            own = _weights(mod)
        if own:
            skipped.append({"name": path, "reason": f"{type(mod).__name__} is not mapped to "
                            f"crossbars ({', '.join(own)})",
                            "parameters": sum(p.numel() for p in own.values())})
    out = []
    for layer in candidates:
        n = layer.weight.numel()
        if layers is not None and not (_matches(layer.name, layers)
                                       or _matches(layer.path, layers)):
            skipped.append({"name": layer.name, "reason": "not in layers=", "parameters": n})
        elif _matches(layer.name, exclude) or _matches(layer.path, exclude):
            skipped.append({"name": layer.name, "reason": "excluded", "parameters": n})
        elif not layer.weight.requires_grad and not frozen:
            skipped.append({"name": layer.name, "reason": "frozen (requires_grad=False)",
                            "parameters": n})
        else:
            out.append(layer)
    if layers is not None:
        known = [n for n, _ in model.named_modules()] + [c.name for c in candidates]
        missing = [p for p in layers if not any(_matches(n, [p]) for n in known)]
        if missing:
            raise TraceError(f"layers=: no module named {missing[0]!r} in the model")
    if not out:
        why = "; ".join(f"{d['name']}: {d['reason']}" for d in skipped[:3])
        raise TraceError("the model has no trainable nn.Linear, nn.Conv2d or attention "
                         "projection to map to crossbars" + (f" ({why})" if why else ""))
    if skipped:
        _tell("not mapped to crossbars: " + "; ".join(
            f"{d['name']} ({d['reason']})" for d in skipped), stacklevel=4)
    return out, skipped


def crossbar_layers(model: nn.Module, layers=None, exclude=()) -> list[_Layer]:
    """Every mapped layer of ``model`` (``select_layers``)."""
    return select_layers(model, layers, exclude)[0]


WEIGHTS = "weights.npz"       # a trace's trained weights (its model's state_dict, no pickle)


def save_weights(model: nn.Module, path: Path) -> None:
    """The model's state_dict as a plain .npz (float32), written atomically: with it,
    ``timesim run --faults`` evaluates the worn chip on the trace's model."""
    arrays = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in
              model.state_dict().items() if v.is_floating_point()}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(path)


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    with np.load(path, allow_pickle=False) as z:
        state = {k: torch.from_numpy(z[k]) for k in z.files}
    model.load_state_dict(state, strict=False)
    return model


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

    def _hook(self, layer: _Layer):
        mod, name = layer.module, layer.name

        def hook(_mod, inputs, output):
            x = inputs[0]
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
        return hook

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

    def activity(self, name: str) -> float | None:
        ones, bits = getattr(self, "_marked", ({}, {}))
        n = bits.get(name, 0)
        return round(ones[name] / n, 6) if n else None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def left_out(self) -> tuple[dict, ...]:
        """Attention's activation x activation products: digital work not timed."""
        return tuple({"name": name.rsplit(".", 1)[0], "work": "attention scores and context "
                      "(activation x activation, forward and backward)",
                      "macs": m} for name, m in self.macs.items())

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


def _source() -> str:
    return f"pytorch {torch.__version__}"


class TraceRecorder:
    """Record the weight gradients of every Linear/Conv2d layer as a trace directory.

        with TraceRecorder(model, "traces/run1", dtype="float16") as rec:
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(); loss.backward()
                rec.step()          # before any SparseUpdate.step(), which rewrites .grad
                opt.step()

    Chunks are written atomically and the manifest is checkpointed after each chunk
    (``complete: false``): a killed run keeps its finished chunks (``timesim trace seal``).

    ``layers`` / ``exclude``: layer names or module paths (or their prefixes) to record / leave
    out; frozen weights are left out by themselves; the manifest's ``skipped`` lists every
    weight-bearing module not recorded, with why and its parameter count, and ``left_out`` the
    attention products (activation x activation) not timed, in MACs per iteration.

    Input vectors: a Linear fed (batch, tokens, features) is one input vector per token; the
    batch dimension comes from ``batch_size=``, else from the model's convention
    (``batch_first`` of the enclosing module or of its nn.MultiheadAttention; dim 1 when it is
    False, as PyTorch's (L, N, E) default), else dim 0 with a warning; ``batch_note`` says
    which. ``input_bits``: the magnitude bits input activity is counted at (0: not counted,
    the hwconfig's ``dac.input_activity`` is used instead).

    Memory: the writer holds one chunk of every layer, chunk_iterations x Σ weights x bytes per
    value; ``max_buffer_bytes`` (default 256 MB) lowers chunk_iterations so that this stays
    bounded whatever the model.
    """

    def __init__(self, model: nn.Module, path: str | Path, dtype: str = "float32",
                 chunk_iterations: int = 64, dataset: str = "", model_name: str | None = None,
                 overwrite: bool = False, input_bits: int = 8, layers=None, exclude=(),
                 max_buffer_bytes: int = 256 << 20, save_weights: bool = True,
                 batch_size: int | None = None):
        self.model = model
        self.batch_size = batch_size
        self.save_weights = save_weights
        self.input_bits = input_bits
        self.path = Path(path)
        self.dtype = dtype
        self.dataset = dataset
        self.model_name = model_name or type(model).__name__
        self.overwrite = overwrite
        self.layers, self.skipped = select_layers(model, layers, exclude)
        from .trace.format import STORAGE

        if dtype not in STORAGE:
            raise TraceError(f"dtype: must be one of {'|'.join(STORAGE)}, got {dtype!r}")
        per_iteration = sum(layer.weight.numel() * layer.groups
                            for layer in self.layers) * STORAGE[dtype].itemsize
        self.chunk_iterations = max(1, min(chunk_iterations, max_buffer_bytes // per_iteration))
        if self.chunk_iterations < chunk_iterations:
            log.info("chunk_iterations %d -> %d: one chunk of every layer stays under %d bytes",
                     chunk_iterations, self.chunk_iterations, max_buffer_bytes)
        self.probe: _Probe | None = None
        self.writer: TraceWriter | None = None

    def __enter__(self) -> TraceRecorder:
        self.probe = _Probe(self.model, self.layers, self.input_bits, self.batch_size)
        return self

    @property
    def batch_note(self) -> str:
        """Where the recorded batch size came from (``batch_size=``, or which input dim)."""
        return self.probe.batch_note if self.probe is not None else ""

    def step(self) -> None:
        """Record the current ``.grad`` of every layer as one iteration."""
        if self.probe is None:
            raise TraceError("TraceRecorder.step() outside its `with` block")
        if self.writer is None:
            _say_batch(self.probe)
            self.writer = TraceWriter(
                self.path, self.probe.layer_infos(), model=self.model_name, source=_source(),
                dataset=self.dataset, batch_size=self.probe.batch, dtype=self.dtype,
                chunk_iterations=self.chunk_iterations, overwrite=self.overwrite,
                checkpoint=True)
            self.writer.skipped = tuple(self.skipped)
            self.writer.left_out = self.probe.left_out()
        grads, filled = {}, set()
        for layer in self.layers:
            name = layer.name
            if layer.weight.grad is None:
                raise TraceError(f"layer {name}: no gradient this iteration: call step() after "
                                 f"backward(), and make sure the layer is used in the loss (or "
                                 f"leave it out: exclude=[{name!r}])")
            if layer.groups > 1:        # only the diagonal blocks: the rest stays 0
                _fill_blocks(self.writer.slot(name), layer.weight.grad, layer.groups,
                             self.dtype)
                filled.add(name)
            else:
                grads[name] = weight_to_matrix(layer.weight.grad)
        self.writer.append(grads, filled)
        self.probe.mark()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.probe is not None:
            self.probe.remove()
        if exc_type is None and self.writer is not None:
            # the fraction of 1 bits each layer's quantized inputs had over the whole recording
            # (manifest input_activity: activity-dependent read energy, docs/architecture.md)
            self.writer.layers = tuple(
                dataclasses.replace(info, input_activity=self.probe.activity(info.name))
                for info in self.writer.layers)
            self.writer.skipped = tuple(self.skipped)
            self.writer.close()
            if self.save_weights:
                save_weights(self.model, self.path / WEIGHTS)


class SparseUpdate:
    """Apply the hwconfig's update policy (DESIGN §2) to every Linear/Conv2d weight in training.

    Each ``step()``: the gradient of each crossbar weight goes through the same policy kernels as
    ``timesim run`` (residual accumulation, selection, ARS, write counting); the selected entries
    get their accumulated gradient, every other entry of the weight gets zero and is restored
    after the wrapped optimizer's step, so only the selected entries move, by the optimizer's rule
    applied to the accumulated gradient. Biases and other 1-D parameters are digital and updated
    densely. ARS is a physical remap and changes nothing here.

    ``model`` names the layers by module path and records conv geometry, batch size and input
    activity for the engine; ``layers`` / ``exclude`` as for ``TraceRecorder`` (left-out
    weights are updated densely by the wrapped optimizer). Without ``model`` only Linear
    weights can be mapped (a 4-D weight's geometry is unknown: pass ``model=``), they are named
    ``param0, param1, ...``, and ``batch_size`` should be given.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, hw: HwConfig | str | Path | None = None,
                 model: nn.Module | None = None, model_name: str | None = None,
                 dataset: str = "", layers=None, exclude=(), batch_size: int | None = None):
        self.optimizer = optimizer
        self.hw = hw if isinstance(hw, HwConfig) else load_hwconfig(hw)
        names: dict[int, str] = {}
        self.probe = None
        self.batch_size = batch_size
        self.skipped: list[dict[str, str]] = []
        self.groups: dict[str, int] = {}
        if model is not None:
            mapped, self.skipped = select_layers(model, layers, exclude)
            names = {id(layer.weight): layer.name for layer in mapped}
            self.groups = {layer.name: layer.groups for layer in mapped}
            self.probe = _Probe(model, mapped, self.hw.dac.input_bits, batch_size)
        elif layers is not None or exclude:
            raise TraceError("SparseUpdate: layers= and exclude= name modules: pass model= too")
        self.params: list[tuple[str, torch.nn.Parameter]] = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if model is not None:
                    if id(p) in names:
                        self.params.append((names[id(p)], p))
                elif p.dim() == 4:
                    raise TraceError(
                        f"SparseUpdate: a 4-D (convolution) weight of shape {tuple(p.shape)} "
                        f"without model=: its output positions, stride and groups are unknown "
                        f"and the engine would time it as one input vector; pass "
                        f"SparseUpdate(optimizer, hw, model=model)")
                elif p.dim() == 2:
                    self.params.append((f"param{len(self.params)}", p))
                elif p.dim() > 2:               # Conv1d / Conv3d: not one known geometry
                    self.skipped.append({"name": f"shape {tuple(p.shape)}",
                                         "reason": f"{p.dim()}-D weight without model=",
                                         "parameters": p.numel()})
        if model is None and self.skipped:
            _tell("not mapped to crossbars (updated densely): " + "; ".join(
                f"{d['name']} ({d['reason']})" for d in self.skipped), stacklevel=3)
        if not self.params:
            raise TraceError("the optimizer has no 2-D or 4-D weight to map to crossbars")
        if model is None and batch_size is None:
            _tell("SparseUpdate without model= or batch_size=: the batch size is unknown and "
                  "the engine times one input vector per layer and iteration", stacklevel=3)
        self.model_name = model_name or (type(model).__name__ if model is not None else "model")
        self.dataset = dataset
        self.sim: Simulation | None = None

    # pass-through of the optimizer interface
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def _layers(self) -> tuple[LayerInfo, ...]:
        by_probe = {}
        if self.probe is not None:
            _say_batch(self.probe)
            by_probe = {l.name: l for l in self.probe.layer_infos()}
        out = []
        for name, p in self.params:
            if name in by_probe:
                out.append(by_probe[name])
            else:
                rows = int(np.prod(p.shape[1:]))
                out.append(LayerInfo(name=name, kind="linear", rows=rows, cols=p.shape[0]))
        return tuple(out)

    def _start(self) -> None:
        layers = self._layers()
        batch = self.batch_size or (self.probe.batch if self.probe else 0)
        meta = TraceMeta(model=self.model_name, source=f"{_source()} live", dataset=self.dataset,
                         batch_size=batch, iterations=1, chunk_iterations=1, dtype="float32",
                         layers=layers, skipped=tuple(self.skipped),
                         left_out=self.probe.left_out() if self.probe else ())
        self.sim = Simulation(self.hw, meta)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.sim is None:
            self._start()
        if self.probe is not None:
            self.probe.mark()
        sim = self.sim
        grads, before = {}, {}
        for (name, p), policy in zip(self.params, sim.policies):
            if p.grad is None:
                raise TraceError(f"layer {name}: no gradient; call step() after backward()")
            g = weight_to_matrix(p.grad, self.groups.get(name, 1))
            grads[name] = g[None]
            if policy.selection != "dense":
                before[name] = policy.A + g            # float32, as the kernel adds
        sim.feed(grads, sim.iterations, 1)
        restore = []
        for (name, p), policy in zip(self.params, sim.policies):
            if policy.selection == "dense":
                continue
            acc = before[name]
            moved = (policy.A == 0) & (acc != 0)       # selected: zeroed in A by the kernel
            groups = self.groups.get(name, 1)
            p.grad.copy_(matrix_to_weight(np.where(moved, acc, np.float32(0)), p, groups))
            restore.append((p, p.detach().clone(), matrix_to_weight(moved, p, groups).bool()))
        self.optimizer.step()
        for p, old, moved in restore:
            p.copy_(torch.where(moved, p, old))
        return loss

    def report(self, out: str | Path | None = None) -> dict:
        """Finish the live co-simulation: the report (and run folder) of ``timesim run``."""
        if self.sim is None:
            raise TraceError("SparseUpdate.report(): no step() was taken")
        if self.probe is not None:
            self.probe.remove()
            self.sim.engine.set_activity({name: self.probe.activity(name)
                                          for name, _ in self.params})
        return self.sim.finish(out, trace_label=f"live:{self.model_name}")


def timing_manifest(model: nn.Module, example_input, path: str | Path | None = None,
                    model_name: str | None = None, iterations: int = 1,
                    batch_size: int | None = None) -> TraceMeta:
    """Layer shapes and geometry from one forward pass of ``example_input`` (no gradients).

    With ``path``, writes ``path/manifest.yaml`` marked ``timing_only: true``: ``timesim run
    --trace path`` then times ``iterations`` iterations of the chosen policy with the engine.
    Feed a realistic input (a batch of data): each layer's input activity is measured on it,
    and a layer whose input bits are all 0 (``torch.zeros``) would be charged no crossbar read
    energy, so that is refused with a warning and the hwconfig's ``dac.input_activity`` is
    used for it instead. ``example_input``: a tensor, or a tuple of positional arguments.
    """
    layers, skipped = select_layers(model)
    probe = _Probe(model, layers, 8, batch_size, timing=True)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    fast = getattr(torch.backends, "mha", None)
    was = fast.get_fastpath_enabled() if fast is not None else None
    try:
        if fast is not None:           # the fused inference path bypasses the module hooks
            fast.set_fastpath_enabled(False)
        with torch.no_grad():
            model(*args)
        probe.mark()
    finally:
        probe.remove()
        if fast is not None:
            fast.set_fastpath_enabled(was)
    _say_batch(probe)
    infos = []
    for info in probe.layer_infos():
        act = probe.activity(info.name)
        if act == 0.0:
            _tell(f"timing_manifest: {info.name}'s input is all zeros (input activity 0, no "
                  f"crossbar read energy): feed a realistic input; using the hwconfig's "
                  f"dac.input_activity for it", stacklevel=3)
            act = None
        infos.append(dataclasses.replace(info, input_activity=act))
    meta = TraceMeta(model=model_name or type(model).__name__, source=_source(), dataset="",
                     batch_size=probe.batch, iterations=iterations, chunk_iterations=1,
                     dtype="float32", timing_only=True, layers=tuple(infos),
                     skipped=tuple(skipped), left_out=probe.left_out())
    if path is not None:
        import yaml

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / "manifest.yaml").write_text(yaml.safe_dump(meta.to_dict(), sort_keys=False))
    return meta


def crossbar_forward(model: nn.Module, x: torch.Tensor, hw: HwConfig | str | Path | None = None,
                     stuck: dict | None = None, seed: int = 0) -> torch.Tensor:
    """``model(x)`` with every Linear and Conv2d computed on (faulted) crossbars.

    Each layer's weight is programmed with ``timesim.analog.program`` (DESIGN §6 orientation;
    ``stuck[layer name]`` an int8 (rows, cols) mask: 0 ok, 1 SA0, 2 SA1, e.g. from
    ``timesim.analog.wearout_faults`` on a run's write counts) and its inputs go through
    ``mvm``: convolutions as the crossbar computes them, one input vector per output position
    (unfolded patches). With ``adc.range: auto`` each layer's ADCs are calibrated on the input
    vectors the layer gets in this call (the recorded activations). Biases and everything else
    stay digital, and so do nn.MultiheadAttention's projections (with a warning). A grouped
    convolution runs on its block-diagonal matrix. For accuracy under wear.
    """
    from torch.nn import functional as F

    from .analog import program

    hw = hw if isinstance(hw, HwConfig) else load_hwconfig(hw)
    stuck = stuck or {}
    handles = []

    def hook(name, mod):
        def run(_mod, inputs, output):
            inp = inputs[0].detach().to(torch.float32)
            if isinstance(mod, nn.Linear):
                flat = inp.reshape(-1, mod.in_features).cpu().numpy()
            else:
                n = inp.shape[0]
                cols = F.unfold(inp, mod.kernel_size, dilation=mod.dilation,
                                padding=mod.padding, stride=mod.stride)      # (N, rows, L)
                flat = cols.transpose(1, 2).reshape(-1, cols.shape[1]).cpu().numpy()
            xbar = program(weight_to_matrix(mod.weight, getattr(mod, "groups", 1)), hw,
                           stuck.get(name), seed, calib=flat)
            y = torch.from_numpy(xbar.mvm(flat, seed))
            if isinstance(mod, nn.Linear):
                y = y.reshape(output.shape)
            else:                                                             # (N·L, C_out)
                y = y.reshape(n, -1, y.shape[1]).transpose(1, 2).reshape(output.shape)
            if mod.bias is not None:          # a Linear's features are its input's last axis
                shape = (-1,) if isinstance(mod, nn.Linear) else (1, -1, 1, 1)
                y = y + mod.bias.detach().to(torch.float32).reshape(shape)
            return y.to(output.dtype).to(output.device)

        return run

    digital = []
    for layer in select_layers(model, frozen=True)[0]:
        name, mod = layer.name, layer.module
        if layer.role not in ("linear", "conv2d"):
            digital.append(name)
            continue
        if isinstance(mod, nn.Conv2d) and isinstance(mod.padding, str):
            raise TraceError(f"layer {name}: padding={mod.padding!r}: give explicit padding")
        handles.append(mod.register_forward_hook(hook(name, mod)))
    if digital:
        _tell("crossbar_forward: attention projections computed digitally (not on crossbars): "
              + ", ".join(digital), stacklevel=3)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()
