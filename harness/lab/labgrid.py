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
is used (``labgrid-client power cycle``); without a ``console``, the place's
NetworkSerialPort is read through labgrid's SerialDriver for the whole run
(``ConsoleFollower``).  A board that does not come back
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
from typing import TYPE_CHECKING

from harness.errors import InputError, LabError
from harness.lab.board import BoardEntry

if TYPE_CHECKING:  # the lab hands its state in: the quarantine's reason, next to the tag
    from harness.lab.state import LabState

QUARANTINE_TAG = "iommufd_harness_quarantine"
DEFAULT_COORDINATOR = "127.0.0.1:20408"
# what labgrid-client acquire says when the place is taken, in each of its three wordings
ALREADY_ACQUIRED = re.compile(r"\balready acquired\b")


def client_binary() -> str:
    here = Path(sys.executable).parent / "labgrid-client"
    found = str(here) if here.is_file() else shutil.which("labgrid-client")
    if found is None:
        raise InputError("the lab names a labgrid place, but labgrid is not installed",
                         "pip install 'iommufd-harness[labgrid]' (in a checkout: .venv/bin/pip install -e "
                         "'.[labgrid]'; make setup-test installs it)")
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
        vanished = 0
        while True:
            res = self.run("acquire")
            if res.returncode == 0:
                return
            err = self._error(res)
            if not ALREADY_ACQUIRED.search(err):
                raise LabError(f"labgrid place {self.name} could not be acquired: {err}",
                               f"see labgrid-client -x {self.coordinator} -p {self.name} show")
            # labgrid words it three ways (another user; this user on another
            # host; this user on this host: another run here): the holder,
            # HOST/USER, is the coordinator's, not a word of the message
            try:
                holder = self.acquired_by()
            except LabError:
                holder = None
            if holder is None:
                vanished += 1
                if vanished <= 3:  # released in between: try again at once
                    continue
                holder = "a holder the coordinator does not name"
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

    def resources(self) -> list[tuple[str, dict]]:
        """The place's resources as (class, parameters), from ``labgrid-client
        env``; the place must be acquired."""
        import yaml  # a labgrid dependency

        res = self.run("env")
        if res.returncode != 0:
            raise LabError(f"labgrid place {self.name}: {self._error(res)}")
        doc = yaml.safe_load(res.stdout) or {}
        found = []
        for target in (doc.get("targets") or {}).values():
            resources = target.get("resources") or []
            items = resources.items() if isinstance(resources, dict) else \
                [kv for r in resources for kv in r.items()]
            found += [(cls, dict(params or {})) for cls, params in items]
        return found

    def network_service(self) -> dict:
        """The place's NetworkService (address, port, username)."""
        for cls, params in self.resources():
            if cls == "NetworkService":
                return params
        raise LabError(f"labgrid place {self.name} has no NetworkService resource",
                       "export the board's SSH address as a NetworkService (address, username, port)")

    def serial_port(self, resources: list[tuple[str, dict]] | None = None) -> dict | None:
        """The place's serial console (a NetworkSerialPort: what an exporter
        makes of a USBSerialPort or RawSerialPort with ser2net), or None."""
        for cls, params in self.resources() if resources is None else resources:
            if cls == "NetworkSerialPort":
                return params
        return None

    def resolve(self, entry: BoardEntry, console_log: Path | None = None) -> BoardEntry:
        """``entry`` with what the lab file leaves to the place: host, port
        and user from its NetworkService, its power driver as the power
        cycle, and (with ``console_log``, where a ConsoleFollower writes it)
        its serial console."""
        ns = self.network_service()
        changes: dict = {}
        if entry.console is None and console_log is not None:
            changes["console"] = shlex.join(["cat", "--", str(console_log)])
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


