"""``report``: re-render a results dir, or merge many into one verdict."""

from __future__ import annotations

from pathlib import Path

from harness import jobs
from harness.errors import InputError
from harness.ui import Ui


def add(sub) -> None:
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
