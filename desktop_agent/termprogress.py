"""Human-readable figures and a one-line terminal progress display."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from desktop_agent.engine.progress import Progress, RateEstimator
from desktop_agent.termtext import clean, columns, fit, fit_tail, pad

__all__ = ["human_bytes", "human_duration", "ProgressLine"]


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3700`` -> ``"1:01:40"``."""
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class ProgressLine:
    """Redraws one status line on a terminal, at most every ``interval`` s."""

    def __init__(self, verb: str, stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.verb = verb
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0
        self._shown = False
        self._rate = RateEstimator()
        self.enabled = self.stream.isatty()

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not p.final and now - self._last < self.interval:
            return
        self._last = now
        pct = 100.0 * p.bytes_done / p.bytes_total if p.bytes_total else 0.0
        # the same moving average as the agent's backup:progress
        rate = self._rate.update(p.elapsed, p.bytes_done)
        left = self._rate.eta(p.bytes_total - p.bytes_done) if p.scan_finished else 0
        eta = f"  ETA {human_duration(left)}" if left else ""
        text = (
            f"[{human_duration(p.elapsed)}] {pct:5.1f}%  {human_bytes(p.bytes_done)} / "
            f"{human_bytes(p.bytes_total)}  {human_bytes(rate)}/s{eta}  "
            f"{p.files_done}/{p.files_total} files"
        )
        # one column short of the terminal: a line that wraps spoils the redraw
        width = shutil.get_terminal_size((100, 20)).columns - 1
        room = width - columns(text) - 2
        if p.current_file and not p.final and room > 8:
            # the name comes from the disk or the repository: it may hold
            # escape sequences, a newline, or characters two columns wide
            text += "  " + fit_tail(clean(p.current_file), room)
        self.stream.write("\r" + pad(fit(text, width), width))
        self._shown = True
        if p.final:
            self.done()
        self.stream.flush()

    def done(self) -> None:
        """Move past the status line."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
