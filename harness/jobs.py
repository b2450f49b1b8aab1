"""What each subcommand does, as functions of :class:`~harness.pipeline.Options`:
the CLI parses arguments and calls one of these; they run the pipeline,
drive the target's lifecycle and the test session, and write the reports."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from harness import __version__, coverage, debugkernels, proc, profiles, suites
from harness.errors import EXIT_INTERRUPTED, HarnessError, InputError
from harness.kconfig import fragments as kconfig
from harness.parse.testlist import parse_list
from harness.pipeline import Options, Pipeline, Prepared, default_series, keep_inputs, new_record, results_dir_for
from harness.reports.repro import repro_line, reproducer
from harness.reports.results import RunRecord
from harness.reports.resultsdir import ResultsDir
from harness.reports.terminal import matrix_table, summary_table
from harness.run.listings import TestLists
from harness.run.session import SessionOptions, TestSession
from harness.stages import patches, source
from harness.ui import Ui
from harness.workdir import WorkDir, WorkLock, default_work


def validate(opts: Options, tests: bool = True) -> None:
    """Check what can be checked before any work starts."""
    profiles.load(opts.machine.profile)
    if tests:
        suites.load(opts.testing.suite)
    for text in opts.kernel.kconfig_add:
        kconfig.parse_assignment(text)
    for frag in opts.kernel.fragments:
        kconfig.parse_fragment(frag)
    if opts.kernel.base_config is not None and not opts.kernel.base_config.is_file():
        raise InputError(f"--config {opts.kernel.base_config} does not exist", "pass a full kernel .config")
    if opts.kernel.rev and opts.kernel.commits:
        raise InputError("--rev and --commits both say which commit to test",
                         "pass one: --commits BASE..TIP tests BASE with the range on top")
    if (opts.kernel.rev or opts.kernel.commits) and opts.kernel.kernel_src is None:
        raise InputError(f"{'--rev' if opts.kernel.rev else '--commits'} needs the git repository",
                         "pass it with --kernel-src")
    if opts.kernel.commits and source.debian_package_name(opts.kernel.kernel_src):
        raise InputError("--commits needs a git repository", "pass a git checkout with --kernel-src")
    for p in opts.kernel.patches:
        if not p.exists():
            raise InputError(f"patch input {p} does not exist", "pass a quilt directory, a .patch file or an mbox")
    if opts.compare_base and opts.baseline is not None:
        raise InputError("--compare-base and --baseline both say what to compare with",
                         "pass one: --compare-base compares with the tree without the series")
    if opts.compare_base and not (opts.kernel.patches or opts.kernel.commits):
        raise InputError("--compare-base needs a series to compare: nothing but the tree is given",
                         "pass the series with --patches or --commits")
    if opts.baseline is not None and not opts.baseline.exists():
        raise InputError(f"baseline {opts.baseline} does not exist",
                         "pass a results dir, a results.json or selftests/baselines/")


def run(opts: Options, ui: Ui, matrix: list[str] | None = None) -> int:
    """``run``: the whole pipeline on one profile, or on each of ``matrix``
    one after the other (each TCG guest already keeps both cores busy)."""
    from harness.reports import merge as merge_reports

    names = matrix or [opts.machine.profile]
    for name in names:
        profiles.load(name)
    validate(opts)
    work = WorkDir(opts.work).prepare()
    if len(names) == 1:
        opts = opts.but(profile=names[0])  # --profiles with one name runs that one
        results_path = results_dir_for(opts, work)
        with WorkLock(work):
            record, interrupted = run_one(opts, ui, results_path)
        return EXIT_INTERRUPTED if interrupted else record.exit_code()
    top = results_dir_for(opts.but(profile="matrix"), work)
    records = []
    with WorkLock(work):
        for name in names:
            one = opts.but(profile=name, results=None)
            record, interrupted = run_one(one, ui, top / name)
            records.append(record)
            if interrupted:
                break
    try:
        cells = merge_reports.cells([top])
        merge_reports.write(cells, top, warn=ui.warn)  # what 'report --merge' of the cells gives
        matrix_table([c.run for c in cells], ui.out, [c.name for c in cells])
    except HarnessError as e:  # the cells' own results are written whatever happens here
        ui.warn(f"the matrix report was not written: {e.message}")
        matrix_table(records, ui.out)
    ui.out.print(f"results: {top} (summary.md, merged.json, junit.xml and kcidb.json over the matrix)",
                 highlight=False, markup=False)
    if interrupted:
        return EXIT_INTERRUPTED
    return max(r.exit_code() for r in records)


BASE_VERDICTS = ("pass", "fail")  # a base that gave a verdict can be compared with


def base_key(opts: Options, work: WorkDir) -> str:
    """What decides the base run's result: the tree's content (as its origin
    states it, or the working copy's sync count for a plain directory), the
    default series, the kernel's configuration inputs, the machine and the
    tests.  Many series against one tree share one base."""
    req = source.SourceRequest(opts.kernel.kernel_src, rev=opts.kernel.rev)
    origin = source.find_origin(req, work)
    state = origin.state
    if not state:
        state = source.prepare(req, work, protect_fn=lambda o, dest: patches.protected_files(o.path, dest)).state

    def digest(path: Path | None) -> str | None:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else None

    default = ([[p.sha256, p.strip, repr(p.rules)] for p in patches.load(default_series())]
               if opts.kernel.default_patches else [])
    profile = profiles.load(opts.machine.profile)
    recipe = sorted(str(p.relative_to(profile.recipe)) + ":" + (digest(p) or "")
                    for p in profile.recipe.rglob("*") if p.is_file())
    suite_file = next((f for f in (Path(opts.testing.suite), suites.SUITE_DIR / f"{opts.testing.suite}.toml") if f.is_file()), None)
    key = {"state": state, "default_patches": default, "profile": opts.machine.profile, "suite": opts.testing.suite,
           "profile_file": digest(profile.path), "profile_fragments": [digest(f) for f in profile.fragments],
           "recipe": recipe, "suite_file": digest(suite_file), "board": opts.machine.board, "accel": opts.machine.accel,
           "tests": opts.testing.tests, "kconfig_add": list(opts.kernel.kconfig_add),
           "fragments": [digest(f) for f in opts.kernel.fragments], "config": digest(opts.kernel.base_config),
           "debug": list(opts.kernel.debug), "cmdline": opts.machine.extra_cmdline, "per_test_timeout": opts.testing.per_test_timeout,
           "parallel": opts.testing.parallel,
           "continue_after_crash": opts.testing.continue_after_crash, "rerun_failed": opts.testing.rerun_failed,
           "harness": __version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def base_run(opts: Options, ui: Ui, work: WorkDir) -> dict:
    """--compare-base: the results of the tree without the series (no
    --patches, no --commits: the range's base), from the cache under
    <work>/bases/ when that state of the tree ran before, else run now."""
    from harness.reports import markdown

    bopts = opts.but(patches=[], commits=None, compare_base=False, baseline=None, keep_vm=False,
                                coverage=())  # the series' coverage is the series run's
    if opts.kernel.commits:
        bopts.rev, _ = patches.load_commits(opts.kernel.kernel_src.expanduser().resolve(), opts.kernel.commits)
    key = base_key(bopts, work)
    where = work.root / "bases" / key
    if (where / "results.json").is_file():
        try:
            cached = markdown.load_run(where)
        except HarnessError:
            cached = None
        if cached is not None and cached.verdict in BASE_VERDICTS and not cached.errors:
            ui.info(f"base: cached ({cached.verdict}, {cached.counts()['pass']} of {len(cached.tests)} passed) "
                    f"{where}")
            return {"results": str(where), "cached": True, "key": key, "verdict": cached.verdict}
    shutil.rmtree(where, ignore_errors=True)
    ui.info(f"base: running the tree without the series -> {where}")
    record, interrupted = run_one(bopts.but(results=where), ui, where, brief="base")
    if interrupted:
        raise KeyboardInterrupt
    if record.verdict not in BASE_VERDICTS or record.errors:
        # a base with errors (a dead target, tests left unrun) is never a
        # baseline: the series would be blamed for what the base did not run
        raise HarnessError(f"the base run (the tree without the series) gave no clean verdict: "
                           f"{record.errors[0].splitlines()[0] if record.errors else record.verdict}",
                           f"see {where}; the series was not run", log=str(where / "summary.md"))
    return {"results": str(where), "cached": False, "key": key, "verdict": record.verdict}


def run_one(opts: Options, ui: Ui, results_path: Path, brief: str = "") -> tuple[RunRecord, bool]:
    """One profile: pipeline, target, tests, reports.  Returns (record,
    interrupted); what was collected is written whatever happens.  With
    --compare-base the base comes first and is the baseline; ``brief``: one
    line of summary starting with it (a base run, a step of a walk)."""
    record = new_record(opts)
    sink = ResultsDir(results_path)
    if opts.kernel.patches or opts.kernel.fragments or opts.kernel.base_config:
        record.inputs["kept"] = keep_inputs(opts, results_path)
    interrupted = False
    void = False  # the tests' results do not count (a lab run that lost its board's lock)
    try:
        if opts.compare_base:
            record.base = base_run(opts, ui, WorkDir(opts.work))
            opts = opts.but(baseline=Path(record.base["results"]))
        pipe = Pipeline(opts, ui, record, results_path / "logs")
        suite = suites.load(opts.testing.suite)
        with pipe.held(f"run {results_path}"):
            prep = pipe.prepare()
            session = None
            with pipe.up(pipe.target(prep, results_path)) as lifecycle:
                session = TestSession(lifecycle, suite, SessionOptions(opts.testing.tests, opts.testing.per_test_timeout,
                                                                       opts.testing.continue_after_crash, opts.testing.rerun_failed,
                                                                       opts.testing.repeat, opts.testing.until_fail,
                                                                       debugkernels.slowdown(opts.kernel.debug),
                                                                       pipe.has_kmemleak(prep), opts.testing.parallel),
                                      record, sink, ui, TestLists(pipe.work.cache, prep.kernel.selftests))
                try:
                    if opts.kernel.coverage:
                        coverage.reset(lifecycle.target)
                        boots = lifecycle.boots
                    with pipe.stage("run"):
                        session.run()
                    if opts.kernel.coverage:
                        def collect() -> dict:
                            with pipe.stage("coverage"):
                                return coverage.after_suite(
                                    lifecycle.target, prep.tree.path, prep.tree.origin.path,
                                    prep.kernel.vmlinux.parent, pipe.coverage_dirs, pipe.series_files,
                                    prep.toolchain.gcov, results_path)
                        record.coverage = coverage.of_run(lifecycle.target, lifecycle.boots - boots, collect)
                        if "why" in record.coverage:
                            ui.warn(f"coverage not collected: {record.coverage['why']}")
                        elif "partial" in record.coverage:
                            ui.warn(f"coverage is partial: {record.coverage['partial']}")
                finally:
                    record.decide()  # results.json has the verdict while a kept VM waits
                    sink.write(record)
                if opts.machine.shell:
                    shell(ui, lifecycle.ssh_command())
                elif opts.machine.keep_vm:
                    hold(ui, lifecycle.target, lifecycle.ssh_command())
        pipe.decode_splats(prep, session.splats)
    except HarnessError as e:
        record.errors.append(e.render())
        ui.error(e.render())
        void = e.voids_verdict
    except KeyboardInterrupt:
        interrupted = True
        record.errors.append("the run was interrupted")
        ui.error("interrupted: tearing down, writing what was collected")
    finally:
        record.decide()
        if void:
            record.verdict = "error"
        sink.write(record)
    if brief:
        render_reports(ui, results_path, None)
        c = record.counts()
        ui.info(f"{brief}: {record.verdict}, {c['pass']} of {len(record.tests)} passed")
        return record, interrupted
    gate = render_reports(ui, results_path, opts.baseline)
    summary_table(record, ui.out, verbose=opts.testing.verbose)
    failing = [t for t in record.tests if t.status in ("fail", "timeout", "crash")]
    work = work_arg(opts.work)
    for t in failing[:10]:
        ui.out.print("reproduce: " + reproducer(opts.machine.profile, opts.testing.suite, t.name, record.inputs, work, t.alongside),
                     highlight=False, markup=False)
    if failing:
        ui.out.print(f"repro: {repro_line(results_path, work=work)}  (the failing tests again; --repeat N, "
                     "--until-fail, --shell)", highlight=False, markup=False)
    ui.out.print(f"results: {results_path}", highlight=False, markup=False)
    if gate is not None:
        record.verdict = gate  # the exit code of a gated run is about change
    return record, interrupted


def work_arg(work: Path) -> str | None:
    """--work for a reproducer line: a pasted line must find this run's
    builds, so a work dir that is not the default one is named."""
    work = Path(work).expanduser().resolve()
    return None if work == default_work().expanduser().resolve() else str(work)


def render_reports(ui: Ui, results_path: Path, baseline: Path | None) -> str | None:
    """summary.md, kcidb.json (and comparison.json against a baseline) from
    what was written; returns the gate verdict when there is a baseline."""
    from harness.reports import markdown

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
    for note in comparison.notes():
        ui.out.print(f"baseline: note: {note}", highlight=False, markup=False)
    ui.out.print(f"gate verdict against {baseline}: {gate.upper()}", highlight=False, markup=False)
    return gate


def report(ui: Ui, results_dir: Path, baseline: Path | None, verbose: bool = False) -> int:
    """``report``: every report of a finished run again, optionally gated."""
    from harness.reports import markdown

    if not (results_dir / "results.json").is_file():
        raise InputError(f"{results_dir} holds no results.json", "pass a results dir written by 'run'")
    gate = render_reports(ui, results_dir, baseline)
    run_ = markdown.load_run(results_dir)
    summary_table(run_, ui.out, verbose=verbose)
    ui.out.print(f"summary: {results_dir / 'summary.md'}", highlight=False, markup=False)
    if gate is not None:
        run_.verdict = gate
    return run_.exit_code()


def merge(ui: Ui, dirs: list[Path], out: Path) -> int:
    """``report --merge``: many results dirs as one verdict."""
    from harness.reports import merge as merge_reports

    cells = merge_reports.cells(dirs)
    v = merge_reports.write(cells, out, warn=ui.warn)
    matrix_table([c.run for c in cells], ui.out, [c.name for c in cells])
    ui.out.print(f"verdict: {v.upper()} over {len(cells)} results dirs; summary: {out / 'summary.md'}",
                 highlight=False, markup=False)
    return merge_reports.exit_code(v)


def hold(ui: Ui, target, ssh_cmd: str) -> None:
    """Keep a booted target until it goes away or Ctrl-C."""
    ui.out.print("the VM is up; connect with:", highlight=False)
    ui.out.print(f"  {ssh_cmd}", highlight=False, markup=False)
    ui.out.print("Ctrl-C stops it.", highlight=False)
    while target.failure() is None:
        time.sleep(1.0)
    ui.warn(f"the VM went away: {target.failure()}")


def shell(ui: Ui, ssh_cmd: str) -> None:
    """An interactive shell in the target; the run goes on when it exits."""
    import shlex
    import subprocess

    ui.out.print(f"shell in the target ({ssh_cmd}); exit it to end the run", highlight=False, markup=False)
    subprocess.call(shlex.split(ssh_cmd))


def repro_options(results_dir: Path, test: str | None, machine: Options) -> Options:
    """The run recorded in ``results_dir`` again: its kernel tree, series,
    configuration, debug kernel, command line, profile and suite (from
    results.json's ``inputs``), for ``test`` (a name or glob; default: the
    tests that failed there).  ``machine`` brings the work dir, accelerator,
    boot timeout and what to do after the tests."""
    from harness.reports import markdown

    run = markdown.load_run(results_dir)
    i = run.inputs or {}
    if not i:
        raise InputError(f"{results_dir} records no inputs (written by an older harness)",
                         "rerun it with 'iommufd-harness run'")
    if test is None:
        failed = [t.name for t in run.tests if t.status in ("fail", "timeout", "crash")]
        if not failed:
            raise InputError(f"nothing failed in {results_dir}", "name the test to reproduce: repro DIR TEST")
        if any(t.binary == "kernel" for t in run.tests if t.name in failed):
            tests = None
        else:  # a test of a parallel run again with the tests that ran alongside it: a race needs both
            partners = [a for t in run.tests if t.name in failed for a in t.alongside]
            tests = ",".join(dict.fromkeys(failed + (partners if i.get("parallel", 1) > 1 else [])))
    else:
        tests = test

    kept = i.get("kept") or {}

    def path(p: str | None, kind: str = "", at: int = 0) -> Path | None:
        """The recorded path, or the results dir's copy of it when it is gone
        (a results dir reproduced on another machine)."""
        if not p:
            return None
        copies = kept.get(kind)
        copy = copies[at] if isinstance(copies, list) and at < len(copies) else copies
        if not Path(p).exists() and isinstance(copy, str) and (Path(results_dir) / copy).exists():
            return Path(results_dir).resolve() / copy
        return Path(p)

    rev = i.get("rev")
    recorded = run.kernel.get("git") or {}
    if recorded and not rev and not i.get("commits") and i.get("kernel_src"):
        # a working tree moves on: take the commit that ran, or refuse if
        # what ran was uncommitted and is not there any more
        if not recorded.get("dirty") and not recorded.get("untracked"):
            rev = recorded.get("head")
        else:
            now = source.git_state(Path(i["kernel_src"]))
            if (now["head"], now["diff_sha256"]) != (recorded.get("head"), recorded.get("diff_sha256")):
                raise InputError(f"{i['kernel_src']} is not the tree that ran in {results_dir}: it was "
                                 f"{recorded.get('describe')} with uncommitted changes, it is {now['describe']} now",
                                 "put the tree back (or commit what ran and use --rev), then repro again")
    return machine.but(
        kernel_src=path(i.get("kernel_src")), rev=rev, commits=i.get("commits"),
        default_patches=i.get("default_patches", True),
        patches=[path(p, "patches", n) for n, p in enumerate(i.get("patches", []))],
        kconfig_add=list(i.get("kconfig_add", [])),
        fragments=[path(f, "fragments", n) for n, f in enumerate(i.get("fragments", []))],
        base_config=path(i.get("config"), "config"), debug=tuple(i.get("debug", [])),
        extra_cmdline=i.get("cmdline", ""),
        coverage=tuple(i.get("coverage", [])), parallel=int(i.get("parallel", 1)),
        board=i.get("board") or machine.machine.board, lab=path(i.get("lab")) or machine.machine.lab,
        profile=run.profile or machine.machine.profile, suite=run.suite or machine.testing.suite, tests=tests)


def prepare(opts: Options, ui: Ui, until: str = "build") -> Prepared:
    """The build side of the pipeline alone (source .. build, or .. config)."""
    work = WorkDir(opts.work).prepare()
    with WorkLock(work):
        pipe = Pipeline(opts, ui, new_record(opts), work.root / "logs")
        with pipe.held(f"{until} only"):  # a lab board's own config needs the board
            return pipe.prepare(until=until)


def boot(opts: Options, ui: Ui) -> int:
    """``boot``: build, boot the VM and keep it until Ctrl-C."""
    work = WorkDir(opts.work).prepare()
    record = new_record(opts)
    results_path = results_dir_for(opts, work)
    with WorkLock(work):
        pipe = Pipeline(opts, ui, record, results_path / "logs")
        prep = pipe.prepare()
        lifecycle = pipe.target(prep, results_path)
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
    suite = suites.load(opts.testing.suite)
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
    selection = suites.select(suite, available, opts.testing.tests)
    return [(binary, n) for binary, names in selection.tests.items() for n in names]