class ConsoleFollower:
    """The place's serial console for the length of a run: a child process
    (``python -m harness.lab.labgrid console``) reads it through labgrid's
    SerialDriver and appends everything to ``log``, which the harness reads
    like a lab file's ``console`` command (the trial kernel's panic, the
    console in a deploy error)."""

    READY = "following"

    def __init__(self, place: Place, log: Path):
        self.place, self.log = place, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        from harness import proc

        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        env = dict(os.environ)
        env.pop("LG_ENV", None)
        self.errors = self.log.with_name(self.log.name + ".stderr")  # labgrid's own warnings
        with open(self.errors, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness.lab.labgrid", "console", "--coordinator", self.place.coordinator,
                 "--place", self.place.name, "--log", str(self.log)],
                stdout=subprocess.PIPE, stderr=err, text=True, env=env, start_new_session=True,
                preexec_fn=proc._pdeathsig)  # it dies with the harness, whatever kills it
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            if sel.select(max(0.0, deadline - time.monotonic())):
                line = self.proc.stdout.readline()
                break
        sel.close()
        if line.strip() != self.READY:
            self.stop()
            err = self.errors.read_text(errors="replace").strip().splitlines()
            raise LabError(f"labgrid place {self.place.name}: its serial console could not be read"
                           + (f": {err[-1]}" if err else f" within {timeout:.0f} s"),
                           "check the place's NetworkSerialPort (labgrid-client -p "
                           f"{self.place.name} console), or name a console command in the lab file")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def follow_console(coordinator: str, place: str, log: Path) -> int:
    """The child of ConsoleFollower: the place's console, through labgrid's
    own RemotePlace and SerialDriver, appended to ``log`` until killed."""
    os.environ["LG_COORDINATOR"] = coordinator
    import serial
    from labgrid import Target
    from labgrid.driver import SerialDriver
    from labgrid.resource.remote import RemotePlace
    from pexpect import TIMEOUT

    target = Target(place)
    RemotePlace(target, name=place)
    driver = SerialDriver(target, name=None)
    target.activate(driver)
    print(ConsoleFollower.READY, flush=True)
    with open(log, "ab") as out:
        while True:
            try:
                data = driver.read(size=1, max_size=65536, timeout=1.0)
            except TIMEOUT:
                continue
            except serial.SerialException:  # the port went away (ser2net restarted): again
                driver.close()
                time.sleep(1.0)
                try:
                    driver.open()
                except serial.SerialException:
                    pass
                continue
            out.write(data)
            out.flush()


class PlaceLock:
    """The place acquired for a whole run (refused while quarantined),
    released on exit; its serial console followed while it is held, if
    asked (``follow_console``)."""

    def __init__(self, place: Place, board: str, wait: float = 0.0, say=None):
        self.place, self.board, self.wait, self.say = place, board, wait, say
        self.held = False
        self.console: ConsoleFollower | None = None

    def follow_console(self, log: Path) -> dict | None:
        """Follow the place's serial console into ``log``, if it has one:
        its NetworkSerialPort, or None."""
        port = self.place.serial_port()
        if port is not None:
            self.console = ConsoleFollower(self.place, log)
            self.console.start()
        return port

    def __enter__(self) -> "PlaceLock":
        q = self.place.quarantined(self.board, self.place.show())
        if q is not None:
            raise LabError(f"board {self.board} is quarantined since {q.get('since')}: {q.get('reason')}",
                           f"check the board, then: iommufd-harness lab release LAB {self.board}")
        self.place.acquire(self.wait, self.say)
        self.held = True
        return self

    def check(self) -> None:
        """A place stays acquired until it is released: nothing can lapse."""

    def __exit__(self, *exc) -> None:
        if self.console is not None:
            self.console.stop()
            self.console = None
        if self.held:
            self.place.release()
            self.held = False


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m harness.lab.labgrid")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("console", help="append a place's serial console to a file until killed")
    c.add_argument("--coordinator", required=True)
    c.add_argument("--place", required=True)
    c.add_argument("--log", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        return follow_console(args.coordinator, args.place, args.log)
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # told to the parent on stderr, in one line
        print(f"{type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
