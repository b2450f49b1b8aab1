"""``build``, ``boot``, ``config``, ``list-tests``: parts of the pipeline alone."""

from __future__ import annotations

import fnmatch

from harness import arches, jobs, profiles
from harness.commands import args as shared
from harness.errors import InputError
from harness.kconfig import fragments as kconfig
from harness.ui import Ui


def add(sub) -> None:
    p = sub.add_parser("build", help="patch, configure and build the kernel and the selftests")
    shared.common(p, tests=False)
    shared.board_args(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("boot", help="build, boot the VM and print how to SSH into it (Ctrl-C ends it)")
    shared.common(p, tests=False)
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("config", help="only patch and configure; show symbols, or explain why one has its value")
    shared.common(p, tests=False)
    shared.board_args(p)
    p.add_argument("--arch", choices=arches.available(),
                   help="configure the guest kernel of this architecture (its first profile)")
    p.add_argument("--show", action="append", default=[], metavar="GLOB",
                   help="print the final value of matching symbols, e.g. 'IOMMUFD*' (repeatable)")
    p.add_argument("--explain", action="append", default=[], metavar="CONFIG_X[=v]",
                   help="explain a symbol's value (and how to get v), with kconfiglib (repeatable)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("list-tests", help="list the selftests a suite selects (builds if needed)")
    shared.common(p)
    p.set_defaults(func=cmd_list_tests)


def cmd_build(args, ui: Ui) -> int:
    opts = shared.options(args)
    jobs.validate(opts, tests=False)
    prep = jobs.prepare(opts, ui)
    ui.out.print(f"kernel:    {prep.kernel.image}", highlight=False)
    ui.out.print(f"vmlinux:   {prep.kernel.vmlinux} (build-id {prep.kernel.build_id})", highlight=False)
    for name, path in prep.kernel.selftests.items():
        ui.out.print(f"selftest:  {path}", highlight=False)
    return 0


def cmd_config(args, ui: Ui) -> int:
    opts = shared.options(args)
    if args.arch:
        matching = [n for n in profiles.available() if profiles.load(n).arch == args.arch]
        if not matching:
            raise InputError(f"no profile for {args.arch}")
        opts.machine.profile = next((n for n in matching if n == opts.machine.profile), matching[0])
    jobs.validate(opts, tests=False)
    prep = jobs.prepare(opts, ui, until="config")
    values = kconfig.read_config(prep.config.config)
    ui.out.print(f"config: {prep.config.config} ({prep.profile.arch}, profile {prep.profile.name})",
                 highlight=False, markup=False)
    for glob in args.show:
        pattern = glob if glob.startswith("CONFIG_") else "CONFIG_" + glob
        for sym in sorted(fnmatch.filter(values, pattern)):
            shown = "is not set" if values[sym] == "n" else f"={values[sym]}"
            ui.out.print(f"{sym}{shown if shown.startswith('=') else ' ' + shown}", highlight=False, markup=False)
    if args.explain:
        from harness.kconfig import explain
        from harness.stages import config as config_stage

        model = config_stage.model(prep.config_request, prep.config.config)
        for sym in args.explain:
            ui.out.print(explain.explain_symbol(model, sym), highlight=False, markup=False)
    return 0


def cmd_boot(args, ui: Ui) -> int:
    opts = shared.options(args)
    jobs.validate(opts, tests=False)
    return jobs.boot(opts, ui)


def cmd_list_tests(args, ui: Ui) -> int:
    opts = shared.options(args)
    jobs.validate(opts)
    for binary, name in jobs.list_tests(opts, ui):
        ui.out.print(f"{binary} {name}", highlight=False, markup=False)
    return 0
