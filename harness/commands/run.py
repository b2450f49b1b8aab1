"""``run``: the whole pipeline, one profile or a matrix of them."""

from __future__ import annotations

from pathlib import Path

from harness import jobs, profiles
from harness.commands import args as shared
from harness.errors import InputError
from harness.ui import Ui


def add(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline: patch, build, boot, test, report")
    shared.common(p)
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
    shared.board_args(p)
    p.add_argument("--keep-vm", action="store_true",
                   help="after the tests, keep the VM running and print how to SSH in (Ctrl-C ends it)")
    p.set_defaults(func=cmd_run)


def cmd_run(args, ui: Ui) -> int:
    opts = shared.options(args)
    matrix = None
    if args.profiles is not None:
        matrix = shared.names(args.profiles)
        if not matrix:
            raise InputError(f"--profiles {args.profiles!r} names no profile",
                             f"pass profile names separated by commas; available: {', '.join(profiles.available())}")
    return jobs.run(opts, ui, matrix)
