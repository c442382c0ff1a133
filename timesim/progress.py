"""Progress of a long command, for the CLI only (the library never prints).

On a terminal a tqdm bar; without one (nohup, batch jobs, CI) a line on stderr every
``every`` seconds, so a log shows a long run advancing. Either way, once the first chunks are
measured, a run projected to take longer than ``announce_s`` says so with its projected wall
time, before the user has waited for it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

EVERY_S = 30.0           # default interval of the progress lines without a terminal
ANNOUNCE_S = 180.0       # project the wall time of runs longer than this
MEASURE_S = 1.0          # measure the rate over at least this long after the first update


def duration(s: float) -> str:
    """``4000`` -> ``'1.1 h'``: seconds in the unit that keeps the number readable."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if s >= 2 * size if unit in ("years", "days") else s >= size:
            return f"{s / size:.3g} {unit}"
    return f"{s:.3g} s"


class Progress:
    """``update(done)`` after each step of ``total``; ``close()`` at the end.

    The projection leaves out the first update's time (JIT compilation, opening the trace):
    the rate is measured from the first update on, over at least ``MEASURE_S``."""

    def __init__(self, total: int, label: str, unit: str = "it", every: float = EVERY_S,
                 tty: bool | None = None, announce_s: float = ANNOUNCE_S,
                 clock: Callable[[], float] = time.monotonic, stream=None):
        self.total, self.label, self.unit, self.every = total, label, unit, every
        self.announce_s, self.clock = announce_s, clock
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = clock()
        self.first: tuple[float, int] | None = None
        self.projected: float | None = None
        self.last_line = self.t0
        self.bar = None
        tty = self.stream.isatty() if tty is None else tty
        if tty:
            try:
                from tqdm import tqdm
            except ImportError:
                tty = False
            else:
                self.bar = tqdm(total=total, unit=unit, desc=label, leave=False,
                                dynamic_ncols=True, file=self.stream)
        self.lines = not tty

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(f"timesim: {text}", file=self.stream)
        else:
            print(f"timesim: {text}", file=self.stream, flush=True)

    def update(self, done: int) -> None:
        now = self.clock()
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        if self.first is None:
            self.first = (now, done)
        elif self.projected is None and now - self.first[0] >= MEASURE_S:
            rate = (done - self.first[1]) / max(now - self.first[0], 1e-9)
            if rate > 0:
                self.projected = (now - self.t0) + (self.total - done) / rate
                if self.projected > self.announce_s:
                    self._say(f"{self.label}: projected wall time {duration(self.projected)} "
                              f"for {self.total:,} {self.unit} ({rate:.3g} {self.unit}/s "
                              f"measured after the first {self.first[1]:,}); Ctrl-C stops, "
                              f"--checkpoint-every and --resume continue")
        if self.lines and done < self.total and now - self.last_line >= self.every:
            self.last_line = now
            elapsed = now - self.t0
            left = ""
            if self.first is not None and done > self.first[1]:
                rate = (done - self.first[1]) / max(now - self.first[0], 1e-9)
                left = f", ~{duration((self.total - done) / rate)} left"
            self._say(f"{self.label}: {done:,}/{self.total:,} {self.unit} "
                      f"({100 * done / max(self.total, 1):.3g}%), {duration(elapsed)} "
                      f"elapsed{left}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
