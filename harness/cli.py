"""Command line: ``iommufd-harness run|walk|repro|build|boot|config|list-tests|report|profiles|suites``.

This module only parses arguments into :class:`~harness.pipeline.Options` and
calls :mod:`harness.jobs`; errors the user can act on end as one message and
exit code 2, never as a traceback."""

from __future__ import annotations

import argparse
import fnmatch
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness import __version__, arches, debugkernels, jobs, profiles, suites
from harness.errors import EXIT_ERROR, EXIT_INTERRUPTED, HarnessError, InputError
from harness.kconfig import fragments as kconfig
from harness.pipeline import Options
from harness.workdir import default_work
from harness.ui import Ui

if TYPE_CHECKING:
    from harness import lab


def _common(p: argparse.ArgumentParser, tests: bool = True) -> None:
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
    _machine(p, g)
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


def _board_args(p: argparse.ArgumentParser) -> None:
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


def _machine(p: argparse.ArgumentParser, g=None) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iommufd-harness",
        description="Build a kernel with CONFIG_IOMMUFD_TEST, boot it under QEMU behind an emulated IOMMU "
                    "and run the iommufd selftests in it.",
        epilog="exit codes: 0 all tests passed, 1 a test failed, 2 no verdict (bad input, build or boot failure), "
               "130 interrupted")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="the whole pipeline: patch, build, boot, test, report")
    _common(p)
    p.add_argument("--results", type=Path, metavar="DIR",
                   help="where to write results (default: a new dir under <work>/results)")
    p.add_argument("--baseline", type=Path, metavar="FILE|DIR",
                   help="gate on change: compare with a previous results dir / results.json, or an expectations "
                        "file (selftests/baselines/<profile>-<suite>.toml, or that directory); exit 1 only on "
                        "regressions")
    p.add_argument("--compare-base", action="store_true",
                   help="run the tree without the series (--patches/--commits) first, cached by the tree's state, "
                        "then with it; the verdict is what the series changed")
    p.add_argument("--profiles", metavar="A,B,...",
                   help="run on several profiles, one after the other, and print a profile x suite matrix")
    p.add_argument("--coverage", action="store_true",
                   help="gcov coverage of drivers/iommu/iommufd/ (and --coverage-dir): what the suite executed, and "
                        "of the lines the series changes (coverage/ in the results dir; a debug kernel needs no "
                        "build of its own for it)")
    p.add_argument("--coverage-dir", action="append", default=[], metavar="DIR",
                   help="with --coverage: also profile this directory of the tree (repeatable)")
    _board_args(p)
    p.add_argument("--keep-vm", action="store_true",
                   help="after the tests, keep the VM running and print how to SSH in (Ctrl-C ends it)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("gate", help="a series from the mailing list (message-id, lore link or mbox) on its "
                                    "base: its verdict against the tree without it, as a reply in its thread",
                       description="Fetches the series with b4 (the newest revision), applies it to its "
                                   "base-commit in --kernel-src, runs it on the gate's debug kernel against the "
                                   "same tree without it (--compare-base), and writes the reply (--reply-to) or "
                                   "sends it (--smtp).  A gate config, --gate-config or <kernel-src>/"
                                   "iommufd-gate.toml, may name [gate] profile, suite, debug, inbox, from, cc, "
                                   "cc_list, reply_on_error and [gate.smtp].")
    p.add_argument("series", metavar="SERIES", nargs="?",
                   help="the series: a message-id (<id@host> or bare), a link into a public-inbox archive, or an "
                        "mbox/maildir")
    g = p.add_argument_group("polling the list (a cron or CI job)")
    g.add_argument("--new", action="store_true",
                   help="instead of SERIES: every series revision posted to the inbox since the last poll, each "
                        "gated once (the newest revision of its series); a state file per inbox remembers them")
    g.add_argument("--since", metavar="WHEN",
                   help="with --new: look back to this time (2026-12-01, 2026-12-01T08:00, 3d, 12h; default: the "
                        "last poll less an hour, a day on the first poll)")
    g.add_argument("--state", type=Path, metavar="FILE",
                   help="with --new: the state file (default: <work>/gate/<inbox>.json)")
    g.add_argument("--list", dest="list_only", action="store_true",
                   help="with --new: list what would be gated; gate nothing, change nothing")
    g = p.add_argument_group("series")
    g.add_argument("--inbox", metavar="URL",
                   help="the public-inbox archive of a message-id, its list URL (default: the config's, else "
                        "https://lore.kernel.org/all)")
    g.add_argument("--revision", type=int, metavar="N", help="this revision of the series (default: the newest)")
    g.add_argument("--base", metavar="REV",
                   help="the base when the series names no base-commit (default: the tree's HEAD, said so in "
                        "the reply)")
    g.add_argument("--profiles", metavar="A,B,...",
                   help="gate on each of these profiles (default: the config's profiles, else --profile)")
    g.add_argument("--suites", metavar="A,B,...",
                   help="and each of these suites (default: the config's suites, else --suite); the verdict is "
                        "FAIL if the series regressed any of them")
    g.add_argument("--gate-config", type=Path, metavar="FILE",
                   help="the gate config (default: <kernel-src>/iommufd-gate.toml when it exists)")
    g = p.add_argument_group("reply")
    g.add_argument("--reply-to", type=Path, metavar="FILE.eml", help="write the reply to this file")
    g.add_argument("--smtp", metavar="HOST[:PORT]",
                   help="send the reply through this server (STARTTLS and login from the config's [gate.smtp])")
    g.add_argument("--reply-on-error", action="store_true",
                   help="also reply when there is no verdict (the series could not be fetched or applied, the "
                        "kernel did not build or boot); by default the author is never mailed then")
    g.add_argument("--cc", action="append", default=[], metavar="ADDR",
                   help="also Cc this address (repeatable; the list the series came on is Cc'd by default)")
    g.add_argument("--from", dest="sender", metavar="ADDR", help="From of the reply")
    g.add_argument("--no-walk", dest="walk", action="store_false",
                   help="when a series of several patches fails, do not walk it (bisect from 6 patches on) to "
                        "name the first patch that broke it in the reply and answer under that patch too")
    _common(p)
    p.add_argument("--results", type=Path, metavar="DIR",
                   help="where to write results (default: a new dir under <work>/results)")
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("walk", help="apply a series one patch at a time, run the suite after each: which patch "
                                    "broke something")
    _common(p)
    p.add_argument("--results", type=Path, metavar="DIR",
                   help="where to write the walk (default: a new dir under <work>/results)")
    p.add_argument("--bisect", action="store_true",
                   help="the base, the whole series, then halves: log2(n) steps instead of n")
    p.set_defaults(func=cmd_walk)

    p = sub.add_parser("repro", help="rebuild exactly the kernel of a results dir and run a test of it again")
    p.add_argument("results_dir", type=Path, metavar="DIR", help="a results dir written by 'run'")
    p.add_argument("test", nargs="?", metavar="TEST",
                   help="test name or glob (several separated by ','; default: the tests that failed there)")
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="run it N times in the same boot")
    p.add_argument("--until-fail", action="store_true",
                   help="repeat (up to --repeat, default 100) until an attempt does not pass")
    p.add_argument("--keep-vm", action="store_true", help="afterwards keep the VM and print how to SSH in")
    p.add_argument("--shell", action="store_true", help="afterwards open a shell in the guest")
    p.add_argument("--results", type=Path, metavar="DIR", help="where to write results (default: under <work>)")
    _machine(p)
    p.set_defaults(func=cmd_repro)

    p = sub.add_parser("build", help="patch, configure and build the kernel and the selftests")
    _common(p, tests=False)
    _board_args(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("boot", help="build, boot the VM and print how to SSH into it (Ctrl-C ends it)")
    _common(p, tests=False)
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("config", help="only patch and configure; show symbols, or explain why one has its value")
    _common(p, tests=False)
    _board_args(p)
    p.add_argument("--arch", choices=arches.available(),
                   help="configure the guest kernel of this architecture (its first profile)")
    p.add_argument("--show", action="append", default=[], metavar="GLOB",
                   help="print the final value of matching symbols, e.g. 'IOMMUFD*' (repeatable)")
    p.add_argument("--explain", action="append", default=[], metavar="CONFIG_X[=v]",
                   help="explain a symbol's value (and how to get v), with kconfiglib (repeatable)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("list-tests", help="list the selftests a suite selects (builds if needed)")
    _common(p)
    p.set_defaults(func=cmd_list_tests)

    p = sub.add_parser("report", help="re-render summary.md, junit.xml and kcidb.json of a results dir, "
                                      "optionally against a baseline; or merge many into one verdict")
    p.add_argument("results_dirs", type=Path, metavar="DIR", nargs="+")
    p.add_argument("--baseline", type=Path, metavar="FILE|DIR", help="as for 'run --baseline'")
    p.add_argument("--merge", action="store_true",
                   help="join the results dirs given, or found under the dirs given (a matrix, CI artifacts of "
                        "many machines), into one verdict: merged.json, summary.md, junit.xml, kcidb.json")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="--merge: where the merged reports go (default: the one DIR given)")
    p.add_argument("--verbose", "-v", action="store_true", help="list every test, passing ones too")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("nightly", help="one night of a nightly plan: every profile and board x suite, one "
                                       "results dir per cell, merged reports with the history of earlier nights",
                       description="PLAN.toml names root, kernel_src, rev, patches, default_patches, suites, "
                                   "profiles, debug, history and [[boards]] (lab, board); see README, Nightly.")
    p.add_argument("plan", type=Path, metavar="PLAN.toml")
    p.add_argument("--night", metavar="NAME", help="this night's directory under the plan's root (default: the time)")
    p.add_argument("--work", type=Path, default=default_work(), help="work dir (default ./work)")
    p.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto")
    p.set_defaults(func=cmd_nightly)

    p = sub.add_parser("lab", help="a lab file's boards: reachable, what they run, locked or quarantined")
    lsub = p.add_subparsers(dest="lab_command", metavar="ACTION")
    q = lsub.add_parser("check", help="for each board: reachable with its pinned key, its kernel, lock, "
                                      "quarantine, boot methods")
    q.add_argument("lab_file", type=Path, metavar="LAB.toml")
    q.add_argument("name", nargs="?", help="only this board")
    q.set_defaults(func=cmd_lab_check)
    q = lsub.add_parser("release", help="end a board's quarantine and drop its lock (after checking it by hand)")
    q.add_argument("lab_file", type=Path, metavar="LAB.toml")
    q.add_argument("name")
    q.set_defaults(func=cmd_lab_release)

    p = sub.add_parser("qemu-board", help="a QEMU arm64 machine that behaves like a lab board (U-Boot, an "
                                         "installed Debian kernel, sshd, kexec)")
    bsub = p.add_subparsers(dest="board_command", metavar="ACTION")
    q = bsub.add_parser("create", help="make its disk, keys and a lab.toml naming it in DIR")
    q.add_argument("dir", type=Path)
    q.add_argument("--port", type=int, default=0, help="the SSH port on 127.0.0.1 (default: a free one)")
    q.add_argument("--work", type=Path, default=default_work(), help="work dir (its package cache is used)")
    q.set_defaults(func=cmd_qemu_board)
    for action, text in (("start", "run it until stopped (Ctrl-C, SIGTERM)"),
                         ("reset", "its power cycle (QMP system_reset)"), ("console", "print its serial console")):
        q = bsub.add_parser(action, help=text)
        q.add_argument("dir", type=Path)
        q.set_defaults(func=cmd_qemu_board)

    p = sub.add_parser("profiles", help="list the vIOMMU/QEMU profiles")
    p.set_defaults(func=cmd_profiles)
    p = sub.add_parser("suites", help="list the test suites")
    p.set_defaults(func=cmd_suites)
    return parser


def _profile(args) -> str:
    """--profile, or the lab board's profile, or the default."""
    from harness import lab

    if args.profile is not None:
        return args.profile
    if getattr(args, "lab", None) is not None:
        if not args.board:
            raise InputError("--lab needs --board NAME", "name one of the lab file's boards")
        return lab.load(args.lab).board(args.board).profile
    return profiles.DEFAULT_PROFILE


def options(args) -> Options:
    return Options(
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


def cmd_run(args, ui: Ui) -> int:
    opts = options(args)
    matrix = None
    if args.profiles is not None:
        matrix = _names(args.profiles)
        if not matrix:
            raise InputError(f"--profiles {args.profiles!r} names no profile",
                             f"pass profile names separated by commas; available: {', '.join(profiles.available())}")
    return jobs.run(opts, ui, matrix)


def cmd_gate(args, ui: Ui) -> int:
    from harness.mail import gate

    if args.new == bool(args.series):
        raise InputError("gate takes a SERIES, or --new to poll the inbox, not both" if args.new else
                         "gate needs a SERIES (message-id, link or mbox), or --new to poll the inbox",
                         "see 'iommufd-harness gate --help'")
    if not args.new and (args.since or args.state or args.list_only):
        raise InputError("--since, --state and --list go with --new")
    req = gate.GateRequest(series=args.series or "", inbox=args.inbox, revision=args.revision, base=args.base,
                           reply_to=args.reply_to, smtp=args.smtp, reply_on_error=args.reply_on_error,
                           cc=list(args.cc), sender=args.sender, config=args.gate_config, walk=args.walk,
                           profiles=_names(args.profiles), suites=_names(args.suites))
    if args.new:
        from harness.mail import watch

        return watch.gate_new(req, watch.PollRequest(since=args.since, state=args.state, list_only=args.list_only),
                              options(args), ui)
    return gate.gate(req, options(args), ui)


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def cmd_walk(args, ui: Ui) -> int:
    from harness import walk

    return walk.walk(options(args), ui, bisect=args.bisect)


def cmd_repro(args, ui: Ui) -> int:
    if args.repeat < 1:
        raise InputError("--repeat must be at least 1")
    machine = Options(work=args.work.expanduser().resolve(), accel=args.accel, boot_timeout=args.boot_timeout,
                      keep_vm=args.keep_vm, shell=args.shell, results=args.results,
                      repeat=args.repeat if args.repeat > 1 or not args.until_fail else 100,
                      until_fail=args.until_fail)
    opts = jobs.repro_options(args.results_dir, args.test, machine)
    if args.cmdline:
        opts.extra_cmdline = " ".join(x for x in (opts.extra_cmdline, args.cmdline) if x)
    return jobs.run(opts, ui)


def cmd_report(args, ui: Ui) -> int:
    if args.merge:
        if args.baseline is not None:
            raise InputError("--merge takes no --baseline", "gate each cell ('report DIR --baseline B'), then merge")
        out = args.out
        if out is None:
            if len(args.results_dirs) != 1:
                raise InputError("--merge of several dirs needs --out DIR (where the merged reports go)")
            out = args.results_dirs[0]
        return jobs.merge(ui, args.results_dirs, out)
    if len(args.results_dirs) != 1 or args.out is not None:
        raise InputError("report re-renders one results dir", "to join several into one verdict: report --merge")
    return jobs.report(ui, args.results_dirs[0], args.baseline, args.verbose)


def cmd_nightly(args, ui: Ui) -> int:
    from harness import nightly

    return nightly.night(nightly.load(args.plan), args.work.expanduser().resolve(), ui, args.night, args.accel)


def cmd_build(args, ui: Ui) -> int:
    opts = options(args)
    jobs.validate(opts, tests=False)
    prep = jobs.prepare(opts, ui)
    ui.out.print(f"kernel:    {prep.kernel.image}", highlight=False)
    ui.out.print(f"vmlinux:   {prep.kernel.vmlinux} (build-id {prep.kernel.build_id})", highlight=False)
    for name, path in prep.kernel.selftests.items():
        ui.out.print(f"selftest:  {path}", highlight=False)
    return 0


def cmd_config(args, ui: Ui) -> int:
    opts = options(args)
    if args.arch:
        matching = [n for n in profiles.available() if profiles.load(n).arch == args.arch]
        if not matching:
            raise InputError(f"no profile for {args.arch}")
        opts.profile = next((n for n in matching if n == opts.profile), matching[0])
    jobs.validate(opts, tests=False)
    prep = jobs.prepare(opts, ui, until="config")
    values = kconfig.read_config(prep.config.config)
    ui.out.print(f"config: {prep.config.config} ({prep.profile.arch}, profile {prep.profile.name})",
                 highlight=False, markup=False)
    for glob in args.show:
        pattern = glob if glob.startswith("CONFIG_") else "CONFIG_" + glob
        for sym in sorted(fnmatch.filter(values, pattern)):
            shown = "is not set" if values[sym] == "n" else f"={values[sym]}"
            ui.out.print(f"{sym}{shown if shown.startswith('=') else ' ' + shown}", highlight=False, markup=False)
    if args.explain:
        from harness.kconfig import explain
        from harness.stages import config as config_stage

        model = config_stage.model(prep.config_request, prep.config.config)
        for sym in args.explain:
            ui.out.print(explain.explain_symbol(model, sym), highlight=False, markup=False)
    return 0


def cmd_boot(args, ui: Ui) -> int:
    opts = options(args)
    jobs.validate(opts, tests=False)
    return jobs.boot(opts, ui)


def cmd_list_tests(args, ui: Ui) -> int:
    opts = options(args)
    jobs.validate(opts)
    for binary, name in jobs.list_tests(opts, ui):
        ui.out.print(f"{binary} {name}", highlight=False, markup=False)
    return 0


def cmd_lab_check(args, ui: Ui) -> int:
    from harness import labcmd

    return labcmd.check(args.lab_file, args.name, ui)


def cmd_lab_release(args, ui: Ui) -> int:
    from harness import labcmd

    return labcmd.release(args.lab_file, args.name, ui)


def cmd_qemu_board(args, ui: Ui) -> int:
    from harness import labcmd

    return labcmd.qemu_board(args.board_command, args.dir, getattr(args, "work", None), getattr(args, "port", None),
                             ui)


def cmd_profiles(args, ui: Ui) -> int:
    for name in profiles.available():
        p = profiles.load(name)
        ui.out.print(f"{name:<22} {p.arch:<7} {p.description}", highlight=False, markup=False)
    return 0


def cmd_suites(args, ui: Ui) -> int:
    for name in suites.available():
        s = suites.load(name)
        ui.out.print(f"{name:<10} {s.description}", highlight=False, markup=False)
    return 0


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    ui = Ui(getattr(args, "quiet", False))
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.func(args, ui)
    except HarnessError as e:
        ui.error(e.render())
        return EXIT_ERROR
    except OSError as e:
        # disk full, read-only or unwritable paths, ...: say which path, no traceback
        where = f" ({e.filename})" if e.filename else ""
        ui.error(f"error [host]: {e.strerror or e}{where}\n  hint: check free space and permissions there")
        return EXIT_ERROR
    except KeyboardInterrupt:
        ui.error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
