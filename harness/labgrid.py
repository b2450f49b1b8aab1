"""A lab board reached through a labgrid place (optional extra
``iommufd-harness[labgrid]``).

    [labgrid]
    coordinator = "labgrid.lab:20408"   # default: $LG_COORDINATOR, else 127.0.0.1:20408
    env = "lab-env.yaml"                # optional: a labgrid environment with the place's
                                        # power (and other) drivers
    [boards.odroid-m1]
    labgrid = "odroid-m1"               # the place; host, port and user come from its
    key = "~/.ssh/lab_ed25519"          # NetworkService unless given here
    known_hosts = "~/lab/known_hosts"
    arch = "arm64"

The place is acquired for the whole run and released on every exit path
(labgrid's coordinator is the lock every controller sees; one held by
someone else is refused, or waited for with --lock-wait, with its holder
named).  Without a ``power_cycle`` in the lab file the place's power driver
is used (``labgrid-client power cycle``).  A board that does not come back
is tagged ``iommufd_harness_quarantine=yes`` on its place; later runs refuse
it until ``iommufd-harness lab release``.  SSH stays the harness's own
(paramiko, with the lab file's pinned key): labgrid only lends the place.

This talks to labgrid through ``labgrid-client``, its command line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError
from harness.lab import BoardEntry, LabError, LabState

QUARANTINE_TAG = "iommufd_harness_quarantine"
DEFAULT_COORDINATOR = "127.0.0.1:20408"
ACQUIRED_BY = re.compile(r"already acquired by (\S+?)\.?(\s|$)")


def client_binary() -> str:
    here = Path(sys.executable).parent / "labgrid-client"
    found = str(here) if here.is_file() else shutil.which("labgrid-client")
    if found is None:
        raise InputError("the lab names a labgrid place, but labgrid is not installed",
                         "pip install 'iommufd-harness[labgrid]' (make setup installs it)")
    return found


@dataclass
class Place:
    """One labgrid place, through labgrid-client."""

    name: str
    coordinator: str
    env: Path | None = None
    state: LabState | None = None  # the lab's own state: the quarantine's reason, next to the tag

    def argv(self, *args: str, with_env: bool = False) -> list[str]:
        argv = [client_binary(), "-x", self.coordinator, "-p", self.name]
        if with_env and self.env is not None:
            argv += ["-c", str(self.env)]
        return argv + list(args)

    def run(self, *args: str, timeout: float = 60.0, with_env: bool = False) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("LG_ENV", None)  # only what the lab file says
        try:
            return subprocess.run(self.argv(*args, with_env=with_env), capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise LabError(f"labgrid place {self.name}: 'labgrid-client {' '.join(args)}' did not answer "
                           f"within {timeout:.0f} s (coordinator {self.coordinator})") from None

    def _error(self, res: subprocess.CompletedProcess) -> str:
        lines = [x.strip() for x in (res.stderr + res.stdout).splitlines() if x.strip()]
        told = [x for x in lines if "Error" in x or "error" in x] or lines
        return (told[-1] if told else f"status {res.returncode}")[:600]

    def show(self) -> str:
        res = self.run("show")
        if res.returncode != 0:
            raise LabError(f"labgrid place {self.name}: {self._error(res)}",
                           f"check the place (labgrid-client -x {self.coordinator} places) and the coordinator")
        return res.stdout

    def acquired_by(self, shown: str | None = None) -> str | None:
        m = re.search(r"^\s*acquired: (.+)$", shown if shown is not None else self.show(), re.M)
        who = m.group(1).strip() if m else "None"
        return None if who == "None" else who

    def tags(self, shown: str | None = None) -> dict[str, str]:
        m = re.search(r"^\s*tags: (.+)$", shown if shown is not None else self.show(), re.M)
        return dict(t.split("=", 1) for t in m.group(1).split(", ") if "=" in t) if m else {}

    # -- lock -------------------------------------------------------------------------

    def acquire(self, wait: float = 0.0, say=None) -> None:
        deadline = time.monotonic() + wait
        told = False
        while True:
            res = self.run("acquire")
            if res.returncode == 0:
                return
            err = self._error(res)
            m = ACQUIRED_BY.search(err)
            if m is None:
                raise LabError(f"labgrid place {self.name} could not be acquired: {err}",
                               f"see labgrid-client -x {self.coordinator} -p {self.name} show")
            holder = m.group(1)
            if time.monotonic() >= deadline:
                raise LabError(f"board {self.name} is locked by {holder} (labgrid place {self.name}, "
                               f"coordinator {self.coordinator})",
                               "wait for that run to end (--lock-wait SECONDS waits), or ask its holder to "
                               f"release it (labgrid-client -p {self.name} release)")
            if not told and say:
                say(f"board {self.name} is locked by {holder} (labgrid): waiting")
                told = True
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))

    def release(self) -> None:
        self.run("release")

    # -- what the place lends -----------------------------------------------------------

    def network_service(self) -> dict:
        """The place's NetworkService (address, port, username); the place
        must be acquired."""
        import yaml  # a labgrid dependency

        res = self.run("env")
        if res.returncode != 0:
            raise LabError(f"labgrid place {self.name}: {self._error(res)}")
        doc = yaml.safe_load(res.stdout) or {}
        for target in (doc.get("targets") or {}).values():
            resources = target.get("resources") or []
            items = resources.items() if isinstance(resources, dict) else \
                [kv for r in resources for kv in r.items()]
            for cls, params in items:
                if cls == "NetworkService":
                    return dict(params or {})
        raise LabError(f"labgrid place {self.name} has no NetworkService resource",
                       "export the board's SSH address as a NetworkService (address, username, port)")

    def resolve(self, entry: BoardEntry) -> BoardEntry:
        """``entry`` with what the lab file leaves to the place: host, port
        and user from its NetworkService, and its power driver as the power
        cycle."""
        ns = self.network_service()
        changes: dict = {}
        if not entry.host:
            changes["host"] = str(ns.get("address", ""))
            changes["port"] = int(ns.get("port", 22))
            if ns.get("username"):
                changes["user"] = str(ns["username"])
        if entry.power_cycle is None:
            changes["power_cycle"] = shlex.join(self.argv("power", "cycle", with_env=True))
        return dataclasses.replace(entry, **changes)

    # -- quarantine (a tag on the place: every controller sees it) ----------------------

    def quarantine(self, board: str, reason: str) -> None:
        self.run("set-tags", f"{QUARANTINE_TAG}=yes")
        if self.state is not None:
            self.state.quarantine(board, reason)

    def quarantined(self, board: str, shown: str | None = None) -> dict | None:
        if self.tags(shown).get(QUARANTINE_TAG) != "yes":
            return None
        local = self.state.quarantined(board) if self.state is not None else None
        return local or {"since": "?", "reason": f"tagged {QUARANTINE_TAG}=yes on labgrid place {self.name}"}

    def unquarantine(self, board: str) -> list[str]:
        done = []
        if self.tags().get(QUARANTINE_TAG):
            self.run("set-tags", f"{QUARANTINE_TAG}=")
            done.append(f"labgrid tag {QUARANTINE_TAG} removed")
        if self.state is not None:
            done += self.state.release(board)
        return done


class PlaceLock:
    """The place acquired for a whole run (refused while quarantined),
    released on exit."""

    def __init__(self, place: Place, board: str, wait: float = 0.0, say=None):
        self.place, self.board, self.wait, self.say = place, board, wait, say
        self.held = False

    def __enter__(self) -> "PlaceLock":
        q = self.place.quarantined(self.board, self.place.show())
        if q is not None:
            raise LabError(f"board {self.board} is quarantined since {q.get('since')}: {q.get('reason')}",
                           f"check the board, then: iommufd-harness lab release LAB {self.board}")
        self.place.acquire(self.wait, self.say)
        self.held = True
        return self

    def __exit__(self, *exc) -> None:
        if self.held:
            self.place.release()
            self.held = False
