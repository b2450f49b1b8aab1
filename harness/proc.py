"""Running host commands: bounded in time, stdin closed, output to a log file."""

from __future__ import annotations

import ctypes
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
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "kexec": "kexec-tools",
    "mkimage": "u-boot-tools",
    "mkenvimage": "u-boot-tools",
}  # per-architecture tools (QEMU, cross compilers): see arches/

# Tools only a lab's U-Boot boards (boot = "oneshot") and the QEMU lab board
# (qemu-board) use: 'make setup' leaves their packages out, 'make
# setup-test' installs them (the Makefile's APT_TEST_PACKAGES).
NOT_IN_SETUP = frozenset({"sfdisk", "mkfs.vfat", "mcopy", "mmd", "mkimage", "mkenvimage"})


def package_for(tool: str) -> str:
    """The Debian package that provides ``tool``."""
    from harness import arches

    return PACKAGE_FOR_TOOL.get(tool) or arches.package_for_tool(tool) or tool


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        setup = "make setup-test" if name in NOT_IN_SETUP else "make setup"
        raise ToolMissing(
            f"'{name}' is not installed",
            f"install it with: apt-get install {package_for(name)}  (or run '{setup}')",
        )
    return path


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    output: str  # combined stdout+stderr (also in ``log`` when one was given); stdout with split_stderr
    timed_out: bool
    log: Path | None
    stderr: str = ""  # with split_stderr


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
    stdin_text: str | None = None,
    split_stderr: bool = False,
    on_output=None,
    idle_timeout: float | None = None,
) -> Completed:
    """Run ``argv`` in a process group of its own, with a wall-clock
    ``timeout`` that kills the whole group.

    stdin is closed, or carries ``stdin_text``.  stdout and stderr go to
    ``log`` (appended) when given and are also returned as ``output``; with
    ``split_stderr`` ``output`` is stdout alone and stderr is ``stderr``.
    With ``error`` set, a non-zero exit or a timeout raises that error class
    naming ``what`` and the log path.  ``on_output(data)`` sees every chunk
    of output as it arrives (a progress display).  ``idle_timeout``: the
    group is killed (``timed_out``) also when it prints nothing for that
    long.
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
            stdin=subprocess.DEVNULL if stdin_text is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError:
        if logf:
            logf.close()
        require_tool(argv[0])
        raise
    chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    timed_out = False
    if stdin_text is not None:
        _feed(proc, stdin_text)
    try:
        _communicate(proc, timeout, logf, chunks if keep_output else None, err_chunks, on_output, idle_timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        proc.wait()
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        if logf:
            logf.close()
    text = b"".join(chunks).decode(errors="replace")
    result = Completed(tuple(argv), proc.returncode, text, timed_out, log,
                       b"".join(err_chunks).decode(errors="replace"))
    if error is not None and (timed_out or proc.returncode != 0):
        name = what or Path(argv[0]).name
        why = f"timed out after {timeout:.0f} s" if timed_out else f"exited with {proc.returncode}"
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise error(f"{name} {why}" + (f"\n{tail}" if tail else ""), log=str(log) if log else None)
    return result


def _communicate(proc, timeout, logf, chunks, err_chunks, on_output=None, idle_timeout=None) -> None:
    """Copy the output to the log (and ``chunks``; stderr, when it has a pipe
    of its own, to ``err_chunks``) until EOF, then wait for the exit; raises
    TimeoutExpired when ``timeout`` runs out, or ``idle_timeout`` passes
    without output."""
    import selectors
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    last = time.monotonic()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, chunks)
    if proc.stderr is not None:
        sel.register(proc.stderr, selectors.EVENT_READ, err_chunks)
    while sel.get_map():
        now = time.monotonic()
        left = None if deadline is None else deadline - now
        if left is not None and left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        if idle_timeout is not None:
            if now - last >= idle_timeout:
                raise subprocess.TimeoutExpired(proc.args, idle_timeout)
            left = idle_timeout - (now - last) if left is None else min(left, idle_timeout - (now - last))
        for key, _ in sel.select(timeout=left if left is None else min(left, 1.0)):
            data = os.read(key.fileobj.fileno(), 65536)
            if not data:
                sel.unregister(key.fileobj)
                continue
            last = time.monotonic()
            if logf:
                logf.write(data)
            if key.data is not None:
                key.data.append(data)
            if on_output is not None:
                on_output(data)
    sel.close()
    left = None if deadline is None else max(0.1, deadline - time.monotonic())
    proc.wait(timeout=left)


def run_foreground(argv: Sequence[str | os.PathLike], env: Mapping[str, str] | None = None) -> int:
    """Run a command the user watches (``make bench`` timing ``run``): it
    shares the terminal and the process group, so its output shows as it
    comes and Ctrl-C reaches it (and the builds it started) too."""
    argv = [str(a) for a in argv]
    try:
        return subprocess.run(argv, env={**os.environ, **(env or {})}).returncode
    except FileNotFoundError:
        require_tool(argv[0])
        raise


def spawn(argv: Sequence[str | os.PathLike], log: Path) -> subprocess.Popen:
    """Start a long-running child (an emulator) with stdin closed and its
    output appended to ``log``.  It gets SIGKILL when the harness dies
    (PR_SET_PDEATHSIG), so no orphan outlives a killed run; the caller owns
    its lifetime otherwise."""
    argv = [str(a) for a in argv]
    with open(log, "ab") as out:
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=_pdeathsig)
        except FileNotFoundError:
            require_tool(argv[0])
            raise


def _pdeathsig() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _feed(proc: subprocess.Popen, text: str) -> None:
    """Write ``text`` to the child's stdin from a thread (a child that does
    not read it must not block the harness), then close it."""
    import threading

    def write() -> None:
        try:
            proc.stdin.write(text.encode())
        except (BrokenPipeError, OSError):
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    threading.Thread(target=write, name="stdin", daemon=True).start()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def preload(*modules: str) -> None:
    """Import ``modules`` in a background thread: what a run needs only after
    its target is up (SSH, the report writers) loads while the machine boots
    instead of before it starts.  A module that fails to import here fails
    again, with its own error, where it is used."""
    import importlib
    import threading

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - reported where the module is really needed
                pass

    threading.Thread(target=load, name="preload", daemon=True).start()
