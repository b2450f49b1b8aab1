"""``make bench``: what the harness costs, next to the physical floor measured
in the same run, as medians of ``--repeat`` runs (at least 3).

For each profile and kernel (the default one and every ``--debug`` one):

- one-file build: ``iommufd-harness build`` after a change to one file of
  ``drivers/iommu/iommufd/`` (a patch that alternates between two versions
  of it), against the same incremental ``make`` of the kernel image run
  directly on the same tree and build directory.  ccache is off for both;
- run (no change): ``iommufd-harness run --suite S`` with nothing to
  rebuild, against a bare QEMU boot of the same kernel, machine and image
  whose init runs the same tests and powers off; boot (to SSH, verified)
  and the suite are shown against the bare boot's time to init and its
  tests; with ``--parallel N`` the same again with ``run --parallel N``,
  against a bare boot whose init runs the tests in N shells at once;
- edit -> verdict (``--edit``): one file of ``drivers/iommu/iommufd/``
  edited in a ``--kernel-src`` tree, then ``run`` to the verdict, against
  the same incremental ``make`` run directly plus the bare boot and tests;
- compare-base (``--compare-base``): ``run --compare-base --patches P``
  with the base cached, against the same ``run --patches P`` without it;
- lab board (``--lab-board``): on the QEMU lab board, ``run --lab`` on
  the arm64 kernel (deploy + trial boot + verify, the suite, the return),
  against the same kexec done by hand over SSH (copy, ``kexec -l``,
  ``kexec -e``, SSH again) and a plain reboot of the installed kernel;
  and a trial kernel that hangs (detected and power cycled back) against
  its budget: twice the normal trial boot plus a power cycle to SSH; and
  the same run with ``boot = "oneshot"`` (through U-Boot's hook) against
  the same by hand (copy, the one-shot script, reboot, suite, reboot);
- coverage (``--coverage``): ``run --coverage --patches P`` (P alternates
  between two one-file changes, so each run rebuilds that file) on the
  first ``--debug`` kernel (else the default one; every kernel has the gcov
  core), against the same runs without ``--coverage``: the whole
  run, the build stage, and the suite with the counters' reset and
  collection and gcovr next to the suite alone;
- cold build (``--cold``): ``iommufd-harness build`` in an empty work dir,
  against ``make`` of the kernel image with the same .config in an empty
  build directory, ccache off.

    python -m harness.bench [--work DIR] [--profile P]... [--debug D]... [--suite S]... [--repeat N] [--cold]

Figures are printed as a table (harness, floor, ratio) and written to
``<work>/bench/bench-<time>.json``.  Absolute times on a shared machine are
noise; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

from harness import debugkernels
from harness.errors import HarnessError
from harness.workdir import WorkDir
from harness.bench import common
from harness.bench.common import Figure
from harness.bench.builds import cold_build, one_file_build
from harness.bench.runs import compare_base_runs, coverage_runs, edit_to_verdict, no_change_runs
from harness.bench.labboard import lab_board_runs


def fmt(v: float | None, unit: str = " s") -> str:
    return "-" if v is None else f"{v:.1f}{unit}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("work"), help="work dir (default ./work; builds are reused)")
    ap.add_argument("--profile", action="append", help="default x86_64-vtd (repeatable)")
    ap.add_argument("--debug", action="append", default=None,
                    help="a debug kernel to measure next to the default one, e.g. lockdep,kasan (repeatable)")
    ap.add_argument("--suite", action="append", help="default access (repeatable)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    ap.add_argument("--cold", action="store_true", help="also time cold builds (long)")
    ap.add_argument("--no-build", action="store_true", help="skip the one-file build")
    ap.add_argument("--no-run", action="store_true", help="skip the no-change runs")
    ap.add_argument("--parallel", type=int, default=1, metavar="N",
                    help="also time the no-change runs with --parallel N, against a bare boot running the tests "
                         "in N lanes")
    ap.add_argument("--no-default-kernel", action="store_true", help="measure only the --debug kernels")
    ap.add_argument("--edit", action="store_true",
                    help="also time the edit -> verdict loop on a --kernel-src tree against make + a bare boot "
                         "(default kernel, first suite)")
    ap.add_argument("--lab-board", action="store_true",
                    help="also time a run on the QEMU lab board (kexec deploy, trial boot, return) against the "
                         "same steps by hand, and a hanging trial kernel's rollback against its budget")
    ap.add_argument("--coverage", action="store_true",
                    help="also time run --coverage (after a one-file change) against the same run without it "
                         "(the first --debug kernel, else the default one; first suite)")
    ap.add_argument("--compare-base", action="store_true",
                    help="also time run --compare-base with a cached base against the same run without it "
                         "(default kernel, first suite)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    work = args.work.expanduser().resolve()
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    common.LOG = log = WorkDir(work).root / "bench" / f"bench-{stamp}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    kernels = [()] * (not args.no_default_kernel) + [debugkernels.parse([d]) for d in (args.debug or [])]
    if not kernels:
        ap.error("--no-default-kernel needs a --debug kernel")
    cov_kernel = next((d for d in kernels if d), kernels[0])  # the gate's kernel: the first --debug one
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="iommufd-bench-"))
    try:
        for profile in args.profile or ["x86_64-vtd"]:
            for debug in kernels:
                label = f"{profile} {'+'.join(debug) or 'default'}"
                figs: list[Figure] = []
                if args.cold:
                    figs.append(cold_build(work, profile, debug, args.repeat, tmp))
                if not args.no_build:
                    figs.append(one_file_build(work, profile, debug, args.repeat, tmp))
                for suite in (args.suite or ["access"]) if not args.no_run else []:
                    figs += no_change_runs(work, profile, debug, suite, args.repeat, tmp)
                    if args.parallel > 1:
                        figs += no_change_runs(work, profile, debug, suite, args.repeat, tmp, args.parallel)
                if args.edit and not debug:
                    figs.append(edit_to_verdict(work, profile, (args.suite or ["access"])[0], args.repeat, tmp))
                if args.compare_base and not debug:
                    figs.append(compare_base_runs(work, profile, debug, (args.suite or ["access"])[0], args.repeat,
                                                  tmp))
                if args.coverage and debug == cov_kernel and profile == (args.profile or ["x86_64-vtd"])[0]:
                    figs += coverage_runs(work, profile, debug, (args.suite or ["access"])[0], args.repeat, tmp)
                if args.lab_board and not debug and profile == (args.profile or ["x86_64-vtd"])[0]:
                    figs += lab_board_runs(work, (args.suite or ["access"])[0], args.repeat, tmp)
                for fig in figs:
                    row = {"kernel": label, **fig.row()}
                    rows.append(row)
                    print(f"{label:32} {row['what']:24} harness {fmt(row['harness_s']):>8}  floor "
                          f"{fmt(row['floor_s']):>8}  ratio {fmt(row['ratio'], 'x'):>6}  ({row['runs']} runs"
                          + (f", {row['objects']} objects" if "objects" in row else "") + ")",
                          flush=True)
    except HarnessError as e:
        print(e.render() + f"\n(every command's output: {log})", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = log.with_suffix(".json")
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"figures: {out}")
    return 0
