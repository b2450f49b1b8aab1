"""Running host commands: bounded in time, stdin closed, output to a log file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from harness.errors import HarnessError, ToolMissing

# Debian package that provides each host tool we call.
PACKAGE_FOR_TOOL = {
    "make": "make",
    "gcc": "gcc",
    "patch": "patch",
    "rsync": "rsync",
    "tar": "tar",
    "git": "git",
    "flex": "flex",
    "bison": "bison",
    "bc": "bc",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "ccache": "ccache",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
}


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pkg = PACKAGE_FOR_TOOL.get(name, name)
        raise ToolMissing(
            f"'{name}' is not installed",
            f"install it with: apt-get install {pkg}  (or run 'make setup')",
        )
    return path


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    output: str  # combined stdout+stderr (also in ``log`` when one was given)
    timed_out: bool
    log: Path | None


def run(
    argv: Sequence[str | os.PathLike],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    log: Path | None = None,
    error: type[HarnessError] | None = None,
    what: str | None = None,
    keep_output: bool = True,
) -> Completed:
    """Run ``argv`` with stdin closed and a wall-clock ``timeout``.

    Output goes to ``log`` (appended) when given, and is also returned.  With
    ``error`` set, a non-zero exit or a timeout raises that error class naming
    ``what`` and the log path.
    """
    argv = [str(a) for a in argv]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    logf = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        logf = open(log, "ab")
        logf.write(("$ " + " ".join(argv) + "\n").encode())
        logf.flush()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError:
        if logf:
            logf.close()
        require_tool(argv[0])
        raise
    chunks: list[bytes] = []
    timed_out = False
    try:
        _communicate(proc, timeout, logf, chunks if keep_output else None)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        proc.wait()
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        if logf:
            logf.close()
    text = b"".join(chunks).decode(errors="replace")
    result = Completed(tuple(argv), proc.returncode, text, timed_out, log)
    if error is not None and (timed_out or proc.returncode != 0):
        name = what or Path(argv[0]).name
        why = f"timed out after {timeout:.0f} s" if timed_out else f"exited with {proc.returncode}"
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise error(f"{name} {why}" + (f"\n{tail}" if tail else ""), log=str(log) if log else None)
    return result


def _communicate(proc, timeout, logf, chunks) -> None:
    """Copy the merged output to the log (and ``chunks``) until EOF, then
    wait for the exit; raises TimeoutExpired when ``timeout`` runs out."""
    import selectors
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        events = sel.select(timeout=left if left is None else min(left, 1.0))
        if not events:
            continue
        data = os.read(proc.stdout.fileno(), 65536)
        if not data:
            break
        if logf:
            logf.write(data)
        if chunks is not None:
            chunks.append(data)
    sel.close()
    left = None if deadline is None else max(0.1, deadline - time.monotonic())
    proc.wait(timeout=left)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
