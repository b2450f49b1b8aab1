"""``nightly``: one night of a nightly plan."""

from __future__ import annotations

from pathlib import Path

from harness.ui import Ui
from harness.workdir import default_work


def add(sub) -> None:
    p = sub.add_parser("nightly", help="one night of a nightly plan: every profile and board x suite, one "
                                       "results dir per cell, merged reports with the history of earlier nights",
                       description="PLAN.toml names root, kernel_src, rev, patches, default_patches, suites, "
                                   "profiles, debug, history and [[boards]] (lab, board); see README, Nightly.")
    p.add_argument("plan", type=Path, metavar="PLAN.toml")
    p.add_argument("--night", metavar="NAME", help="this night's directory under the plan's root (default: the time)")
    p.add_argument("--work", type=Path, default=default_work(), help="work dir (default ./work)")
    p.add_argument("--accel", choices=["auto", "tcg", "kvm"], default="auto")
    p.set_defaults(func=cmd_nightly)


def cmd_nightly(args, ui: Ui) -> int:
    from harness import nightly

    return nightly.night(nightly.load(args.plan), args.work.expanduser().resolve(), ui, args.night, args.accel)
