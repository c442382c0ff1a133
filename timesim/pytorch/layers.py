"""The crossbar layers of a PyTorch model: which modules map (Linear, Conv2d, grouped Conv2d,
MultiheadAttention projections), which are left digital and why, and each weight as the
matrix of DESIGN §6."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import TimesimWarning, TraceError

log = logging.getLogger(__name__)


def _tell(message: str, stacklevel: int) -> None:
    """A warning for the user of the Python API: a Python warning, which a plain script shows
    (pointing at the user's line), and the same as a log record for applications that
    collect timesim's logging (a library's records go nowhere until logging is set up)."""
    warnings.warn(message, TimesimWarning, stacklevel=stacklevel)
    log.warning("%s", message)




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
    from ..trace.writer import to_storage

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
