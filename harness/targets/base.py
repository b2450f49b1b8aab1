"""Targets: where the selftests run.  The runner only sees this interface, so a
QEMU VM and a real board over SSH are interchangeable (and tests use fakes)."""

from __future__ import annotations

import re
from typing import Callable, Protocol, Sequence

from harness.targets.qemu import ConsoleWatcher
from harness.parse.splats import Splat
from harness.targets.ssh import ExecResult, SshClient, SshLost


class Target(Protocol):
    name: str

    def run(self, argv: Sequence[str], timeout: float, on_stdout_line: Callable[[str], None] | None = None,
            on_stderr_line: Callable[[str], None] | None = None,
            check_stop: Callable[[], bool] | None = None) -> ExecResult:
        """Run argv (never through a shell) within ``timeout`` seconds."""

    def failure(self) -> str | None:
        """Why the machine is gone (panic, emulator exit), or None if it is up."""

    def reconnect(self) -> bool:
        """Re-establish the command channel; False if the machine is unreachable."""

    def console_excerpt(self, lines: int = 60) -> str: ...

    def kernel_log_find(self, pattern: re.Pattern, since: int = 0) -> int | None:
        """Where ``pattern`` first appears in the kernel log at or after ``since``."""

    def kernel_splats(self, since: int, until: int | None = None, final: bool = False) -> list[Splat]:
        """Kernel reports (WARN, BUG, KASAN, ...) that started in [since, until),
        each returned once."""

    def describe(self) -> dict: ...


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


class QemuTarget(ConsoleLog):
    """A booted :class:`harness.qemu.QemuVM` reached over SSH."""

    def __init__(self, vm, client: SshClient):
        self.vm = vm
        self.client = client
        self.name = vm.req.profile.name

    @property
    def console(self) -> ConsoleWatcher:
        return self.vm.console  # a reboot replaces the VM, and its console

    def run(self, argv, timeout, on_stdout_line=None, on_stderr_line=None, check_stop=None) -> ExecResult:
        def stop() -> bool:
            return self.vm.failure() is not None or (check_stop is not None and check_stop())

        return self.client.run(argv, timeout, on_stdout_line=on_stdout_line, on_stderr_line=on_stderr_line,
                               check_stop=stop)

    def failure(self) -> str | None:
        return self.vm.failure()

    def reconnect(self) -> bool:
        if self.vm.failure():
            return False
        try:
            self.client.connect()
            return True
        except SshLost:
            return False

    def describe(self) -> dict:
        return {"kind": "qemu", "ssh_port": self.vm.ssh_port, "accel": self.vm.req.accel}
