"""PyTorch integration (the ``torch`` extra; the core package never imports this package).

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
import itertools
import logging
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as exc:                    # one clear line naming the extra
    raise ModuleNotFoundError(
        "timesim.pytorch needs PyTorch: pip install 'timesim[torch]' "
        "(torch==2.14.1, torchvision==0.29.1)",
        name="torch") from exc

from ..config import HwConfig, load_hwconfig
from ..errors import TraceError
from ..simulate import Simulation
from ..trace.format import LayerInfo, TraceMeta
from ..trace.writer import TraceWriter, check_chunk_iterations
from .layers import (
    WEIGHTS,
    _fill_blocks,
    _tell,
    crossbar_layers,
    load_weights,
    matrix_to_weight,
    save_weights,
    select_layers,
    weight_to_matrix,
)
from .probe import _Probe, _say_batch

log = logging.getLogger(__name__)

__all__ = ["TraceRecorder", "SparseUpdate", "timing_manifest", "crossbar_forward",
           "weight_to_matrix", "matrix_to_weight", "select_layers", "crossbar_layers",
           "save_weights", "load_weights", "WEIGHTS"]


def _source() -> str:
    return f"pytorch {torch.__version__}"


# SparseUpdate.step() stamps each weight it applies with (selection, a number no other step
# has); a recorder that sees a weight's stamp change between two of its steps knows that
# iteration went through SparseUpdate, and a stamp left from earlier (an unused or dropped
# SparseUpdate) counts for nothing
UPDATES_MARK = "_timesim_updates"
_STAMPS = itertools.count()


class _Updates:
    """The manifest's ``updates`` of a recording: ``dense`` where the user's optimizer applied
    the recorded weights' gradients, the SparseUpdate selection (``topk``, ``sgs-row``, ...)
    where SparseUpdate did, ``mixed`` once that differs between layers or iterations."""

    def __init__(self, layers):
        self.layers = layers
        self.seen = None                # each layer's stamp at the last look
        self.value = ""

    def look(self, final: bool = False) -> str:
        """At each ``rec.step()`` (the iteration before it is finished: SparseUpdate steps
        after the recorder) and at the end (``final``: the last iteration, counted only
        where SparseUpdate stamped it; a dense last step leaves no trace)."""
        now = [getattr(layer.weight, UPDATES_MARK, None) for layer in self.layers]
        if self.seen is not None:
            how = {s[0] if s is not None and s != old else "dense"
                   for s, old in zip(now, self.seen)}
            if not (final and how == {"dense"}):
                one = how.pop() if len(how) == 1 else "mixed"
                self.value = one if self.value in ("", one) else "mixed"
        self.seen = now
        return self.value or ("dense" if final else "")     # "": not known yet


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
        from ..trace.format import STORAGE

        if dtype not in STORAGE:
            raise TraceError(f"dtype: must be one of {'|'.join(STORAGE)}, got {dtype!r}")
        check_chunk_iterations(chunk_iterations)     # before the byte budget lowers it
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
        self._updates = _Updates(self.layers)
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
        self.writer.updates = self._updates.look()     # before append: a checkpoint has it
        self.writer.append(grads, filled)
        self.probe.mark()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.probe is not None:
            self.probe.remove()
        if self.writer is None:
            if exc_type is None:
                _tell(f"TraceRecorder: no iteration recorded (rec.step() was never called); "
                      f"nothing was written to {self.path}", stacklevel=2)
            return
        if exc_type is not None:        # chunks already written stay (timesim trace seal)
            self.writer.abandon()
            return
        # the fraction of 1 bits each layer's quantized inputs had over the whole recording
        # (manifest input_activity: activity-dependent read energy, docs/architecture.md)
        self.writer.layers = tuple(
            dataclasses.replace(info, input_activity=self.probe.activity(info.name))
            for info in self.writer.layers)
        self.writer.skipped = tuple(self.skipped)
        self.writer.updates = self._updates.look(final=True)
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
        selection = self.hw.controller.selection
        for _, p in self.params:        # a TraceRecorder of these weights: how they moved
            setattr(p, UPDATES_MARK, (selection, next(_STAMPS)))
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

    from ..analog import program

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
