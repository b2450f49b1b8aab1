"""``repro``: the kernel of a results dir rebuilt exactly, a test of it run again."""

from __future__ import annotations

from pathlib import Path

from harness import jobs
from harness.commands import args as shared
from harness.errors import InputError
from harness.pipeline import Options
from harness.ui import Ui


def add(sub) -> None:
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
    shared.machine(p)
    p.set_defaults(func=cmd_repro)


def cmd_repro(args, ui: Ui) -> int:
    if args.repeat < 1:
        raise InputError("--repeat must be at least 1")
    machine = Options.of(work=args.work.expanduser().resolve(), accel=args.accel, boot_timeout=args.boot_timeout,
                      keep_vm=args.keep_vm, shell=args.shell, results=args.results,
                      repeat=args.repeat if args.repeat > 1 or not args.until_fail else 100,
                      until_fail=args.until_fail)
    opts = jobs.repro_options(args.results_dir, args.test, machine)
    if args.cmdline:
        opts.machine.extra_cmdline = " ".join(x for x in (opts.machine.extra_cmdline, args.cmdline) if x)
    return jobs.run(opts, ui)
