"""Fake targets and trees for the fast tests."""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from harness.targets.base import IMAGE_LAYOUT
from harness.targets.console import ConsoleWatcher
from harness.targets.lifecycle import Lifecycle
from harness.targets.ssh import ExecResult
from harness.targets.verify import Expect, GuestInfo

GUEST_SELFTEST_DIR, RUN_TESTS, KILLTREE = IMAGE_LAYOUT.selftest_dir, IMAGE_LAYOUT.run_tests, IMAGE_LAYOUT.killtree
HANGCHECK = IMAGE_LAYOUT.hangcheck

REPO = Path(__file__).resolve().parent.parent
FAKE_KERNEL = Path(__file__).resolve().parent / "fixtures" / "fake-kernel"
KILLTREE_SCRIPT = REPO / "qemu-images" / "debian-bookworm" / "killtree"
RUN_TESTS_SCRIPT = REPO / "qemu-images" / "debian-bookworm" / "run-tests"
HANGCHECK_SCRIPT = REPO / "qemu-images" / "debian-bookworm" / "hangcheck"
# a real kernel's panic (a console captured by tests/golden/capture.py), what a
# "kernel" that dies prints to the fake console
_SYSRQ_LOG = Path(__file__).resolve().parent / "golden" / "console" / "arm64-sysrq-crash.log"
PANIC = "".join(line for line in _SYSRQ_LOG.read_text().splitlines(keepends=True)
                if line.startswith("[") and float(line[1:13]) >= 4.48)
LEAKCHECK_SCRIPT = REPO / "qemu-images" / "debian-bookworm" / "leakcheck"


class LocalTarget:
    """Runs the guest's commands as host processes: selftest paths map to
    ``bindir``, killtree to the image's own script.  Its "kernel" dies as a
    VM's does, by a panic on its console that the harness's detector finds
    (``panic()``, or ``crash_on``: when that test starts); ``dead`` is a
    machine that went away without one."""

    name = "local"
    layout = IMAGE_LAYOUT

    def __init__(self, bindir: Path, console: Path | None = None, crash_on: str | None = None,
                 env: dict[str, str] | None = None):
        self.bindir = bindir
        self.env = env or {}  # more environment for the "guest's" commands
        self.dead: str | None = None
        self.crash_on = crash_on  # the "kernel" dies when this test starts
        self.commands: list[tuple[str, ...]] = []
        # the "kernel log": the fake selftest appends a WARN here for tests named *warns*
        self.console = console or Path(tempfile.mkstemp(prefix="fake-console-")[1])
        self.watcher = ConsoleWatcher(self.console)

    def _map(self, arg: str) -> str:
        if arg.startswith(GUEST_SELFTEST_DIR + "/"):
            return str(self.bindir / arg[len(GUEST_SELFTEST_DIR) + 1:])
        if arg == KILLTREE:
            return str(KILLTREE_SCRIPT)
        if arg == RUN_TESTS:
            return str(RUN_TESTS_SCRIPT)
        if arg == HANGCHECK:
            return str(HANGCHECK_SCRIPT)
        if arg == IMAGE_LAYOUT.leakcheck:
            return str(LEAKCHECK_SCRIPT)
        return arg

    def run(self, argv, timeout, on_stdout_line=None, on_stderr_line=None, check_stop=None) -> ExecResult:
        argv = tuple(str(a) for a in argv)
        self.commands.append(argv)
        start = time.monotonic()
        p = subprocess.Popen([self._map(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, "FAKE_CONSOLE": str(self.console),
                                  "HARNESS_KMSG": str(self.console), **self.env})
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ, ("out", on_stdout_line))
        sel.register(p.stderr, selectors.EVENT_READ, ("err", on_stderr_line))
        bufs = {"out": b"", "err": b""}
        data_all = {"out": b"", "err": b""}
        open_streams = 2
        timed_out = False
        while open_streams:
            if time.monotonic() - start > timeout or self.failure() or (check_stop and check_stop()):
                timed_out = True
                break
            for key, _ in sel.select(0.1):
                kind, cb = key.data
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                data_all[kind] += chunk
                bufs[kind] += chunk
                *lines, bufs[kind] = bufs[kind].split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace")
                    if self.crash_on and kind == "out" and f"RUN           {self.crash_on} " in text:
                        self.panic()
                    if cb:
                        cb(text)
        status = None
        if self.failure():  # the "machine" is gone, and its processes with it
            os.killpg(p.pid, 9)
            p.wait()
        if not timed_out and not self.failure():
            status = p.wait()
            if self.failure():
                status = None
            elif status < 0:
                status = 128 - status
        sel.close()
        p.stdout.close()
        p.stderr.close()
        return ExecResult(argv, status, data_all["out"], data_all["err"], timed_out, False,
                          time.monotonic() - start)

    def panic(self) -> None:
        """The "kernel" panics: a real panic report on its console."""
        with open(self.console, "a") as f:
            f.write(PANIC)

    def failure(self):
        """As a VM's: a panic the console's detector found, or the machine gone."""
        if self.dead:
            return self.dead
        self.watcher.poll()
        return "the guest kernel panicked" if self.watcher.panic_at is not None else None

    def reconnect(self):
        return self.failure() is None

    def console_excerpt(self, lines=60):
        return "fake console"

    def kernel_log_find(self, pattern, since=0):
        return self.watcher.find(pattern, since)

    def kernel_splats(self, since, until=None, final=False):
        return self.watcher.claim(since, until, final)

    def kernel_blocked_tasks(self, since, until=None):
        from harness.parse.splats import blocked_tasks

        self.watcher.poll()
        return blocked_tasks(self.watcher.text[since:until], since)

    def describe(self):
        return {"kind": "local"}


