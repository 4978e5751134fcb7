"""The one logging setup, and progress reporting for long work (done, rate, ETA)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once (idempotent); jobs call it from ``main``."""
    root = logging.getLogger()
    if not any(getattr(h, "_mathray", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._mathray = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 1000 else f"{value:,.4f}"


@dataclass
class Progress:
    """Counts units of work (and any named quantities) and logs done/total, rates and ETA.

    ``update(units, **quantities)`` adds to the counters; a line is logged at most every
    ``interval_s`` seconds, and once more by ``finish()``.
    """

    name: str
    total: int
    unit: str = "items"
    interval_s: float = 10.0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("mathray.progress"))
    done: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    _start: float = field(default_factory=time.monotonic)
    _last_log: float = 0.0
    _last_logged_done: int = -1

    def update(self, units: int = 1, **quantities: float) -> None:
        self.done += units
        for key, value in quantities.items():
            self.counters[key] = self.counters.get(key, 0) + value
        now = time.monotonic()
        if now - self._last_log >= self.interval_s:
            self._last_log = now
            self._last_logged_done = self.done
            self.logger.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        parts = [f"{self.name}: {self.done}/{self.total} {self.unit}"]
        parts += [f"{key} {_number(value)} ({value / elapsed:,.1f}/s)" for key, value in self.counters.items()]
        parts.append(f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta) if self.done < self.total else '0s'}")
        return " | ".join(parts)

    def finish(self) -> None:
        """Log the final line (unless the last update already logged this state)."""
        if self._last_logged_done != self.done:
            self.logger.info(self.line())
