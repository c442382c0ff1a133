"""PyTorch integration (the ``torch`` extra; the core package never imports this module).

- ``TraceRecorder``: hooks every nn.Linear and nn.Conv2d and writes their weight gradients as a
  trace (DESIGN §6 orientation) while a model trains.
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


def weight_to_matrix(w: torch.Tensor) -> np.ndarray:
    """A Linear (out, in) or Conv2d (C_out, C_in, kh, kw) tensor as the rows × cols matrix of
    DESIGN §6: rows = inputs (c_in·kh·kw + i·kw + j), cols = outputs. float32, C order."""
    t = w.detach()
    if t.dim() not in (2, 4):
        raise TraceError(f"expected a Linear or Conv2d weight, got shape {tuple(t.shape)}")
    m = t.reshape(t.shape[0], -1).t()
    return np.ascontiguousarray(m.to(torch.float32).cpu().numpy())


def matrix_to_weight(g: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Inverse of ``weight_to_matrix``: a tensor shaped, typed and placed like ``like``."""
    t = torch.from_numpy(np.ascontiguousarray(g.T)).reshape(like.shape)
    return t.to(dtype=like.dtype, device=like.device)


def _matches(name: str, patterns) -> bool:
    """A module path equals a pattern or lies under it (``features`` covers ``features.3``)."""
    return any(name == p or name.startswith(p + ".") for p in patterns)


def select_layers(model: nn.Module, layers=None, exclude=(), frozen: bool = False
                  ) -> tuple[list[tuple[str, nn.Module]], list[dict[str, str]]]:
    """The crossbar layers of ``model`` and the weight-bearing modules left out, with why.

    Mapped: every nn.Linear and nn.Conv2d (groups = 1) whose weight trains, in registration
    order, restricted to ``layers`` (module paths or their prefixes) and minus ``exclude``.
    Left out, each with a reason (the manifest's ``skipped`` and a warning say so): excluded
    or unlisted layers, frozen weights (requires_grad=False), grouped/depthwise convolutions
    (not one crossbar matrix), and modules with weights timesim does not map (Conv1d, the
    projections of nn.MultiheadAttention, embeddings, recurrent layers, ...). ``frozen``:
    map frozen weights too (inference: ``crossbar_forward``).
    """
    out, skipped = [], []
    for name, mod in model.named_modules():
        name = name or "model"
        own = [n for n, p in mod.named_parameters(recurse=False)
               if p is not None and p.dim() >= 2]
        if not own:
            continue
        if not isinstance(mod, (nn.Linear, nn.Conv2d)) or type(mod).__name__ in (
                "NonDynamicallyQuantizableLinear",):
            if isinstance(mod, nn.Linear):      # MultiheadAttention's out_proj
                reason = "inside nn.MultiheadAttention (its projections are not mapped)"
            else:
                reason = f"{type(mod).__name__} is not mapped to crossbars ({', '.join(own)})"
            skipped.append({"name": name, "reason": reason})
            continue
        if layers is not None and not _matches(name, layers):
            skipped.append({"name": name, "reason": "not in layers="})
        elif _matches(name, exclude):
            skipped.append({"name": name, "reason": "excluded"})
        elif not mod.weight.requires_grad and not frozen:
            skipped.append({"name": name, "reason": "frozen (requires_grad=False)"})
        elif isinstance(mod, nn.Conv2d) and mod.groups != 1:
            skipped.append({"name": name, "reason": f"grouped convolution (groups="
                                                    f"{mod.groups}): not one crossbar matrix"})
        else:
            out.append((name, mod))
    if layers is not None:
        missing = [p for p in layers if not any(_matches(n, [p]) for n, _ in model.named_modules())]
        if missing:
            raise TraceError(f"layers=: no module named {missing[0]!r} in the model")
    if not out:
        why = "; ".join(f"{d['name']}: {d['reason']}" for d in skipped[:3])
        raise TraceError("the model has no trainable nn.Linear or nn.Conv2d layer to map to "
                         "crossbars" + (f" ({why})" if why else ""))
    if skipped:
        _tell("not mapped to crossbars: " + "; ".join(
            f"{d['name']} ({d['reason']})" for d in skipped), stacklevel=4)
    return out, skipped


