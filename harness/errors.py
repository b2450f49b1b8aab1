"""Errors that end a run with a clear message instead of a traceback.

Exit codes (shared by every subcommand):
  0  every selected test passed
  1  at least one test failed (or regressed)
  2  no verdict could be produced: bad input, build error, boot failure, ...
"""

from __future__ import annotations

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class HarnessError(Exception):
    """A failure the user can act on.  ``hint`` says what to do about it."""

    stage = "harness"
    voids_verdict = False  # the tests' results do not count (the run ends with no verdict, exit 2)

    def __init__(self, message: str, hint: str | None = None, *, log: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.log = log  # path of a log file with the details, if any

    def render(self) -> str:
        lines = [f"error [{self.stage}]: {self.message}"]
        if self.log:
            lines.append(f"  log: {self.log}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class InputError(HarnessError):
    stage = "input"


class SourceError(HarnessError):
    stage = "source"


class PatchError(HarnessError):
    stage = "patches"


class ConfigError(HarnessError):
    stage = "config"


class BuildError(HarnessError):
    stage = "build"


class ImageError(HarnessError):
    stage = "image"


class BootError(HarnessError):
    stage = "boot"


class TargetError(HarnessError):
    stage = "target"


class LabError(HarnessError):
    """The lab refused the run (board locked, quarantined, unknown): no verdict."""

    stage = "lab"


class ToolMissing(HarnessError):
    stage = "host"


class Interrupted(HarnessError):
    stage = "interrupted"
