"""The lab file: a TOML file describing boards (the shared state it names
is :mod:`harness.lab.state`).

    state = "/srv/lab/state"        # optional; default: <lab file>.state/ next to it

    [boards.odroid-m1]
    host = "odroid-m1.lab"          # port 22, user root by default
    key = "~/.ssh/lab_ed25519"
    known_hosts = "~/lab/known_hosts"
    arch = "arm64"
    boot = "kexec"                  # kexec | oneshot | installed
    dtb = "rockchip/rk3568-odroid-m1.dtb"   # built here; "firmware": the board's own (/sys/firmware/fdt)
    kernel_config = "running"       # running (/proc/config.gz + lsmod) | defconfig | profile
    power_cycle = "pdu-cycle 4"     # optional: run on this machine when the board does not answer
    console = "conserver-log m1"    # optional: prints the serial console

The state directory is where locks and quarantine marks live: put it on a
filesystem every controller machine of the lab shares (NFS), so a lock is
seen by all of them.  A lock is a lease, renewed while its holder runs:
a holder that died leaves a lock that expires.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness import arches
from harness.errors import InputError
from harness.lab.board import BoardEntry
from harness.lab.state import LabState

BOOT_METHODS = ("kexec", "oneshot", "installed")
KERNEL_CONFIGS = ("running", "defconfig", "profile")


@dataclass(frozen=True)
class Lab:
    path: Path
    boards: dict[str, BoardEntry]
    state: Path
    labgrid_coordinator: str = ""
    labgrid_env: Path | None = None

    def place(self, entry: BoardEntry):
        """The labgrid place of ``entry`` (None if it has none)."""
        if not entry.labgrid:
            return None
        from harness.lab import labgrid

        return labgrid.Place(entry.labgrid, self.labgrid_coordinator, self.labgrid_env, LabState(self.state))

    def board(self, name: str) -> BoardEntry:
        try:
            return self.boards[name]
        except KeyError:
            raise InputError(f"lab {self.path} has no board {name!r}",
                             f"its boards: {', '.join(sorted(self.boards)) or 'none'}") from None


def _path(raw, base: Path) -> Path:
    p = Path(str(raw)).expanduser()
    return p if p.is_absolute() else (base / p)


def load(path: Path) -> Lab:
    path = path.expanduser().resolve()
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise InputError(f"cannot read lab file {path}: {e.strerror}", "pass the lab's TOML file with --lab") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"lab file {path} is not valid TOML: {e}") from None
    base = path.parent
    boards = {}
    for name, b in (doc.get("boards") or {}).items():
        where = f"lab file {path}, board {name}"
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise InputError(f"{where}: a board name is letters, digits, '.', '_' and '-'")
        if not isinstance(b, dict):
            raise InputError(f"{where}: expected a table [boards.{name}]")
        unknown = set(b) - {f for f in BoardEntry.__dataclass_fields__ if f != "name"}
        if unknown:
            raise InputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                             f"known: {', '.join(f for f in BoardEntry.__dataclass_fields__ if f != 'name')}")
        for key in ("key", "known_hosts", "arch") + (() if "labgrid" in b else ("host",)):
            if key not in b:
                raise InputError(f"{where}: '{key}' is missing")
        arch = str(b["arch"])
        if arch not in arches.available():
            raise InputError(f"{where}: arch {arch!r} is not one of {', '.join(arches.available())}")
        boot = str(b.get("boot", "kexec"))
        if boot not in BOOT_METHODS:
            raise InputError(f"{where}: boot = {boot!r}; it is one of {', '.join(BOOT_METHODS)}")
        kcfg = str(b.get("kernel_config", "running"))
        if kcfg not in KERNEL_CONFIGS:
            raise InputError(f"{where}: kernel_config = {kcfg!r}; it is one of {', '.join(KERNEL_CONFIGS)}")
        try:
            port = int(b.get("port", 22))
            timeout = float(b.get("boot_timeout", 300))
        except (TypeError, ValueError) as e:
            raise InputError(f"{where}: {e}") from None
        boards[name] = BoardEntry(
            name, str(b.get("host", "")), port, str(b.get("user", "root")), _path(b["key"], base),
            _path(b["known_hosts"], base), arch, boot, b.get("dtb"), kcfg, b.get("initrd"), b.get("cmdline"),
            str(b.get("reboot", "reboot")), b.get("power_cycle"), b.get("console"), timeout,
            str(b.get("profile", f"board-{arch}")), str(b["labgrid"]) if "labgrid" in b else None)
    state = _path(doc["state"], base) if "state" in doc else base / f"{path.stem}.state"
    lg = doc.get("labgrid") or {}
    if not isinstance(lg, dict) or set(lg) - {"coordinator", "env"}:
        raise InputError(f"lab file {path}: [labgrid] takes coordinator and env")
    coordinator = str(lg.get("coordinator") or os.environ.get("LG_COORDINATOR") or "127.0.0.1:20408")
    return Lab(path, boards, state, coordinator, _path(lg["env"], base) if "env" in lg else None)
