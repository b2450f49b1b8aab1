"""Run figures: no change, edit -> verdict, --compare-base, --coverage, each
next to its floor."""

from __future__ import annotations

from pathlib import Path

from harness import proc
from harness.errors import HarnessError
from harness.bench import common
from harness.bench.common import (CHANGED_FILE, NO_CCACHE, Figure, harness_argv, prepare, results_of, run_results,
                                  timed)
from harness.bench.floor import bare_boot
from harness.bench.builds import make_with, variants


def no_change_runs(work: Path, profile: str, debug: tuple[str, ...], suite: str, repeat: int,
                   tmp: Path, parallel: int = 1) -> list[Figure]:
    """The no-change run; with ``parallel`` > 1 in that many lanes
    (``--parallel``), against a bare boot whose init runs the same lanes."""
    lanes = f", --parallel {parallel}" if parallel > 1 else ""
    run_fig, boot_fig = Figure(f"run {suite} (no change{lanes})"), Figure("boot to SSH")
    suite_fig = Figure(f"{suite} suite{lanes}")
    debug_args = ["--debug", ",".join(debug)] if debug else []
    debug_args += ["--parallel", str(parallel)] if parallel > 1 else []
    k = prepare(work, profile, debug, [])
    for i in range(repeat):
        results = run_results(tmp, profile, debug, suite, parallel, i)
        elapsed, code = timed(harness_argv("run", "--quiet", "--work", work, "--results", results, "--profile",
                                           profile, "--suite", suite, *debug_args))
        data = results_of(results)
        if code != 0 or data.get("verdict") != "pass":
            raise HarnessError(f"bench: the run did not pass (exit {code}): {data.get('errors')}",
                               log=str(results))
        if data["kernel"].get("rebuilt"):
            raise HarnessError("bench: a no-change run rebuilt the kernel")
        run_fig.harness.append(elapsed)
        boot_fig.harness.append(data["stages"]["boot"])
        suite_fig.harness.append(data["stages"]["run"])
        tests: dict[str, list[str]] = {}
        for t in data["tests"]:
            tests.setdefault(t["binary"], []).append(t["name"])
        to_init, testing = bare_boot(k, tests, tmp, data["qemu"]["accel"], parallel)
        run_fig.floor.append(to_init + testing)
        boot_fig.floor.append(to_init)
        suite_fig.floor.append(testing)
    return [run_fig, boot_fig, suite_fig]


def edit_to_verdict(work: Path, profile: str, suite: str, repeat: int, tmp: Path) -> Figure:
    """The developer's loop: edit one file of drivers/iommu/iommufd/ in a
    --kernel-src tree, ``run`` to the verdict; against the floor: the same
    incremental ``make`` run directly plus a bare boot of that kernel whose
    init runs the same tests.  The tree is a copy of Debian's source made
    here (its first build comes from ccache when that is warm)."""
    fig = Figure(f"edit -> verdict ({suite})")
    k0 = prepare(work, profile, (), [])
    tree = tmp / "linux"
    if not tree.exists():
        proc.run(["cp", "-a", f"{k0.origin}/.", str(tree)], timeout=1800, log=common.LOG)
    _, _, ta, tb = variants(k0.origin, tmp)
    argv = harness_argv("run", "--quiet", "--work", work, "--profile", profile, "--suite", suite,
                        "--kernel-src", tree)
    (tree / CHANGED_FILE).write_text(ta)
    elapsed, code = timed(argv + ["--results", tmp / "edit-first"])  # the first build of this tree
    if code != 0:
        raise HarnessError(f"bench: the first run on the copied tree failed (exit {code})", log=str(tmp / "edit-first"))
    k = prepare(work, profile, (), [], kernel_src=tree)
    for i in range(repeat):
        mine, other = (tb, ta) if i % 2 == 0 else (ta, tb)
        (tree / CHANGED_FILE).write_text(mine)
        results = tmp / f"edit-{i}"
        elapsed, code = timed(argv + ["--results", results], env=NO_CCACHE)
        data = results_of(results)
        if code != 0 or not data.get("kernel", {}).get("rebuilt"):
            raise HarnessError(f"bench: the run after an edit failed or rebuilt nothing (exit {code})",
                               log=str(results))
        fig.harness.append(elapsed)
        # the floor: the same edit built by make directly, then the bare boot
        built, code = make_with(k, other, build_back=True)
        if code != 0:
            raise HarnessError(f"bench: the direct make failed (exit {code})")
        tests: dict[str, list[str]] = {}
        for t in data["tests"]:
            tests.setdefault(t["binary"], []).append(t["name"])
        to_init, testing = bare_boot(k, tests, tmp, data["qemu"]["accel"])
        fig.floor.append(built + to_init + testing)
    return fig


