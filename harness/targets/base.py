"""The interface the runner talks to: a :class:`Target` runs commands and
shows its kernel log.  A QEMU VM, a real board over SSH and the tests' fakes
all implement it, so the runner never knows which one it has.  How a target
is brought up and taken down is its :mod:`lifecycle`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from harness.parse.splats import Splat
from harness.targets.ssh import ExecResult


@dataclass(frozen=True)
class Layout:
    """Where the selftests and the harness's helper scripts are on the target."""

    selftest_dir: str = "/usr/lib/iommufd-harness/selftests"
    # runs each test in its own process between kernel log markers; prints
    # its PID (for killtree) on stderr first
    run_tests: str = "/usr/libexec/iommufd-harness/run-tests"
    killtree: str = "/usr/libexec/iommufd-harness/killtree"  # ends a process and its children
    # watches a test for tasks blocked in the kernel, and dumps their stacks
    # before a test is killed; next to run-tests, which starts it
    hangcheck: str = "/usr/libexec/iommufd-harness/hangcheck"
    # scans for leaks on a kernel with kmemleak, after a suite
    leakcheck: str = "/usr/libexec/iommufd-harness/leakcheck"


IMAGE_LAYOUT = Layout()  # the guest image's (qemu-images/*/recipe.toml puts them there)


class Target(Protocol):
    name: str
    layout: Layout

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

    def kernel_blocked_tasks(self, since: int, until: int | None = None) -> list[Splat]:
        """The blocked tasks of the last ``sysrq w`` dump in [since, until)."""

    def describe(self) -> dict: ...
