"""The option groups the subcommands share (kernel, machine, tests, a real
board), and the one place that turns them into
:class:`~harness.pipeline.Options`."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import debugkernels, profiles, suites
from harness.errors import InputError
from harness.pipeline import Options
from harness.workdir import default_work


def common(p: argparse.ArgumentParser, tests: bool = True) -> None:
    g = p.add_argument_group("kernel")
    g.add_argument("--kernel-src", type=Path, metavar="PATH",
                   help="Linux tree to test: a directory or a git checkout as it is, uncommitted changes "
                        "included (never modified), or a Debian package name such as linux-source-6.12 "
                        "(the default)")
    g.add_argument("--patches", type=Path, action="append", default=[], metavar="P",
                   help="extra patches on top of kernel-patches/default: a quilt dir, a .patch or an mbox "
                        "(repeatable, applied in order)")
    g.add_argument("--no-default-patches", action="store_true",
                   help="do not apply the kernel-patches/default series")
    g.add_argument("--rev", metavar="REV",
                   help="test this commit of the --kernel-src git repository instead of its working tree "
                        "(exported to the work dir; the repository is only read)")
    g.add_argument("--commits", metavar="BASE..TIP",
                   help="the series is this range of --kernel-src's commits, applied to BASE "
                        "(before any --patches)")
    g.add_argument("--kconfig-add", action="append", default=[], metavar="CONFIG_X=y",
                   help="extra Kconfig setting, after the profile's fragments (repeatable)")
    g.add_argument("--fragment", action="append", default=[], type=Path, metavar="FILE",
                   help="extra Kconfig fragment, same precedence as --kconfig-add (repeatable)")
    g.add_argument("--config", type=Path, metavar="FILE", dest="base_config",
                   help="start from this full .config instead of tinyconfig (fragments still apply)")
    g.add_argument("--debug", action="append", default=[], metavar="NAME[,NAME]",
                   help="a debug kernel from configs/debug/ (lockdep, kasan; combinable, repeatable); each "
                        "combination has a build directory of its own")
    g.add_argument("--jobs", "-j", type=int, default=0, help="parallel build jobs (default: one per CPU)")
    g = p.add_argument_group("machine")
    g.add_argument("--profile", default=None,
                   help=f"vIOMMU/QEMU profile (default {profiles.DEFAULT_PROFILE}, or the lab board's; see "
                        "'iommufd-harness profiles')")
    machine(p, g)
    if tests:
        g = p.add_argument_group("tests")
        g.add_argument("--suite", default=suites.DEFAULT_SUITE,
                       help=f"test plan from selftests/suites (default {suites.DEFAULT_SUITE}; see 'iommufd-harness suites')")
        g.add_argument("--tests", metavar="GLOB", action="append",
                       help="only tests whose fixture.variant.test name matches (fnmatch; several separated by ',', "
                            "or the option repeated: they add up)")
        g.add_argument("--continue-after-crash", action="store_true",
                       help="when the kernel dies, reboot the VM and run the remaining tests (at most 3 reboots)")
        g.add_argument("--rerun-failed", type=int, default=0, metavar="N",
                       help="run failed tests again up to N times; one that then passes is reported flaky")
        g.add_argument("--per-test-timeout", type=float, metavar="S",
                       help="wall-clock limit per test, enforced by the harness (default: the suite's, times "
                            "the debug kernel's slowdown)")
        g.add_argument("--parallel", type=int, default=1, metavar="N",
                       help="run N tests at a time in the guest (each in a process of its own; kernel reports go "
                            "to the test whose task they name): races between tests' access paths, for "
                            "--debug kcsan, and a shorter suite on a multi-CPU guest (default 1)")


def board_args(p: argparse.ArgumentParser) -> None:
    """A real board instead of a VM (run; build and config build its kernel)."""
    g = p.add_argument_group("real board (instead of a VM)")
    g.add_argument("--lab", type=Path, metavar="LAB.toml",
                   help="the lab file describing --board NAME: the kernel built here is deployed to the board, "
                        "booted once (kexec), verified by its build-id, tested; the board goes back to its "
                        "installed kernel afterwards")
    g.add_argument("--lock-wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a lab board another run holds (default: refuse at once)")
    g.add_argument("--board", metavar="NAME|USER@HOST[:PORT]",
                   help="with --lab, a board of the lab; without, run the tests on this board over SSH (it keeps "
                        "its own kernel); use a board profile")
    g.add_argument("--board-key", type=Path, default=Path("~/.ssh/id_ed25519"), metavar="KEY",
                   help="SSH private key for the board (default ~/.ssh/id_ed25519)")
    g.add_argument("--known-hosts", type=Path, default=Path("~/.ssh/known_hosts"), metavar="FILE",
                   help="known_hosts holding the board's host key; a missing or changed key is refused")


def machine(p: argparse.ArgumentParser, g=None) -> None:
    """How the target is run, and where the work goes (every subcommand that boots)."""
    g = g or p.add_argument_group("machine")
    g.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto",
                   help="QEMU accelerator; auto probes whether KVM really boots (default auto)")
    g.add_argument("--boot-timeout", type=float, default=300.0, metavar="S",
                   help="seconds for the guest to come up on SSH (default 300, sized for TCG)")
    g.add_argument("--cmdline", default="", metavar="ARGS",
                   help="extra kernel command line, after the profile's (e.g. 'iommu.strict=1')")
    p.add_argument("--work", type=Path, default=default_work(),
                   help="work dir for sources, builds, images and results (default ./work or $IOMMUFD_HARNESS_WORK)")
    p.add_argument("--quiet", "-q", action="store_true", help="only the summary and errors")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="the summary lists every test, passing ones too (default: what did not pass)")


def _profile(args) -> str:
    """--profile, or the lab board's profile, or the default."""
    from harness.lab import labfile

    if args.profile is not None:
        return args.profile
    if getattr(args, "lab", None) is not None:
        if not args.board:
            raise InputError("--lab needs --board NAME", "name one of the lab file's boards")
        return labfile.load(args.lab).board(args.board).profile
    return profiles.DEFAULT_PROFILE


