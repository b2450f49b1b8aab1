"""Following a target's kernel log as it grows in a local file (the serial
console of a VM, /dev/kmsg of a board copied over SSH): where the kernel
started to die, boot markers, and the kernel reports that have not been
claimed by a test yet.  The reports and the panic come from one detector,
:class:`harness.parse.splats.SplatScanner`."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.parse.splats import Splat, SplatScanner, blocked_tasks


@dataclass
class ConsoleWatcher:
    """Follows the growing console.log: panics, boot markers, kernel splats."""

    path: Path
    watch: tuple[str, ...] = ()  # marker lines to note the (monotonic) time of
    offset: int = 0
    text: str = ""
    markers: dict[str, float] = field(default_factory=dict)
    scanner: SplatScanner = field(default_factory=SplatScanner)
    pending: list[Splat] = field(default_factory=list)  # found, not yet claimed by a test
    # parallel test lanes read the log from their own threads: one reader at a time,
    # or two reads of the same bytes would each be appended (and scanned) once
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def panic_at(self) -> int | None:
        """Where in ``text`` the kernel started to die, or None."""
        return self.scanner.panic_at

    def find(self, pattern: re.Pattern, since: int = 0) -> int | None:
        """Offset of the first match of ``pattern`` at or after ``since``."""
        with self.lock:
            self.poll()
            m = pattern.search(self.text, since)
            return m.start() if m else None

    def claim(self, since: int, until: int | None = None, final: bool = False) -> list[Splat]:
        """The splats that started in [since, until) and were not claimed yet."""
        with self.lock:
            self.poll()
            self.pending += self.scanner.flush() if final else self.scanner.settle()
            end = len(self.text) if until is None else until
            mine = [s for s in self.pending if since <= s.start < end]
            self.pending = [s for s in self.pending if s not in mine]
            return mine

    def finish(self) -> None:
        """The log is complete (its writer is gone): the last line counts
        even without a newline, and every report in it is found."""
        with self.lock:
            self.poll()
            self.pending += self.scanner.flush()

    def poll(self) -> str:
        with self.lock:
            return self._poll()

    def _poll(self) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return ""
        if not data:
            return ""
        self.offset += len(data)
        new = data.decode(errors="replace")
        before = len(self.text)
        self.text += new
        for marker in self.watch:
            # the writer (QEMU's serial chardev, a copy over SSH) may have
            # been read in the middle of the marker: look across the seam
            if marker not in self.markers and marker in self.text[max(0, before - len(marker) + 1):]:
                self.markers[marker] = time.monotonic()
        self.pending += self.scanner.feed(new)
        return new

    def excerpt(self, lines: int = 60) -> str:
        self.poll()
        if self.panic_at is not None:
            before = self.text[: self.panic_at].splitlines()[-lines // 2:]
            after = self.text[self.panic_at:].splitlines()[: lines]
            return "\n".join(before + after)
        return "\n".join(self.text.splitlines()[-lines:])


class ConsoleLog:
    """The kernel-log half of a Target, for targets whose kernel log is a
    growing local file followed by a ``ConsoleWatcher`` in ``self.console``."""

    console: ConsoleWatcher

    def console_excerpt(self, lines: int = 60) -> str:
        return self.console.excerpt(lines)

    def kernel_log_find(self, pattern, since=0):
        return self.console.find(pattern, since)

    def kernel_splats(self, since, until=None, final=False):
        return self.console.claim(since, until, final)

    def kernel_blocked_tasks(self, since, until=None):
        self.console.poll()
        return blocked_tasks(self.console.text[since:until], since)
