"""Progress lines for long loops: what, done/total, rate, ETA; at least every 30 s.

Member training, soft-target inference, student training and evaluation all report
through :class:`Progress`, so a person watching ``mtkd run`` sees every long piece of work
move (worker processes' lines reach the console through Ray's log forwarding). The first
line comes early (after ``first_after`` seconds, 10 by default) so a run that is much
slower than expected says so within its first minute, with its ETA.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("mtkd.progress")

EVERY_SECONDS = 30.0
"""The longest gap between two progress lines of one loop (if it keeps making progress)."""
FIRST_AFTER_SECONDS = 10.0


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``, ``4000`` -> ``1h06m40s``."""
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Logs ``[what] done/total (pct) | rate unit/s | eta`` when due.

    ``update(done)`` is cheap; it logs when ``every`` seconds passed since the last line
    (``first_after`` before the first one), or when ``done`` reaches ``total``. The rate is
    over the whole run so far (excluding paused time, see :meth:`pause`), so the ETA is
    steady. ``extra`` adds loop-specific fields (loss, learning rate) to the line.
    """

    def __init__(self, what: str, total: int, unit: str = "ex", *,
                 every: float = EVERY_SECONDS, first_after: float = FIRST_AFTER_SECONDS,
                 logger: logging.Logger | None = None,
                 clock: Callable[[], float] | None = None, start_done: int = 0) -> None:
        self.what, self.total, self.unit = what, max(int(total), 0), unit
        self.every, self.first_after = every, first_after
        self.log = logger or log
        self.clock = clock or time.monotonic
        self.started = self.clock()
        self.start_done = start_done
        self.done = start_done
        self.paused = 0.0
        self.last_line: float | None = None
        self.lines = 0

    def due(self) -> bool:
        now = self.clock()
        if self.last_line is None:
            return now - self.started >= self.first_after
        return now - self.last_line >= self.every

    def recent(self, seconds: float) -> bool:
        """Whether a line was logged less than ``seconds`` ago."""
        return self.last_line is not None and self.clock() - self.last_line < seconds

    def rate(self) -> float:
        """Units per second since the start (paused time excluded)."""
        elapsed = self.clock() - self.started - self.paused
        return (self.done - self.start_done) / max(elapsed, 1e-9)

    def eta_seconds(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None

    def update(self, done: int, extra: str | Callable[[], str] = "") -> bool:
        """Record progress; returns whether a line was logged."""
        self.done = done
        if not (self.due() or (done >= self.total > 0 and self.lines > 0)):
            return False
        self.emit(extra() if callable(extra) else extra)
        return True

    def emit(self, extra: str = "") -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = self.eta_seconds()
        parts = [f"[{self.what}] {self.done}/{self.total} {self.unit_label()} ({pct:3.0f}%)"]
        if extra:
            parts.append(extra)
        parts.append(f"{self.rate():.1f} {self.unit}/s")
        parts.append(f"eta {duration(eta)}" if eta is not None else "eta ?")
        self.log.info(" | ".join(parts))
        self.last_line = self.clock()
        self.lines += 1

    def unit_label(self) -> str:
        return {"ex": "examples", "step": "steps"}.get(self.unit, self.unit)

    def pause(self, seconds: float) -> None:
        """Exclude ``seconds`` (e.g. a dev evaluation inside training) from the rate."""
        self.paused += seconds
