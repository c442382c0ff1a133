"""Quantities in hwconfigs: strings with units (``50 ns``) or unit-suffixed keys (``pulse_ns``);
and the one parser of plain numbers for hwconfigs, ``synth:`` parameters and the command line.

Inside the code every quantity is an SI float; this module is the only place that knows prefixes.

Numbers (``parse_integer``, ``parse_number``): decimal digits with single underscores between
them (``64_000``, as Python and YAML 1.1 write them), an optional fraction and an optional
exponent (``1e4``, ``5E6``, ``2.5e3``, ``1e+4``). An integer parameter takes any of these whose
value is a whole number (``1e4`` = 10000); ``1.5e0`` is an error. No hex, octal, ``inf`` or
``nan``.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

# kind -> (SI unit spelled in canonical keys, {unit spelling in strings: factor to SI})
_PREFIX = {"f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "µ": 1e-6, "m": 1e-3, "": 1.0,
           "k": 1e3, "M": 1e6, "G": 1e9}


def _units(base: str, prefixes: str, *aliases: str) -> dict[str, float]:
    table = {}
    for p in prefixes.split(","):
        for name in (base, *aliases):
            table[p + name] = _PREFIX[p]
    return table


KINDS: dict[str, tuple[str, dict[str, float]]] = {
    "time": ("s", _units("s", "f,p,n,u,µ,m,")),
    "energy": ("j", _units("J", "f,p,n,u,µ,m,")),
    "power": ("w", _units("W", "n,u,µ,m,")),
    "frequency": ("hz", _units("Hz", ",k,M,G")),
    "resistance": ("ohm", _units("Ω", ",k,M,G", "ohm", "Ohm")),
    "voltage": ("v", _units("V", "m,")),
    "area": ("m2", {"m2": 1.0, "mm2": 1e-6, "um2": 1e-12, "µm2": 1e-12}),
}

# Key suffixes are lower case, so only unambiguous prefixes are accepted there ("_mohm" could be
# milli or mega): a megaohm value is written as a string ("1 MOhm") or in plain ohms.
SUFFIXES: dict[str, tuple[str, float]] = {
    "s": ("time", 1.0), "ms": ("time", 1e-3), "us": ("time", 1e-6), "ns": ("time", 1e-9),
    "ps": ("time", 1e-12),
    "j": ("energy", 1.0), "mj": ("energy", 1e-3), "uj": ("energy", 1e-6), "nj": ("energy", 1e-9),
    "pj": ("energy", 1e-12), "fj": ("energy", 1e-15),
    "w": ("power", 1.0), "mw": ("power", 1e-3), "uw": ("power", 1e-6), "nw": ("power", 1e-9),
    "hz": ("frequency", 1.0), "khz": ("frequency", 1e3), "mhz": ("frequency", 1e6),
    "ghz": ("frequency", 1e9),
    "ohm": ("resistance", 1.0), "kohm": ("resistance", 1e3),
    "v": ("voltage", 1.0), "mv": ("voltage", 1e-3),
    "m2": ("area", 1.0), "mm2": ("area", 1e-6), "um2": ("area", 1e-12),
}

_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-zµΩ]*2?)\s*$")


def parse_quantity(value: object, kind: str) -> float:
    """Return ``value`` in SI units; a bare number is taken as already SI. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected a {kind} such as {example(kind)}, got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        m = _QUANTITY.match(value)
        if not m:
            raise ValueError(f"expected a {kind} such as {example(kind)}, got {value!r}")
        number, unit = float(m.group(1)), m.group(2)
        table = KINDS[kind][1]
        if unit == "":
            factor = 1.0
        elif unit in table:
            factor = table[unit]
        else:
            raise ValueError(f"unknown {kind} unit {unit!r} in {value!r}; use one of "
                             f"{', '.join(sorted(table))}")
        out = number * factor
    else:
        raise ValueError(f"expected a {kind} such as {example(kind)}, got {value!r}")
    if not math.isfinite(out):
        raise ValueError(f"expected a finite {kind}, got {value!r}")
    return out


def example(kind: str) -> str:
    return {"time": "'50 ns'", "energy": "'8 pJ'", "power": "'1.26 mW'", "frequency": "'1 GHz'",
            "resistance": "'100 kOhm'", "voltage": "'0.5 V'",
            "area": "'0.0012 mm2'"}[kind]


def split_suffix(key: str) -> tuple[str, str | None]:
    """``'pulse_ns'`` -> ``('pulse', 'ns')``; without a known unit suffix -> ``(key, None)``."""
    base, sep, suffix = key.rpartition("_")
    if sep and base and suffix in SUFFIXES:
        return base, suffix
    return key, None


_NUMBER = re.compile(r"^[-+]?(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)"
                     r"(?:[eE][-+]?\d+)?$")
_MAX_DIGITS = 30            # integers above 10^30 are no count, cycle or seed of this simulator


def parse_number(value: object) -> float:
    """A finite real number from an int, float or string (module docstring). Raises
    ValueError with what was expected."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str) and _NUMBER.match(value.strip()):
        x = float(value.strip().replace("_", ""))
    else:
        raise ValueError(f"expected a number such as 0.5, 1e-3 or 64_000, got {value!r}")
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number, got {value!r}")
    return x


def parse_integer(value: object) -> int:
    """A whole number from an int, an integral float or a string such as ``64_000`` or ``1e4``
    (module docstring). Raises ValueError saying why."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 10.0 ** _MAX_DIGITS:
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if not (isinstance(value, str) and _NUMBER.match(value.strip())):
        raise ValueError(f"expected an integer such as 64000, 64_000 or 1e4, got {value!r}")
    d = Decimal(value.strip().replace("_", ""))      # exact: 1e22 + 1 stays odd
    if d.adjusted() >= _MAX_DIGITS:
        raise ValueError(f"too large, got {value!r}")
    if d != d.to_integral_value():
        raise ValueError(f"expected an integer, got {value!r} (= {float(d):g}, not a whole "
                         f"number)")
    return int(d)


def format_quantity(x: float, kind: str) -> str:
    """``1e-2, "time"`` -> ``'10 ms'``: an SI value in the largest prefix that keeps it >= 1."""
    base = {"time": "s", "energy": "J", "power": "W", "frequency": "Hz", "resistance": "ohm",
            "voltage": "V"}[kind]
    if x == 0:
        return f"0 {base}"
    for p in ("G", "M", "k", "", "m", "u", "n", "p", "f"):
        if abs(x) >= _PREFIX[p] * (1 - 1e-12) or p == "f":
            return f"{x / _PREFIX[p]:.3g} {p}{base}"
    raise AssertionError(x)