class LocalLifecycle(Lifecycle):
    """A lifecycle around :class:`LocalTarget`s: "boot" makes one, "reboot"
    another; verify accepts any."""

    kind = "local"

    def __init__(self, bindir: Path, console: Path | None = None, crash_on: str | None = None,
                 env: dict[str, str] | None = None):
        super().__init__("local", Expect(None, "", 0))
        self.bindir, self.console, self.crash_on, self.env = bindir, console, crash_on, env
        self.torn_down = 0

    def _boot(self):  # only the first boot's "kernel" has the crash
        return LocalTarget(self.bindir, self.console, crash_on=self.crash_on if not self.boots else None,
                           env=self.env)

    _reboot = _boot

    def _verify(self, target):
        return GuestInfo("fake", None, 0, ())

    def _teardown(self):
        self.torn_down += 1


def copy_fake_kernel(dest: Path) -> Path:
    shutil.copytree(FAKE_KERNEL, dest, symlinks=True)
    return dest


def ssh_listener(host_key, server: Callable[[], object]) -> tuple[int, Callable[[], None]]:
    """An in-process SSH server on a port of 127.0.0.1: every connection is
    served by a new ``server()`` (a paramiko.ServerInterface).  Returns the
    port and what stops it."""
    import paramiko

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def accept_loop():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            t = paramiko.Transport(conn)
            t.add_server_key(host_key)
            t.start_server(server=server())

    threading.Thread(target=accept_loop, daemon=True).start()

    def close() -> None:
        stop.set()
        sock.close()

    return sock.getsockname()[1], close


def ssh_server_base():
    """The base of the in-process SSH servers: root with one allowed key,
    session channels, each exec request served by ``self._serve(channel,
    command)`` in a thread of its own."""
    import paramiko

    class KeyServer(paramiko.ServerInterface):
        def __init__(self, allowed: paramiko.PKey):
            self.allowed = allowed

        def get_allowed_auths(self, username):
            return "publickey"

        def check_auth_publickey(self, username, key):
            ok = username == "root" and key.get_base64() == self.allowed.get_base64()
            return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

        def check_channel_request(self, kind, chanid):
            return paramiko.OPEN_SUCCEEDED if kind == "session" else \
                paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

        def check_channel_exec_request(self, channel, command):
            threading.Thread(target=self._serve, args=(channel, command.decode()), daemon=True).start()
            return True

        def _serve(self, chan, command: str) -> None:
            raise NotImplementedError

    return KeyServer
