"""Symbolised call traces for kernel reports: file:line for every frame,
from the kernel tree's own ``scripts/decode_stacktrace.sh`` and ``vmlinux``."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from harness import proc
from harness.errors import HarnessError
from harness.parse.splat_lines import tree_relative
from harness.parse.splats import Splat

# a source location addr2line printed: an absolute path (the build's compile
# directory joined with the path the compiler was given), then ":LINE"
_ABS_LOC = re.compile(r"(?<![\w./-])(/[\w.+/-]+\.(?:c|h|S|rs))(?=:\d+)")


def decode(splat: Splat, tree: Path, vmlinux: Path, log: Path, timeout: float = 120.0) -> str | None:
    """The report with file:line for every frame, from the kernel tree's own
    ``scripts/decode_stacktrace.sh`` (so the decoding matches that tree).
    None when the script, ``vmlinux`` or bash is missing, or the script fails
    or overruns ``timeout`` (it is killed with the addr2line and nm it
    started); the command and its stderr are appended to ``log``.  Never
    raises: decoding is a bonus on a report already made."""
    script = Path(tree) / "scripts" / "decode_stacktrace.sh"
    bash = shutil.which("bash")
    if bash is None or not script.is_file() or not Path(vmlinux).is_file():
        return None
    try:
        res = proc.run([bash, script, vmlinux, tree], cwd=tree, timeout=timeout, log=log,
                       stdin_text=splat.text, split_stderr=True)
    except (OSError, HarnessError):
        return None
    _note(log, f"timed out after {timeout:.0f} s\n" if res.timed_out else f"exit status {res.returncode}\n")
    if res.timed_out or res.returncode != 0 or not res.output.strip():
        return None
    return relative_locations(res.output, tree)


def relative_locations(text: str, tree: Path) -> str:
    """``(/work/trees/x/build/x86_64+lockdep/../../src/drivers/a.c:12)`` as
    ``(drivers/a.c:12)``: files named as the tree names them, whichever
    checkout compiled the object (ccache shares them)."""
    top = str(Path(tree).resolve()) + "/"

    def rel(m: re.Match) -> str:
        path = os.path.normpath(m.group(1))
        return path[len(top):] if path.startswith(top) else tree_relative(path)

    return _ABS_LOC.sub(rel, text)


def _note(log: Path, text: str) -> None:
    try:
        with open(log, "a") as f:
            f.write(text)
    except OSError:
        pass
