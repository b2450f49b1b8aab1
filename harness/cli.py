"""Command line: ``iommufd-harness run|build|boot|list-tests|profiles|suites``."""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import __version__, profiles, suites

from harness.kconfig import fragments as kconfig

from harness.reports import markdown as report_md
from harness.errors import EXIT_ERROR, EXIT_INTERRUPTED, HarnessError, InputError
from harness.targets.board import BoardSpec
from harness.pipeline import Options, Pipeline, new_record, results_dir_for
from harness.reports.results import ResultsDir, matrix_table, summary_table
from harness.ui import Ui
from harness.workdir import WorkDir, WorkLock

REPO = Path(__file__).resolve().parent.parent


def default_work() -> Path:
    return Path(os.environ.get("IOMMUFD_HARNESS_WORK", REPO / "work"))


def _common(p: argparse.ArgumentParser, tests: bool = True) -> None:
    g = p.add_argument_group("kernel")
    g.add_argument("--kernel-src", type=Path, metavar="PATH",
                   help="Linux tree to test (directory or git checkout; never modified). "
                        "Default: Debian's linux-source-6.12 package")
    g.add_argument("--patches", type=Path, action="append", default=[], metavar="P",
                   help="extra patches on top of kernel-patches/default: a quilt dir, a .patch or an mbox "
                        "(repeatable, applied in order)")
    g.add_argument("--no-default-patches", action="store_true",
                   help="do not apply the kernel-patches/default series")
    g.add_argument("--kconfig-add", action="append", default=[], metavar="CONFIG_X=y",
                   help="extra Kconfig setting, after the profile's fragments (repeatable)")
    g.add_argument("--fragment", action="append", default=[], type=Path, metavar="FILE",
                   help="extra Kconfig fragment, same precedence as --kconfig-add (repeatable)")
    g.add_argument("--config", type=Path, metavar="FILE", dest="base_config",
                   help="start from this full .config instead of tinyconfig (fragments still apply)")
    g.add_argument("--jobs", "-j", type=int, default=0, help="parallel build jobs (default: one per CPU)")
    g = p.add_argument_group("machine")
    g.add_argument("--profile", default=profiles.DEFAULT_PROFILE,
                   help=f"vIOMMU/QEMU profile (default {profiles.DEFAULT_PROFILE}; see 'iommufd-harness profiles')")
    g.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto",
                   help="QEMU accelerator; auto probes whether KVM really boots (default auto)")
    g.add_argument("--boot-timeout", type=float, default=300.0, metavar="S",
                   help="seconds for the guest to come up on SSH (default 300, sized for TCG)")
    g.add_argument("--cmdline", default="", metavar="ARGS",
                   help="extra kernel command line, after the profile's (e.g. 'iommu.strict=1')")
    p.add_argument("--work", type=Path, default=default_work(),
                   help="work dir for sources, builds, images and results (default ./work or $IOMMUFD_HARNESS_WORK)")
    p.add_argument("--quiet", "-q", action="store_true", help="only the summary and errors")
    if tests:
        g = p.add_argument_group("tests")
        g.add_argument("--suite", default=suites.DEFAULT_SUITE,
                       help=f"test plan from selftests/suites (default {suites.DEFAULT_SUITE}; see 'iommufd-harness suites')")
        g.add_argument("--tests", metavar="GLOB",
                       help="only tests whose fixture.variant.test name matches (fnmatch; several separated by ',')")
        g.add_argument("--continue-after-crash", action="store_true",
                       help="when the kernel dies, reboot the VM and run the remaining tests (at most 3 reboots)")
        g.add_argument("--rerun-failed", type=int, default=0, metavar="N",
                       help="run failed tests again up to N times; one that then passes is reported flaky")
        g.add_argument("--per-test-timeout", type=float, metavar="S",
                       help="wall-clock limit per test, enforced by the harness (default: the suite's)")


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
    p.add_argument("--profiles", metavar="A,B,...",
                   help="run on several profiles, one after the other, and print a profile x suite matrix")
    g = p.add_argument_group("real board (instead of a VM)")
    g.add_argument("--board", metavar="USER@HOST[:PORT]",
                   help="run the tests on this board over SSH (it keeps its own kernel); use a board profile")
    g.add_argument("--board-key", type=Path, default=Path("~/.ssh/id_ed25519"), metavar="KEY",
                   help="SSH private key for the board (default ~/.ssh/id_ed25519)")
    g.add_argument("--known-hosts", type=Path, default=Path("~/.ssh/known_hosts"), metavar="FILE",
                   help="known_hosts holding the board's host key; a missing or changed key is refused")
    p.add_argument("--keep-vm", action="store_true",
                   help="after the tests, keep the VM running and print how to SSH in (Ctrl-C ends it)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("build", help="patch, configure and build the kernel and the selftests")
    _common(p, tests=False)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("boot", help="build, boot the VM and print how to SSH into it (Ctrl-C ends it)")
    _common(p, tests=False)
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("config", help="only patch and configure; show symbols, or explain why one has its value")
    _common(p, tests=False)
    p.add_argument("--arch", choices=["x86_64", "arm64"],
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
                                      "optionally against a baseline")
    p.add_argument("results_dir", type=Path, metavar="DIR")
    p.add_argument("--baseline", type=Path, metavar="FILE|DIR", help="as for 'run --baseline'")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("profiles", help="list the vIOMMU/QEMU profiles")
    p.set_defaults(func=cmd_profiles)
    p = sub.add_parser("suites", help="list the test suites")
    p.set_defaults(func=cmd_suites)
    return parser


def options(args) -> Options:
    return Options(
        work=args.work.expanduser().resolve(),
        kernel_src=args.kernel_src,
        patches=list(args.patches),
        default_patches=not args.no_default_patches,
        profile=args.profile,
        suite=getattr(args, "suite", suites.DEFAULT_SUITE),
        tests=getattr(args, "tests", None),
        results=getattr(args, "results", None),
        jobs=args.jobs,
        keep_vm=getattr(args, "keep_vm", False),
        accel=args.accel,
        boot_timeout=args.boot_timeout,
        extra_cmdline=args.cmdline,
        per_test_timeout=getattr(args, "per_test_timeout", None),
        kconfig_add=list(args.kconfig_add),
        fragments=list(args.fragment),
        base_config=args.base_config,
        baseline=getattr(args, "baseline", None),
        rerun_failed=getattr(args, "rerun_failed", 0),
        continue_after_crash=getattr(args, "continue_after_crash", False),
        board=getattr(args, "board", None),
        board_key=getattr(args, "board_key", Path("~/.ssh/id_ed25519")),
        known_hosts=getattr(args, "known_hosts", Path("~/.ssh/known_hosts")),
    )


def _validate(opts: Options, tests: bool = True) -> None:
    """Check what can be checked before any work starts."""
    profiles.load(opts.profile)
    if tests:
        suites.load(opts.suite)
    for text in opts.kconfig_add:
        kconfig.parse_assignment(text)
    for frag in opts.fragments:
        kconfig.parse_fragment(frag)
    if opts.base_config is not None and not opts.base_config.is_file():
        raise InputError(f"--config {opts.base_config} does not exist", "pass a full kernel .config")
    for p in opts.patches:
        if not p.exists():
            raise InputError(f"patch input {p} does not exist", "pass a quilt directory, a .patch file or an mbox")
    if opts.baseline is not None and not opts.baseline.exists():
        raise InputError(f"baseline {opts.baseline} does not exist",
                         "pass a results dir, a results.json or selftests/baselines/")


def cmd_run(args, ui: Ui) -> int:
    opts = options(args)
    names = [p.strip() for p in args.profiles.split(",") if p.strip()] if args.profiles else [opts.profile]
    for name in names:
        profiles.load(name)
    _validate(opts)
    work = WorkDir(opts.work).prepare()
    if len(names) == 1:
        results_path = results_dir_for(opts, work)
        with WorkLock(work):
            record, interrupted = _run_one(opts, ui, results_path)
        return EXIT_INTERRUPTED if interrupted else record.exit_code()
    # A matrix: one run per profile, each in its own results subdir.  The
    # profiles run one after the other: each guest already uses both cores.
    top = results_dir_for(dataclasses.replace(opts, profile="matrix"), work)
    records = []
    with WorkLock(work):
        for name in names:
            one = dataclasses.replace(opts, profile=name, results=None)
            record, interrupted = _run_one(one, ui, top / name)
            records.append(record)
            if interrupted:
                break
    matrix_table(records, ui.out)
    ui.out.print(f"results: {top}", highlight=False, markup=False)
    if interrupted:
        return EXIT_INTERRUPTED
    return max(r.exit_code() for r in records)


def _run_one(opts: Options, ui: Ui, results_path: Path):
    """One profile: pipeline, tests, results.  Returns (record, interrupted)."""
    record = new_record(opts)
    sink = ResultsDir(results_path)
    interrupted = False
    pipe = Pipeline(opts, ui, record, results_path / "logs")
    try:
        suite = suites.load(opts.suite)
        spec = BoardSpec.parse(opts.board, opts.board_key, opts.known_hosts) if opts.board else None
        prep = pipe.prepare()
        if spec is not None:
            sessions = pipe.on_board(prep, spec, results_path)
        else:
            if prep.profile.qemu is None:
                raise InputError(f"profile {opts.profile} is for real boards", "pass --board USER@HOST[:PORT]")
            sessions = pipe.booted(prep, pipe.make_image(prep), results_path)
        with sessions as session:
            try:
                pipe.run_tests(session, suite, sink)
            finally:
                sink.write(record)
            if opts.keep_vm:
                _hold(ui, session.target, session.ssh_cmd)
        pipe.decode_splats(prep)
    except HarnessError as e:
        record.errors.append(e.render())
        ui.error(e.render())
    except KeyboardInterrupt:
        interrupted = True
        record.errors.append("the run was interrupted")
        ui.error("interrupted: tearing down, writing what was collected")
    finally:
        record.decide()
        sink.write(record)
    gate = _reports(ui, results_path, opts.baseline)
    summary_table(record, ui.out)
    failing = [t for t in record.tests if t.status in ("fail", "timeout", "crash")]
    for t in failing[:10]:
        ui.out.print(f"reproduce: iommufd-harness run --profile {opts.profile} --suite {opts.suite} "
                     f"--tests '{t.name}'" + (f" --kernel-src {opts.kernel_src}" if opts.kernel_src else ""),
                     highlight=False, markup=False)
    ui.out.print(f"results: {results_path}", highlight=False, markup=False)
    if gate is not None:
        record.verdict = gate  # the exit code of a gated run is about change
    return record, interrupted


def _reports(ui: Ui, results_path: Path, baseline: Path | None) -> str | None:
    """summary.md, kcidb.json (and comparison.json against a baseline) from
    what was written; returns the gate verdict when there is a baseline."""
    try:
        comparison, _ = report_md.rerender(results_path, baseline)
    except HarnessError as e:
        ui.warn(f"reports: {e.message}")
        return "error" if baseline else None
    if comparison is None:
        return None
    run = report_md.load_run(results_path)
    gate = comparison.gate_verdict(run.verdict)
    for reason in comparison.reasons():
        ui.out.print(f"baseline: {reason}", highlight=False, markup=False)
    ui.out.print(f"gate verdict against {baseline}: {gate.upper()}", highlight=False, markup=False)
    return gate


def cmd_report(args, ui: Ui) -> int:
    if not (args.results_dir / "results.json").is_file():
        raise InputError(f"{args.results_dir} holds no results.json", "pass a results dir written by 'run'")
    gate = _reports(ui, args.results_dir, args.baseline)
    run = report_md.load_run(args.results_dir)
    summary_table(run, ui.out)
    ui.out.print(f"summary: {args.results_dir / 'summary.md'}", highlight=False, markup=False)
    if gate is not None:
        run.verdict = gate
    return run.exit_code()


def _hold(ui: Ui, target, ssh_cmd: str) -> None:
    ui.out.print("the VM is up; connect with:", highlight=False)
    ui.out.print(f"  {ssh_cmd}", highlight=False, markup=False)
    ui.out.print("Ctrl-C stops it.", highlight=False)
    while target.failure() is None:
        time.sleep(1.0)
    ui.warn(f"the VM went away: {target.failure()}")


def _prepare(opts: Options, ui: Ui, until: str = "build"):
    """The build side of the pipeline alone (source .. build, or .. config)."""
    work = WorkDir(opts.work).prepare()
    with WorkLock(work):
        return Pipeline(opts, ui, new_record(opts), work.root / "logs").prepare(until=until)


def cmd_build(args, ui: Ui) -> int:
    opts = options(args)
    _validate(opts, tests=False)
    prep = _prepare(opts, ui)
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
    _validate(opts, tests=False)
    prep = _prepare(opts, ui, until="config")
    values = kconfig.read_config(prep.config.config)
    ui.out.print(f"config: {prep.config.config} ({prep.profile.arch}, profile {prep.profile.name})",
                 highlight=False, markup=False)
    for glob in args.show:
        pattern = glob if glob.startswith("CONFIG_") else "CONFIG_" + glob
        for sym in sorted(fnmatch.filter(values, pattern)):
            shown = "is not set" if values[sym] == "n" else f"={values[sym]}"
            ui.out.print(f"{sym}{shown if shown.startswith('=') else ' ' + shown}", highlight=False, markup=False)
    if args.explain:
        from harness.stages import config as config_stage
        from harness.kconfig import explain as kconfig_explain

        model = config_stage.model(prep.config_request, prep.config.config)
        for sym in args.explain:
            ui.out.print(kconfig_explain.explain_symbol(model, sym), highlight=False, markup=False)
    return 0


def cmd_boot(args, ui: Ui) -> int:
    opts = options(args)
    _validate(opts, tests=False)
    work = WorkDir(opts.work).prepare()
    record = new_record(opts)
    results_path = results_dir_for(opts, work)
    with WorkLock(work):
        pipe = Pipeline(opts, ui, record, results_path / "logs")
        prep = pipe.prepare()
        base = pipe.make_image(prep)
        try:
            with pipe.booted(prep, base, results_path) as session:
                ui.out.print(f"console log: {results_path / 'console.log'}", highlight=False)
                _hold(ui, session.target, session.ssh_cmd)
        except KeyboardInterrupt:
            ui.info("stopped")
            return 0
    return 0


def cmd_list_tests(args, ui: Ui) -> int:
    opts = options(args)
    _validate(opts)
    suite = suites.load(opts.suite)
    prof = profiles.load(opts.profile)
    prep = _prepare(opts, ui)
    if not prep.toolchain.native:
        raise InputError(f"listing {prof.arch} tests needs a {prof.arch} machine",
                         "run 'iommufd-harness run --suite ...' to list them in the guest")
    available = {}
    for run in suite.runs:
        res = subprocess.run([str(prep.kernel.selftests[run.binary]), "-l"], capture_output=True, text=True,
                             timeout=60)
        available[run.binary] = suites.parse_list(res.stderr)
    selection = suites.select(suite, available, opts.tests)
    for binary, names in selection.tests.items():
        for n in names:
            ui.out.print(f"{binary} {n}", highlight=False, markup=False)
    return 0


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
