"""The ``synth:`` sources: ``synth:MODEL[?iterations=N&seed=S&...]`` (the hand-set workloads of
trace/synth.py, or with ``profile`` a network with a bundled fitted profile) and
``synth:fit?model=MODEL.yaml&...`` (a fitted workload, trace/fitted.py)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from ..errors import TraceError
from ..units import parse_integer, parse_number
from .fitted import FittedTrace
from .models import MODELS
from .synth import SynthTrace

PARAMS = {
    "iterations": (int, "training iterations (default: the paper's count for the model)"),
    "seed": (int, "seed of importances and noise (default 0)"),
    "chunk": (int, "iterations generated per chunk (default: 8 to 256, as many as keep the "
                   "largest layer's chunk under 64 MB)"),
    "row_sigma": (float, "lognormal sigma of row importance (default 0.3)"),
    "col_sigma": (float, "lognormal sigma of column importance (default 0.15)"),
    "bias": (float, "persistent mean gradient relative to the noise (default 0.02)"),
    "row": (int, "hammer, hammer-chase: the attacked row (default 0)"),
    "gen": (int, "noise generator: 2 (two values per hash: the noise ~1.4x faster) or 1 (one "
                 "hash per value: the streams behind the numbers in the docs; docs/workloads.md) "
                 "(default 2)"),
    "profile": (str, "per-layer-kind parameters fitted to real training instead of the "
                     "hand-set ones (bundled: digits; docs/fidelity.md)"),
}


def _parse_query(source: str, query: str, params: dict) -> dict:
    """``key=value&...`` -> {key: value cast by ``params``}; one clear line on a bad key or
    value."""
    kwargs: dict = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in params:
            raise TraceError(f"{source}: unknown parameter {key!r}; expected "
                             f"{', '.join(params)}")
        if key in kwargs:           # as a hwconfig's duplicate key: which one was meant?
            raise TraceError(f"{source}: {key}: given twice; give each parameter once")
        cast = params[key][0]
        parse = {int: parse_integer, float: parse_number}.get(cast, cast)
        try:
            kwargs[key] = parse(value)
        except ValueError as exc:
            hint = ("; in a synth: query a '+' means a space: write 1e4, not 1e+4"
                    if " " in value and cast in (int, float) else "")
            raise TraceError(f"{source}: {key}: {exc}{hint}") from None
    return kwargs


def parse_synth(source: str) -> SynthTrace:
    """``synth:MODEL[?iterations=N&seed=S&...]`` -> SynthTrace."""
    body = source[len("synth:"):]
    model, _, query = body.partition("?")
    if model == "fit":
        return _parse_fit(source, query)
    kwargs = _parse_query(source, query, PARAMS)
    if query and not kwargs:
        raise TraceError(f"{source}: cannot parse parameters {query!r}; "
                         f"expected synth:MODEL?iterations=N&seed=S")
    if "profile" in kwargs:
        other = set(kwargs) - {"profile", "iterations", "seed", "chunk"}
        if other:
            raise TraceError(f"{source}: {', '.join(sorted(other))}: not with profile (its "
                             f"parameters come from the profile)")
        if model not in MODELS or model.startswith("hammer"):
            raise TraceError(f"{source}: profile: for the networks "
                             f"{', '.join(m for m in MODELS if not m.startswith('hammer'))}")
        return FittedTrace(network=model, **kwargs)
    return SynthTrace(model, **kwargs)


FIT_PARAMS = {
    "model": (str, "the fitted model (YAML written by 'timesim trace fit')"),
    "iterations": (int, "training iterations (default: the recorded trace's)"),
    "seed": (int, "seed of the drifting fields and the noise (default 0)"),
    "chunk": (int, "iterations generated per chunk (default: 8 to 256)"),
    "loop": (str, "on: the closed loop, the chip's writes fed back (docs/fidelity.md)"),
}


def _parse_fit(source: str, query: str):
    """``synth:fit?model=MODEL.yaml[&iterations=N&seed=S&chunk=C]``."""
    kwargs = _parse_query(source, query, FIT_PARAMS)
    if "model" not in kwargs:
        raise TraceError(f"{source}: model: required (synth:fit?model=MODEL.yaml&iterations=N)")
    return FittedTrace(**kwargs)
