"""Live progress of a long step (a kernel build, extracting or copying a
tree): what is being done, how far along against an estimate, elapsed time,
an ETA, warnings so far.

Kbuild prints one line per step (``  CC      drivers/iommu/iommufd/main.o``);
they are counted as they stream past and compared with the count of the
previous build in the same build directory, or, for a cold build, with the
architecture's recorded figure (``cold_build_steps`` in ``arches/``).  The
display is a callback: a live status line on a terminal, a plain line every
``interval`` seconds otherwise (CI logs).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

KBUILD_STEP = re.compile(rb"^ {1,4}[A-Z][A-Z0-9_]*(?: \[M\])? +\S", re.M)
WARNING = re.compile(rb": warning: ")
ANY_LINE = re.compile(rb"^.", re.M)  # tar -v, rsync --itemize-changes: one line per file


def fmt_seconds(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class BuildProgress:
    """Counts kbuild steps and compiler warnings in the output it is fed."""

    def __init__(self, what: str, estimate: int, show: Callable[[str, bool], None], interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, pattern: re.Pattern[bytes] = KBUILD_STEP,
                 unit: str = "steps"):
        self.what = what
        self.pattern = pattern  # what counts as one step of the output
        self.unit = unit
        self.estimate = estimate  # 0: unknown
        self.show = show  # show(line, final)
        self.interval = interval
        self.clock = clock
        self.steps = 0
        self.warnings = 0
        self.started = clock()
        self._last_shown = self.started
        self._partial = b""

    def feed(self, data: bytes) -> None:
        text = self._partial + data
        cut = text.rfind(b"\n") + 1
        whole, self._partial = text[:cut], text[cut:]
        self.steps += len(self.pattern.findall(whole))
        self.warnings += len(WARNING.findall(whole))
        now = self.clock()
        if now - self._last_shown >= self.interval:
            self._last_shown = now
            self.show(self.line(), False)

    def line(self) -> str:
        elapsed = self.clock() - self.started
        parts = [f"{self.what}: {self.steps}"]
        if self.estimate:
            done = min(self.steps / self.estimate, 0.99)
            parts[0] += f"/~{self.estimate} {self.unit} ({done:.0%})"
            if self.steps >= 20 and done > 0:
                parts.append(f"ETA {fmt_seconds(elapsed * (1 - done) / done)}")
        else:
            parts[0] += f" {self.unit}"
        parts.insert(1, f"{fmt_seconds(elapsed)} elapsed")
        if self.warnings:
            parts.append(f"{self.warnings} warning{'s' if self.warnings != 1 else ''}")
        return ", ".join(parts)

    def done(self, quiet: bool = False) -> None:
        """The final line (``quiet``: none, but a live status line is still taken down)."""
        elapsed = self.clock() - self.started
        if quiet:
            self.show(None, True)
            return
        self.show(f"{self.what}: {self.steps} {self.unit} in {fmt_seconds(elapsed)}"
                  + (f", {self.warnings} warning{'s' if self.warnings != 1 else ''}" if self.warnings else ""), True)
