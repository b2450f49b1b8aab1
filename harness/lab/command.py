"""The lab's commands: ``lab check`` (what each board can do, probed),
``lab release`` (a quarantine or lock ended by hand) and ``qemu-board``
(the QEMU lab board: create, start, reset, console)."""

from __future__ import annotations

import sys
from pathlib import Path

from harness import lab
from harness.errors import EXIT_ERROR, HarnessError
from harness.ui import Ui


def check(lab_file: Path, only: str | None, ui: Ui) -> int:
    """``lab check``: each board (or ``name``) as the lab file describes it,
    probed: reachable, its kernel, the boot methods it can do, its console,
    quarantine and lock (``only``: that board); exit 2 if one cannot do what
    the lab says."""
    from harness.lab import labgrid

    the_lab = lab.load(lab_file)
    names = [only] if only else sorted(the_lab.boards)
    state = lab.LabState(the_lab.state)
    bad = 0

    def say(text: str) -> None:
        ui.out.print(text, highlight=False, markup=False)

    for name in names:
        entry = the_lab.board(name)
        place = the_lab.place(entry)
        if place is None:
            say(f"{name}: {entry.user}@{entry.host}:{entry.port} ({entry.arch}, boot {entry.boot})")
            q = state.quarantined(name)
            held = state.lock_info(name)
            say("  quarantined: " + (f"since {q.get('since')}: {q.get('reason')}" if q else "no"))
            say("  locked: " + (lab.describe_lock(held) if held else "no"))
            bad += _check_board(entry, say) + (1 if q else 0)
            continue
        say(f"{name}: labgrid place {place.name} at {place.coordinator} ({entry.arch}, boot {entry.boot})")
        try:
            shown = place.show()
        except HarnessError as e:
            bad += 1
            say(f"  reachable: no: {e.message}")
            continue
        q = place.quarantined(name, shown)
        holder = place.acquired_by(shown)
        say("  quarantined: " + (f"since {q.get('since')}: {q.get('reason')}" if q else "no"))
        say("  locked: " + (f"acquired by {holder} (labgrid)" if holder else "no"))
        if q:
            bad += 1
        if holder:
            say("  reachable: not checked while the place is acquired")
            continue
        try:
            with labgrid.PlaceLock(place, name):
                port = place.serial_port() if entry.console is None else None
                console = (f"labgrid NetworkSerialPort {port.get('host')}:{port.get('port')} (read through its "
                           "SerialDriver for a run)" if port else None)
                bad += _check_board(place.resolve(entry), say, console)
        except HarnessError as e:
            bad += 1
            say(f"  reachable: no: {e.message}")
    return EXIT_ERROR if bad else 0


def _check_board(entry: lab.BoardEntry, say, console: str | None = None) -> int:
    """lab check's probe of one board; 1 if it cannot do what the lab says."""
    from harness.lab import deploy

    try:
        f = deploy.probe(entry, enforce=False)
    except HarnessError as e:
        say(f"  reachable: no: {e.message}")
        return 1
    say(f"  reachable: yes at {entry.user}@{entry.host}:{entry.port} (host key matches {entry.known_hosts})")
    say(f"  kernel: {f['release']} ({f['machine']}), build-id {f['build_id'] or 'unknown'}")
    fs = f["boot_fs"].split()
    oneshot = deploy.oneshot_ready(f["boot_fs"])
    can = {"installed": True, "kexec": f["kexec"], "oneshot": oneshot}
    shown = {"oneshot": "oneshot (if its U-Boot has the hook: README, Real boards)"}
    say(f"  boot methods: {', '.join(shown.get(m, m) for m, ok in can.items() if ok)}")
    say(f"  U-Boot boot files: {', '.join(f['uboot_files']) or 'none under /boot'}")
    console = console or (f"the lab's command: {entry.console}" if entry.console else None)
    say(f"  console: {console or 'none (a trial kernel that hangs is found by its boot timeout only)'}")
    if not oneshot:
        say(f"  oneshot: no: /boot is {' '.join(fs[:2]) or 'not mounted'}, it needs U-Boot's FAT partition "
            "there, read-write")
    bad = 0
    if not can[entry.boot]:
        bad = 1
        say(f"  the lab says boot = \"{entry.boot}\", which this board cannot do")
    if f["kexec"] and f["gic_its"] and not f["efi"]:
        say("  note: a GICv3 ITS without EFI: its LPI tables are not reserved across kexec, and a trial kernel "
            "may be overwritten where they are; prefer oneshot")
    return bad


def release(lab_file: Path, name: str, ui: Ui) -> int:
    """``lab release``: end a board's quarantine and any lock on it."""
    the_lab = lab.load(lab_file)
    entry = the_lab.board(name)
    place = the_lab.place(entry)
    done = place.unquarantine(name) if place is not None else lab.LabState(the_lab.state).release(name)
    ui.out.print(f"{name}: {', '.join(done) if done else 'was neither quarantined nor locked'}",
                 highlight=False, markup=False)
    return 0


def qemu_board(command: str, where: Path, work: Path | None, port: int | None, ui: Ui) -> int:
    """``qemu-board create|start|reset|console DIR``."""
    from harness.lab import qemuboard
    from harness.workdir import WorkDir

    dest = where.expanduser().resolve()
    if command == "create":
        info = qemuboard.create(dest, WorkDir(work.expanduser().resolve()), port=port)
        ui.out.print(f"board in {dest}: installed kernel {info['installed']['release']}, SSH on "
                     f"127.0.0.1:{info['port']}, serial console on 127.0.0.1:{info['console_port']} (raw TCP)",
                     highlight=False, markup=False)
        ui.out.print(f"lab file: {dest / 'lab.toml'}; start it: iommufd-harness qemu-board start {dest}",
                     highlight=False, markup=False)
        return 0
    if command == "start":
        return qemuboard.start(dest)
    if command == "reset":
        qemuboard.reset(dest)
        return 0
    qemuboard.load(dest)
    sys.stdout.write(qemuboard.console(dest))
    return 0
