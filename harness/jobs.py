"""What each subcommand does, as functions of :class:`~harness.pipeline.Options`:
the CLI parses arguments and calls one of these; they run the pipeline,
drive the target's lifecycle and the test session, and write the reports."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from harness import proc, profiles, suites
from harness.errors import EXIT_INTERRUPTED, HarnessError, InputError
from harness.kconfig import fragments as kconfig
from harness.parse.testlist import parse_list
from harness.pipeline import Options, Pipeline, Prepared, new_record, results_dir_for
from harness.reports import markdown
from harness.reports.repro import reproducer
from harness.reports.results import RunRecord
from harness.reports.resultsdir import ResultsDir
from harness.reports.terminal import matrix_table, summary_table
from harness.run.session import SessionOptions, TestSession
from harness.stages import source
from harness.ui import Ui
from harness.workdir import WorkDir, WorkLock


def validate(opts: Options, tests: bool = True) -> None:
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
    if opts.rev and opts.commits:
        raise InputError("--rev and --commits both say which commit to test",
                         "pass one: --commits BASE..TIP tests BASE with the range on top")
    if (opts.rev or opts.commits) and opts.kernel_src is None:
        raise InputError(f"{'--rev' if opts.rev else '--commits'} needs the git repository",
                         "pass it with --kernel-src")
    if opts.commits and source.debian_package_name(opts.kernel_src):
        raise InputError("--commits needs a git repository", "pass a git checkout with --kernel-src")
    for p in opts.patches:
        if not p.exists():
            raise InputError(f"patch input {p} does not exist", "pass a quilt directory, a .patch file or an mbox")
    if opts.baseline is not None and not opts.baseline.exists():
        raise InputError(f"baseline {opts.baseline} does not exist",
                         "pass a results dir, a results.json or selftests/baselines/")


def run(opts: Options, ui: Ui, matrix: list[str] | None = None) -> int:
    """``run``: the whole pipeline on one profile, or on each of ``matrix``
    one after the other (each TCG guest already keeps both cores busy)."""
    names = matrix or [opts.profile]
    for name in names:
        profiles.load(name)
    validate(opts)
    work = WorkDir(opts.work).prepare()
    if len(names) == 1:
        opts = dataclasses.replace(opts, profile=names[0])  # --profiles with one name runs that one
        results_path = results_dir_for(opts, work)
        with WorkLock(work):
            record, interrupted = run_one(opts, ui, results_path)
        return EXIT_INTERRUPTED if interrupted else record.exit_code()
    top = results_dir_for(dataclasses.replace(opts, profile="matrix"), work)
    records = []
    with WorkLock(work):
        for name in names:
            one = dataclasses.replace(opts, profile=name, results=None)
            record, interrupted = run_one(one, ui, top / name)
            records.append(record)
            if interrupted:
                break
    matrix_table(records, ui.out)
    ui.out.print(f"results: {top}", highlight=False, markup=False)
    if interrupted:
        return EXIT_INTERRUPTED
    return max(r.exit_code() for r in records)


def run_one(opts: Options, ui: Ui, results_path: Path) -> tuple[RunRecord, bool]:
    """One profile: pipeline, target, tests, reports.  Returns (record,
    interrupted); what was collected is written whatever happens."""
    record = new_record(opts)
    sink = ResultsDir(results_path)
    interrupted = False
    pipe = Pipeline(opts, ui, record, results_path / "logs")
    try:
        suite = suites.load(opts.suite)
        spec = pipe.board_spec()
        prep = pipe.prepare()
        session = None
        with pipe.up(pipe.target(prep, results_path, spec)) as lifecycle:
            session = TestSession(lifecycle, suite, SessionOptions(opts.tests, opts.per_test_timeout,
                                                                   opts.continue_after_crash, opts.rerun_failed),
                                  record, sink, ui)
            try:
                with pipe.stage("run"):
                    session.run()
            finally:
                sink.write(record)
            if opts.keep_vm:
                hold(ui, lifecycle.target, lifecycle.ssh_command())
        pipe.decode_splats(prep, session.splats)
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
    gate = render_reports(ui, results_path, opts.baseline)
    summary_table(record, ui.out)
    failing = [t for t in record.tests if t.status in ("fail", "timeout", "crash")]
    for t in failing[:10]:
        ui.out.print("reproduce: " + reproducer(opts.profile, opts.suite, t.name, record.inputs),
                     highlight=False, markup=False)
    ui.out.print(f"results: {results_path}", highlight=False, markup=False)
    if gate is not None:
        record.verdict = gate  # the exit code of a gated run is about change
    return record, interrupted


def render_reports(ui: Ui, results_path: Path, baseline: Path | None) -> str | None:
    """summary.md, kcidb.json (and comparison.json against a baseline) from
    what was written; returns the gate verdict when there is a baseline."""
    try:
        comparison, _ = markdown.rerender(results_path, baseline, warn=ui.warn)
    except HarnessError as e:
        ui.warn(f"reports: {e.message}")
        return "error" if baseline else None
    if comparison is None:
        return None
    run_ = markdown.load_run(results_path)
    gate = comparison.gate_verdict(run_.verdict)
    for reason in comparison.reasons():
        ui.out.print(f"baseline: {reason}", highlight=False, markup=False)
    ui.out.print(f"gate verdict against {baseline}: {gate.upper()}", highlight=False, markup=False)
    return gate


def report(ui: Ui, results_dir: Path, baseline: Path | None) -> int:
    """``report``: every report of a finished run again, optionally gated."""
    if not (results_dir / "results.json").is_file():
        raise InputError(f"{results_dir} holds no results.json", "pass a results dir written by 'run'")
    gate = render_reports(ui, results_dir, baseline)
    run_ = markdown.load_run(results_dir)
    summary_table(run_, ui.out)
    ui.out.print(f"summary: {results_dir / 'summary.md'}", highlight=False, markup=False)
    if gate is not None:
        run_.verdict = gate
    return run_.exit_code()


def hold(ui: Ui, target, ssh_cmd: str) -> None:
    """Keep a booted target until it goes away or Ctrl-C."""
    ui.out.print("the VM is up; connect with:", highlight=False)
    ui.out.print(f"  {ssh_cmd}", highlight=False, markup=False)
    ui.out.print("Ctrl-C stops it.", highlight=False)
    while target.failure() is None:
        time.sleep(1.0)
    ui.warn(f"the VM went away: {target.failure()}")


def prepare(opts: Options, ui: Ui, until: str = "build") -> Prepared:
    """The build side of the pipeline alone (source .. build, or .. config)."""
    work = WorkDir(opts.work).prepare()
    with WorkLock(work):
        return Pipeline(opts, ui, new_record(opts), work.root / "logs").prepare(until=until)


def boot(opts: Options, ui: Ui) -> int:
    """``boot``: build, boot the VM and keep it until Ctrl-C."""
    work = WorkDir(opts.work).prepare()
    record = new_record(opts)
    results_path = results_dir_for(opts, work)
    with WorkLock(work):
        pipe = Pipeline(opts, ui, record, results_path / "logs")
        prep = pipe.prepare()
        lifecycle = pipe.target(prep, results_path, None)
        try:
            with pipe.up(lifecycle):
                ui.out.print(f"console log: {results_path / 'console.log'}", highlight=False)
                hold(ui, lifecycle.target, lifecycle.ssh_command())
        except KeyboardInterrupt:
            ui.info("stopped")
    return 0


def list_tests(opts: Options, ui: Ui) -> list[tuple[str, str]]:
    """``list-tests``: (binary, test) the suite selects, listed by running the
    built selftests here (so only for the host's architecture)."""
    suite = suites.load(opts.suite)
    prep = prepare(opts, ui)
    if not prep.toolchain.native:
        arch = prep.profile.arch
        raise InputError(f"listing {arch} tests needs a {arch} machine",
                         "run 'iommufd-harness run --suite ...' to list them in the guest")
    available = {}
    for r in suite.runs:
        res = proc.run([prep.kernel.selftests[r.binary], "-l"], timeout=60, split_stderr=True)
        if res.timed_out:
            raise HarnessError(f"'{r.binary} -l' did not finish within 60 s")
        available[r.binary] = parse_list(res.stderr)  # kselftest_harness prints the table on stderr
    selection = suites.select(suite, available, opts.tests)
    return [(binary, n) for binary, names in selection.tests.items() for n in names]
