"""Command line: ``iommufd-harness run|gate|walk|repro|build|boot|config|list-tests|report|nightly|lab|...``.

This module only puts the subcommands of :mod:`harness.commands` together
and runs one; errors the user can act on end as one message and exit code
2, never as a traceback."""

from __future__ import annotations

import argparse
import signal
import sys

from harness import __version__, profiles, suites
from harness.commands import args as shared
from harness.commands import gate, kernel, lab, nightly, repro, report, run, walk
from harness.errors import EXIT_ERROR, EXIT_INTERRUPTED, HarnessError
from harness.pipeline import Options
from harness.ui import Ui

COMMANDS = (run, gate, walk, repro, kernel, report, nightly, lab)  # in the order --help lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iommufd-harness",
        description="Build a kernel with CONFIG_IOMMUFD_TEST, boot it under QEMU behind an emulated IOMMU "
                    "and run the iommufd selftests in it.",
        epilog="exit codes: 0 all tests passed, 1 a test failed, 2 no verdict (bad input, build or boot failure), "
               "130 interrupted")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    p = sub.add_parser("profiles", help="list the vIOMMU/QEMU profiles")
    p.set_defaults(func=cmd_profiles)
    p = sub.add_parser("suites", help="list the test suites")
    p.set_defaults(func=cmd_suites)
    return parser


def options(args) -> Options:
    """The pipeline's options from parsed arguments (see harness.commands.args)."""
    return shared.options(args)


def cmd_profiles(args, ui: Ui) -> int:
    for name in profiles.available():
        p = profiles.load(name)
        ui.out.print(f"{name:<22} {p.arch:<7} {p.description}", highlight=False, markup=False)
    return 0


def cmd_suites(args, ui: Ui) -> int:
    for name in suites.available():
        s = suites.load(name)
        ui.out.print(f"{name:<10} {s.description}", highlight=False, markup=False)
    return 0


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    ui = Ui(getattr(args, "quiet", False))
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.func(args, ui)
    except HarnessError as e:
        ui.error(e.render())
        return EXIT_ERROR
    except OSError as e:
        # disk full, read-only or unwritable paths, ...: say which path, no traceback
        where = f" ({e.filename})" if e.filename else ""
        ui.error(f"error [host]: {e.strerror or e}{where}\n  hint: check free space and permissions there")
        return EXIT_ERROR
    except KeyboardInterrupt:
        ui.error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
