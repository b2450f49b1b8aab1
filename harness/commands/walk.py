"""``walk``: a series one patch at a time (or bisected): which patch broke it."""

from __future__ import annotations

from pathlib import Path

from harness.commands import args as shared
from harness.ui import Ui


def add(sub) -> None:
    p = sub.add_parser("walk", help="apply a series one patch at a time, run the suite after each: which patch "
                                    "broke something")
    shared.common(p)
    p.add_argument("--results", type=Path, metavar="DIR",
                   help="where to write the walk (default: a new dir under <work>/results)")
    p.add_argument("--bisect", action="store_true",
                   help="the base, the whole series, then halves: log2(n) steps instead of n")
    p.set_defaults(func=cmd_walk)


def cmd_walk(args, ui: Ui) -> int:
    from harness import walk

    return walk.walk(shared.options(args), ui, bisect=args.bisect)
