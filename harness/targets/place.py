"""Where the tests run, as the pipeline asks for it.

The pipeline knows one kind of place itself, the run's own QEMU VM; any
other (a board of a lab, a board over SSH) is a :class:`Place` that the
pipeline asks, in order:

    kernel(...)     what the place changes in the kernel: its base config,
                    fragments, the running kernel's modules, a build dir of
                    its own, extra make targets (a dtb)
    held(what)      the place held for the whole run (a lab's lock or a
                    labgrid place), checked before the build
    check()         before and after every stage: raises when the run no
                    longer holds the place (its verdict would not be its own)
    lifecycle(...)  the target, off: booting it is the pipeline's "boot" stage
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.profiles import Profile
    from harness.reports.results import RunRecord
    from harness.stages.build import KernelBuild
    from harness.targets.lifecycle import Lifecycle
    from harness.targets.verify import Expect


@dataclass(frozen=True)
class KernelFor:
    """What a place asks of the kernel built for it (the defaults: the
    profile's tinyconfig with its fragments, as for a VM)."""

    base: str = "tinyconfig"
    fragments: tuple[str, ...] | None = None  # None: the profile's own
    base_config: Path | None = None  # None: --config (if any)
    lsmod: Path | None = None  # what the running kernel has loaded, built in
    flavour: str = ""  # a suffix of the build dir's name: a config of its own, a build dir of its own
    make_targets: tuple[str, ...] = ()  # built with the kernel (a board's dtb)


@dataclass(frozen=True)
class TargetRequest:
    """What the pipeline hands a place for the run's target."""

    kernel: KernelBuild
    profile: Profile
    results_dir: Path
    expect: Expect
    record: RunRecord  # its guest/board sections are filled in by the target
    extra_cmdline: str = ""
    say: object = None


class Place:
    """The interface, and the run's VM: it changes nothing in the kernel,
    holds nothing, and leaves its lifecycle to the pipeline."""

    def kernel(self, profile: Profile, tree: Path, srcarch: str) -> KernelFor:
        return KernelFor()

    @contextlib.contextmanager
    def held(self, what: str):
        yield

    def check(self) -> None:
        return None

    def lifecycle(self, req: TargetRequest) -> Lifecycle | None:
        """The target, off; None: the pipeline's own VM."""
        return None