def options(args) -> Options:
    return Options.of(
        work=args.work.expanduser().resolve(),
        kernel_src=args.kernel_src,
        rev=args.rev,
        commits=args.commits,
        compare_base=getattr(args, "compare_base", False),
        patches=list(args.patches),
        default_patches=not args.no_default_patches,
        profile=_profile(args),
        suite=getattr(args, "suite", suites.DEFAULT_SUITE),
        tests=",".join(args.tests) if getattr(args, "tests", None) else None,
        results=getattr(args, "results", None),
        jobs=args.jobs,
        keep_vm=getattr(args, "keep_vm", False),
        accel=args.accel,
        boot_timeout=args.boot_timeout,
        extra_cmdline=args.cmdline,
        per_test_timeout=getattr(args, "per_test_timeout", None),
        parallel=_parallel(getattr(args, "parallel", 1)),
        kconfig_add=list(args.kconfig_add),
        debug=debugkernels.parse(args.debug),
        fragments=list(args.fragment),
        base_config=args.base_config,
        baseline=getattr(args, "baseline", None),
        rerun_failed=getattr(args, "rerun_failed", 0),
        continue_after_crash=getattr(args, "continue_after_crash", False),
        board=getattr(args, "board", None),
        lab=getattr(args, "lab", None),
        lock_wait=getattr(args, "lock_wait", 0.0),
        board_key=getattr(args, "board_key", Path("~/.ssh/id_ed25519")),
        known_hosts=getattr(args, "known_hosts", Path("~/.ssh/known_hosts")),
        verbose=getattr(args, "verbose", False),
        coverage=_coverage(args),
    )


def _parallel(n: int) -> int:
    if n < 1:
        raise InputError(f"--parallel {n}: the number of tests at a time must be at least 1")
    return n


def _coverage(args) -> tuple[str, ...]:
    from harness.coverage import DEFAULT_DIRS

    dirs = list(getattr(args, "coverage_dir", None) or [])
    if dirs and not getattr(args, "coverage", False):
        raise InputError("--coverage-dir needs --coverage")
    return tuple(dict.fromkeys([*DEFAULT_DIRS, *dirs])) if getattr(args, "coverage", False) else ()


def names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]
