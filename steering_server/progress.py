"""Progress with an ETA for long commands (organism build, realign, direction computation): a tqdm bar on a
terminal, and otherwise (a log file, CI) a line at most every `every_s` seconds and at the end, so that long work
is never silent and never floods a log with carriage returns."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO

from steering_client.durations import format_duration

__all__ = ["Progress", "format_duration"]


class Progress:
    """`with Progress(35, "realign") as bar: ... bar.update(1, loss=0.3)`: done/total, elapsed and the time left
    at the pace so far."""

    def __init__(self, total: int, desc: str, unit: str = "step", file: TextIO | None = None,
                 every_s: float = 10.0, tty: bool | None = None) -> None:
        self.total, self.desc, self.unit = max(1, total), desc, unit
        self.file = file or sys.stderr
        self.done = 0
        self.every_s = every_s
        self._t0 = time.perf_counter()
        self._last = float("-inf")
        self._postfix: dict[str, Any] = {}
        is_tty = self.file.isatty() if tty is None else tty
        self._bar: Any = None
        if is_tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.file, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.done = min(self.total, self.done + n)
        self._postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(self._postfix, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done == self.total:
            self._last = now
            print(self.line(now), file=self.file, flush=True)

    def update_to(self, done: int, **postfix: Any) -> None:
        """Set the count (callers that report totals so far rather than increments)."""
        if done > self.done:
            self.update(done - self.done, **postfix)

    def write(self, text: str) -> None:
        """A log line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = (now if now is not None else time.perf_counter()) - self._t0
        left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        eta = format_duration(left) if self.done else "?"
        extra = "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in self._postfix.items())
        return (f"[{self.desc}] {self.done}/{self.total} {self.unit}s ({100 * self.done / self.total:.0f}%), "
                f"{format_duration(elapsed)} elapsed, ETA {eta}{extra}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