def compare_base_runs(work: Path, profile: str, debug: tuple[str, ...], suite: str, repeat: int,
                      tmp: Path) -> Figure:
    """``run --compare-base --patches P`` with the base cached, against the
    same ``run --patches P`` without a base: the comparison's own cost."""
    fig = Figure(f"compare-base {suite} (cached base)")
    debug_args = ["--debug", ",".join(debug)] if debug else []
    k = prepare(work, profile, debug, [])
    series, _, _, _ = variants(k.origin, tmp)
    base = harness_argv("run", "--quiet", "--work", work, "--profile", profile, "--suite", suite, *debug_args,
                        "--patches", series)
    for i in range(repeat + 1):
        tag = f"{profile}-{'+'.join(debug) or 'default'}-{suite}-{i}"
        elapsed, code = timed(base + ["--compare-base", "--results", tmp / f"cmp-{tag}"])
        data = results_of(tmp / f"cmp-{tag}")
        if code != 0 or not data.get("base"):
            raise HarnessError(f"bench: the --compare-base run did not pass (exit {code}): {data.get('errors')}",
                               log=str(tmp / f"cmp-{tag}"))
        if i == 0:
            continue  # the first one runs (or finds) the base and builds the series
        if not data["base"].get("cached"):
            raise HarnessError("bench: the base was not cached on a second --compare-base run")
        fig.harness.append(elapsed)
        elapsed, code = timed(base + ["--results", tmp / f"plain-{tag}"])
        if code != 0:
            raise HarnessError(f"bench: the run with the series did not pass (exit {code})")
        fig.floor.append(elapsed)
    return fig


def coverage_runs(work: Path, profile: str, debug: tuple[str, ...], suite: str, repeat: int,
                  tmp: Path) -> list[Figure]:
    """``run --coverage`` after a one-file change against the same run
    without it.  Each mode runs once untimed first: switching it on or off
    rebuilds the profiled directories, which is not what a run costs."""
    run_fig, build_fig, suite_fig = (Figure(f"coverage: run {suite}"), Figure("coverage: build stage"),
                                     Figure("coverage: suite+collect"))
    debug_args = ["--debug", ",".join(debug)] if debug else []
    k = prepare(work, profile, debug, [])
    pa, pb, _, _ = variants(k.origin, tmp)
    base = harness_argv("run", "--quiet", "--work", work, "--profile", profile, "--suite", suite, *debug_args)
    for mode in ("off", "on"):
        for i in range(repeat + 1):
            results = tmp / f"cov-{mode}-{i}"
            elapsed, code = timed(base + ["--patches", pa if i % 2 else pb, "--results", results]
                                  + (["--coverage"] if mode == "on" else []))
            data = results_of(results)
            if code != 0 or data.get("verdict") != "pass" or (mode == "on") != bool(data.get("coverage")):
                raise HarnessError(f"bench: the run with coverage {mode} did not pass (exit {code}): "
                                   f"{data.get('errors')}", log=str(results))
            if i == 0:
                continue
            stages = data["stages"]
            figs = ((run_fig, elapsed), (build_fig, stages["build"]),
                    (suite_fig, stages["run"] + stages.get("coverage", 0.0)))
            for fig, value in figs:
                (fig.harness if mode == "on" else fig.floor).append(value)
    return [run_fig, build_fig, suite_fig]