def crossbar_layers(model: nn.Module, layers=None, exclude=()) -> list[tuple[str, nn.Module]]:
    """(module path, module) of every mapped nn.Linear and nn.Conv2d (``select_layers``)."""
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


class _Probe:
    """Forward hooks that record each layer's geometry and the batch size on the first pass."""

    def __init__(self, layers: list[tuple[str, nn.Module]], input_bits: int = 0):
        self.layers = layers
        self.seen: dict[str, tuple] = {}
        self.batch = 0
        self.input_bits = input_bits
        self.ones: dict[str, int] = {}
        self.bits: dict[str, int] = {}
        self.handles = [mod.register_forward_hook(self._hook(name)) for name, mod in layers]

    def _hook(self, name):
        def hook(mod, inputs, output):
            x = inputs[0]
            if name not in self.seen:
                self.batch = self.batch or int(x.shape[0])
                self.seen[name] = (tuple(x.shape), tuple(output.shape))
            if self.input_bits:
                self._count_bits(name, x.detach())
        return hook

    def _count_bits(self, name: str, x: torch.Tensor) -> None:
        """Input bits that are 1 when the layer's input is quantized to ``input_bits``
        magnitude bits over its range (bit-serial inputs, the sign applied apart)."""
        a = x.abs().float()
        top = float(a.max())
        if top == 0.0:
            q = torch.zeros_like(a, dtype=torch.int32)
        else:
            q = torch.round(a * ((2 ** self.input_bits - 1) / top)).to(torch.int32)
        ones = sum(int(((q >> b) & 1).sum()) for b in range(self.input_bits))
        self.ones[name] = self.ones.get(name, 0) + ones
        self.bits[name] = self.bits.get(name, 0) + q.numel() * self.input_bits

    def mark(self) -> None:
        """A training step was taken: forward passes so far count (later ones, e.g. an
        evaluation after the last step, do not)."""
        self._marked = (dict(self.ones), dict(self.bits))

    def activity(self, name: str) -> float | None:
        ones, bits = getattr(self, "_marked", ({}, {}))
        n = bits.get(name, 0)
        return round(ones[name] / n, 6) if n else None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def layer_infos(self) -> tuple[LayerInfo, ...]:
        infos = []
        for name, mod in self.layers:
            w = mod.weight
            if isinstance(mod, nn.Conv2d):
                shape_in, shape_out = self.seen.get(name, (None, None))
                kh, kw = mod.kernel_size
                if isinstance(mod.padding, str):
                    raise TraceError(f"layer {name}: padding={mod.padding!r}: give explicit "
                                     f"padding so the geometry is known")
                infos.append(LayerInfo(
                    name=name, kind="conv2d", rows=w.shape[1] * kh * kw, cols=w.shape[0],
                    kernel=(kh, kw), in_channels=w.shape[1], out_channels=w.shape[0],
                    input_hw=tuple(shape_in[-2:]) if shape_in else None,
                    output_hw=tuple(shape_out[-2:]) if shape_out else None,
                    stride=tuple(mod.stride), padding=tuple(mod.padding)))
            else:
                infos.append(LayerInfo(name=name, kind="linear", rows=w.shape[1],
                                       cols=w.shape[0]))
        return tuple(infos)


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

    ``layers`` / ``exclude``: module paths (or their prefixes) to record / leave out; frozen and
    grouped layers are left out by themselves; the manifest's ``skipped`` lists every
    weight-bearing module not recorded, with why. Memory: the writer holds one chunk of every
    layer, chunk_iterations x Σ weights x bytes per value; ``max_buffer_bytes`` (default 256 MB)
    lowers chunk_iterations so that this stays bounded whatever the model.
    """

    def __init__(self, model: nn.Module, path: str | Path, dtype: str = "float32",
                 chunk_iterations: int = 64, dataset: str = "", model_name: str | None = None,
                 overwrite: bool = False, input_bits: int = 8, layers=None, exclude=(),
                 max_buffer_bytes: int = 256 << 20, save_weights: bool = True):
        self.model = model
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
        per_iteration = sum(m.weight.numel() for _, m in self.layers) * STORAGE[dtype].itemsize
        self.chunk_iterations = max(1, min(chunk_iterations, max_buffer_bytes // per_iteration))
        if self.chunk_iterations < chunk_iterations:
            log.info("chunk_iterations %d -> %d: one chunk of every layer stays under %d bytes",
                     chunk_iterations, self.chunk_iterations, max_buffer_bytes)
        self.probe: _Probe | None = None
        self.writer: TraceWriter | None = None

    def __enter__(self) -> TraceRecorder:
        self.probe = _Probe(self.layers, self.input_bits)
        return self

    def step(self) -> None:
        """Record the current ``.grad`` of every layer as one iteration."""
        if self.probe is None:
            raise TraceError("TraceRecorder.step() outside its `with` block")
        if self.writer is None:
            self.writer = TraceWriter(
                self.path, self.probe.layer_infos(), model=self.model_name, source=_source(),
                dataset=self.dataset, batch_size=self.probe.batch, dtype=self.dtype,
                chunk_iterations=self.chunk_iterations, overwrite=self.overwrite,
                checkpoint=True)
            self.writer.skipped = tuple(self.skipped)
        grads = {}
        for name, mod in self.layers:
            if mod.weight.grad is None:
                raise TraceError(f"layer {name}: no gradient this iteration: call step() after "
                                 f"backward(), and make sure the layer is used in the loss (or "
                                 f"leave it out: exclude=[{name!r}])")
            grads[name] = weight_to_matrix(mod.weight.grad)
        self.writer.append(grads)
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
        if model is not None:
            mapped, self.skipped = select_layers(model, layers, exclude)
            names = {id(mod.weight): name for name, mod in mapped}
            self.probe = _Probe(mapped, self.hw.dac.input_bits)
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
                                         "reason": f"{p.dim()}-D weight without model="})
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
        batch = self.batch_size or (self.probe.batch if self.probe else 0)
        meta = TraceMeta(model=self.model_name, source=f"{_source()} live", dataset=self.dataset,
                         batch_size=batch, iterations=1,
                         chunk_iterations=1, dtype="float32", layers=self._layers())
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
            g = weight_to_matrix(p.grad)
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
            p.grad.copy_(matrix_to_weight(np.where(moved, acc, np.float32(0)), p))
            restore.append((p, p.detach().clone(), matrix_to_weight(moved, p).bool()))
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


def timing_manifest(model: nn.Module, example_input: torch.Tensor, path: str | Path | None = None,
                    model_name: str | None = None, iterations: int = 1) -> TraceMeta:
    """Layer shapes and geometry from one forward pass of ``example_input`` (no gradients).

    With ``path``, writes ``path/manifest.yaml`` marked ``timing_only: true``: ``timesim run
    --trace path`` then times ``iterations`` iterations of the chosen policy with the engine.
    """
    layers = crossbar_layers(model)
    probe = _Probe(layers, 8)
    try:
        with torch.no_grad():
            model(example_input)
        probe.mark()
    finally:
        probe.remove()
    meta = TraceMeta(model=model_name or type(model).__name__, source=_source(), dataset="",
                     batch_size=probe.batch, iterations=iterations, chunk_iterations=1,
                     dtype="float32", timing_only=True,
                     layers=tuple(dataclasses.replace(i, input_activity=probe.activity(i.name))
                                  for i in probe.layer_infos()))
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
    stay digital. For accuracy under wear.
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
            xbar = program(weight_to_matrix(mod.weight), hw, stuck.get(name), seed, calib=flat)
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

    for name, mod in select_layers(model, frozen=True)[0]:
        if isinstance(mod, nn.Conv2d) and isinstance(mod.padding, str):
            raise TraceError(f"layer {name}: padding={mod.padding!r}: give explicit padding")
        handles.append(mod.register_forward_hook(hook(name, mod)))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()
