"""What a run is asked to do, split by concern:

    kernel    what defines the kernel (tree, series, config, debug kernels)
    machine   where it boots and how (profile, accelerator, a board)
    testing   what runs on it and how (suite, tests, limits, repeats)

and, for the run as a whole, the work dir, the results dir and what the
verdict is judged against (a baseline, or the tree without the series).
The pipeline reads ``kernel`` and ``machine``, the test session
``testing``; a command builds its Options from its own arguments
(:mod:`harness.commands.args`, or a results dir for ``repro``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from harness import profiles, suites


@dataclass
class KernelSpec:
    """What defines the kernel (and so its build-id): all a reproducer needs
    besides the machine."""

    kernel_src: Path | None = None
    rev: str | None = None  # test this commit of the --kernel-src repository (--rev)
    commits: str | None = None  # the series is this git range of --kernel-src, on its base (--commits A..B)
    patches: list[Path] = field(default_factory=list)
    default_patches: bool = True
    kconfig_add: list[str] = field(default_factory=list)
    fragments: list[Path] = field(default_factory=list)
    base_config: Path | None = None
    debug: tuple[str, ...] = ()  # debug kernels from configs/debug/ (--debug)
    coverage: tuple[str, ...] = ()  # --coverage: the directories profiled with gcov (empty: off)
    jobs: int = 0  # parallel build jobs (0: one per CPU)


@dataclass
class MachineSpec:
    """Where the kernel boots, and how."""

    profile: str = profiles.DEFAULT_PROFILE
    accel: str = "auto"
    boot_timeout: float = 300.0
    extra_cmdline: str = ""
    keep_vm: bool = False
    shell: bool = False  # after the tests, an interactive SSH shell in the guest (repro --shell)
    board: str | None = None  # USER@HOST[:PORT] of a real board instead of a VM; with --lab a board's name
    lab: Path | None = None  # --lab: the lab file that describes --board
    lock_wait: float = 0.0  # seconds to wait for a board another run holds
    board_key: Path = Path("~/.ssh/id_ed25519")
    known_hosts: Path = Path("~/.ssh/known_hosts")


@dataclass
class TestPlan:
    """What runs on the machine, and how."""

    __test__ = False  # not a pytest test class

    suite: str = suites.DEFAULT_SUITE
    tests: str | None = None  # fnmatch globs of test names, separated by ','
    per_test_timeout: float | None = None
    parallel: int = 1  # tests at a time in the guest
    rerun_failed: int = 0
    continue_after_crash: bool = False
    repeat: int = 1  # run the selected tests this many times in one boot (repro --repeat)
    until_fail: bool = False  # ... stopping after the first attempt that does not pass
    verbose: bool = False  # the summary lists passing tests too


GROUPS = {"kernel": KernelSpec, "machine": MachineSpec, "testing": TestPlan}
_GROUP_OF = {f.name: g for g, cls in GROUPS.items() for f in dataclasses.fields(cls)}


@dataclass
class Options:
    work: Path
    kernel: KernelSpec = field(default_factory=KernelSpec)
    machine: MachineSpec = field(default_factory=MachineSpec)
    testing: TestPlan = field(default_factory=TestPlan)
    results: Path | None = None  # --results (default: a new dir under <work>/results)
    baseline: Path | None = None  # gate on change against this results dir or expectations file
    compare_base: bool = False  # run the tree without the series first, gate on what the series changed

    @classmethod
    def of(cls, work: Path, **flat) -> "Options":
        """Options from fields named as they are in their groups
        (``Options.of(work, profile=..., patches=...)``)."""
        return cls(work=work).but(**flat)

    def but(self, **flat) -> "Options":
        """A copy with these fields (of any group, named as in it) changed."""
        top, parts = {}, {}
        for name, value in flat.items():
            group = _GROUP_OF.get(name)
            if group is None:
                if name not in ("work", "results", "baseline", "compare_base"):
                    raise TypeError(f"Options has no field {name!r}")
                top[name] = value
            else:
                parts.setdefault(group, {})[name] = value
        changed = {g: dataclasses.replace(getattr(self, g), **kv) for g, kv in parts.items()}
        return dataclasses.replace(self, **top, **changed)
