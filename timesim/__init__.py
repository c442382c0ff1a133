"""timesim: cycle-level simulator of TIME with the SGS-ARS lifetime framework."""

import logging

from .config import HwConfig, load_hwconfig
from .errors import ConfigError, SimulationError, TimesimError, TraceError

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def open_trace(source):
    """Open a trace directory or a ``synth:MODEL?iterations=N&seed=S`` stream."""
    from .trace import open_trace as _open

    return _open(source)


def simulate(hw, trace, out=None, progress=None):
    """Run the policy path on ``trace`` with chip ``hw``; return the report.json content."""
    from .simulate import simulate as _simulate

    return _simulate(hw, trace, out=out, progress=progress)


__all__ = ["HwConfig", "load_hwconfig", "open_trace", "simulate", "TimesimError", "ConfigError",
           "TraceError", "SimulationError", "__version__"]
