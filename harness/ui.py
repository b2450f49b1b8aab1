"""Progress output (stderr) and the final summary (stdout)."""

from __future__ import annotations

import sys
from functools import cached_property
from typing import TYPE_CHECKING

from harness.reports.terminal import COLORS

if TYPE_CHECKING:
    from rich.console import Console

    from harness.reports.results import TestRecord


def escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


class Ui:
    """The consoles are made (and rich imported) on first use: a quiet run
    prints nothing before its VM starts."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._status = None  # the live progress line, on a terminal

    @staticmethod
    def _console(stderr: bool) -> Console:
        from rich.console import Console

        # Not a terminal (CI logs, pipes): wide enough that test names are never folded.
        width = None if sys.stdout.isatty() else 160
        # no emoji codes: kernel text and test names are printed as they are
        return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width, emoji=False)

    @cached_property
    def err(self) -> Console:
        return self._console(True)

    @cached_property
    def out(self) -> Console:
        return self._console(False)

    def stage(self, name: str) -> None:
        if not self.quiet:
            self.err.print(f"[bold cyan]==>[/] [bold]{name}[/]")

    def stage_done(self, name: str, seconds: float) -> None:
        if not self.quiet:
            self.err.print(f"    [dim]{name} took {seconds:.1f} s[/]")

    def info(self, text: str) -> None:
        if not self.quiet:
            self.err.print(f"    {escape(text)}")

    def progress(self, line: str | None, final: bool = False) -> None:
        """A long step's progress: a live status line on a terminal (replaced
        by the final line), plain lines otherwise; ``None`` with ``final``
        only takes the status line down."""
        if line is None:
            if self._status is not None:
                self._status.stop()
                self._status = None
            return
        if self.quiet:
            return
        if self.err.is_terminal:
            if self._status is None and not final:
                self._status = self.err.status(escape(line))
                self._status.start()
            elif self._status is not None:
                self._status.update(escape(line))
            if final:
                if self._status is not None:
                    self._status.stop()
                    self._status = None
                self.err.print(f"    {escape(line)}")
            return
        self.err.print(f"    {escape(line)}")

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(text)}")

    def error(self, text: str) -> None:
        self.err.print(f"[bold red]{escape(text)}[/]")

    def test_result(self, rec: TestRecord, index: int, total: int) -> None:
        if self.quiet:
            return
        width = len(str(total))
        color = COLORS[rec.status]
        extra = f"  [dim]{escape(rec.reason)}[/]" if rec.reason else ""
        self.err.print(f"    [{index:>{width}}/{total}] [{color}]{rec.status:<7}[/] {escape(rec.name)} "
                       f"[dim]({rec.duration_s:.1f}s)[/]{extra}")

