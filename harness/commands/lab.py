"""``lab check|release`` and ``qemu-board``: a lab file's boards, and the QEMU board that stands in for one."""

from __future__ import annotations

from pathlib import Path

from harness.ui import Ui
from harness.workdir import default_work


def add(sub) -> None:
    p = sub.add_parser("lab", help="a lab file's boards: reachable, what they run, locked or quarantined")
    lsub = p.add_subparsers(dest="lab_command", metavar="ACTION")
    q = lsub.add_parser("check", help="for each board: reachable with its pinned key, its kernel, lock, "
                                      "quarantine, boot methods")
    q.add_argument("lab_file", type=Path, metavar="LAB.toml")
    q.add_argument("name", nargs="?", help="only this board")
    q.set_defaults(func=cmd_lab_check)
    q = lsub.add_parser("release", help="end a board's quarantine and drop its lock (after checking it by hand)")
    q.add_argument("lab_file", type=Path, metavar="LAB.toml")
    q.add_argument("name")
    q.set_defaults(func=cmd_lab_release)

    p = sub.add_parser("qemu-board", help="a QEMU arm64 machine that behaves like a lab board (U-Boot, an "
                                         "installed Debian kernel, sshd, kexec)")
    bsub = p.add_subparsers(dest="board_command", metavar="ACTION")
    q = bsub.add_parser("create", help="make its disk, keys and a lab.toml naming it in DIR")
    q.add_argument("dir", type=Path)
    q.add_argument("--port", type=int, default=0, help="the SSH port on 127.0.0.1 (default: a free one)")
    q.add_argument("--work", type=Path, default=default_work(), help="work dir (its package cache is used)")
    q.set_defaults(func=cmd_qemu_board)
    for action, text in (("start", "run it until stopped (Ctrl-C, SIGTERM)"),
                         ("reset", "its power cycle (QMP system_reset)"), ("console", "print its serial console")):
        q = bsub.add_parser(action, help=text)
        q.add_argument("dir", type=Path)
        q.set_defaults(func=cmd_qemu_board)


def cmd_lab_check(args, ui: Ui) -> int:
    from harness.lab import command as labcmd

    return labcmd.check(args.lab_file, args.name, ui)


def cmd_lab_release(args, ui: Ui) -> int:
    from harness.lab import command as labcmd

    return labcmd.release(args.lab_file, args.name, ui)


def cmd_qemu_board(args, ui: Ui) -> int:
    from harness.lab import command as labcmd

    return labcmd.qemu_board(args.board_command, args.dir, getattr(args, "work", None), getattr(args, "port", None),
                             ui)
