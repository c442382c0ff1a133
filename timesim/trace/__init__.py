"""Traces: format v1 (format), streaming reader (reader), writer (writer), synthetic streams."""

from __future__ import annotations

from pathlib import Path

from ..errors import TraceError
from .format import LayerInfo, TraceMeta
from .reader import Chunk, TraceDir
from .source import parse_synth
from .synth import SynthTrace
from .writer import TraceWriter


def open_trace(source):
    """A trace directory, a ``synth:...`` string, or an already-open trace."""
    if hasattr(source, "meta") and hasattr(source, "chunks"):
        return source
    if isinstance(source, str) and source.startswith("synth:"):
        return parse_synth(source)
    if isinstance(source, (str, Path)):
        return TraceDir(source)
    raise TraceError(f"{source!r}: expected a trace directory or 'synth:MODEL?...'")


__all__ = ["Chunk", "LayerInfo", "SynthTrace", "TraceDir", "TraceMeta", "TraceWriter",
           "open_trace", "parse_synth"]
