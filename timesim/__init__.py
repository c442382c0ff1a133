"""timesim: cycle-level simulator of TIME with the SGS-ARS lifetime framework.

Public API (DESIGN §8): ``load_hwconfig``, ``open_trace``, ``simulate``.
"""

import logging

from ._version import __version__
from .config import HwConfig, load_hwconfig  # noqa: E402
from .errors import ConfigError, SimulationError, TimesimError, TraceError  # noqa: E402

# Bound after the submodule import on purpose: ``timesim.simulate`` is the function, not the
# module timesim/simulate.py (whose import would otherwise set the attribute to the module).
from .simulate import simulate  # noqa: E402, I001
from .trace import open_trace  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name):
    # ``timesim.pytorch``, ``timesim.accuracy`` and ``timesim.analog`` load on first use:
    # importing timesim must not import torch
    if name in ("pytorch", "accuracy", "analog"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["HwConfig", "load_hwconfig", "open_trace", "simulate", "TimesimError", "ConfigError",
           "TraceError", "SimulationError", "__version__"]
