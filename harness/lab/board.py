"""Real boards (the ODROID lab, any Linux machine) reached over SSH, behind
the same Target interface as a VM.

The board runs the kernel its lab installed (:class:`BoardLifecycle`); the
harness copies the selftest binaries and its two helper scripts to a fresh
directory there, follows the
kernel log over a second SSH connection (``/dev/kmsg``, turned into a local
console.log so splats are found and attributed exactly as for a VM), runs
the tests and removes the directory again.  The board's host key must be in
the known_hosts file given: a missing or changed key is an error, never
accepted on the fly.

How much of the kernel log is the run's: a kernel the harness just booted
(a trial kernel, ``BoardTarget(..., from_boot=True)``) is the run's from its
first record, so a report printed while it booted is there and attributed
to the boot; the board's installed kernel has run earlier sessions, so its
log is kept from this session's marker on.

console.log holds one line per /dev/kmsg record (``PRIO,SEQ,USEC,FLAGS;text``,
PRIO = facility * 8 + level); the ``KEY=value`` dictionary lines that follow
a record are left out.  A record of the kernel (facility 0) is written as
the console prints it::

    [   12.345678] WARNING: CPU: 0 PID: 1 at drivers/iommu/iommufd/main.c:578 ...

A record user space wrote to /dev/kmsg (any other facility: the test
markers of run-tests, the session marker, any daemon) carries its
facility's name inside the brackets::

    [   12.345678 user] iommufd-harness: RUN iommufd_ioas.no_domain.access_pin

That line has no kernel timestamp, so the report detector
(:mod:`harness.parse.splats`) takes it for user-space output, as it does a
user-space line on a VM's serial console: it never starts a report and is
left out of one, whatever its text says.  A timestamp inside such a message
(which would start a kernel line there) is written with its ``[`` escaped as
``\\x5b``, the way /dev/kmsg escapes bytes; markers are still found by
their text anywhere in the line.

Test markers must not be lost: the kernel rate-limits writes to /dev/kmsg
unless ``printk_devkmsg`` is ``on``.  A trial kernel gets
``printk.devkmsg=on`` on its command line (:mod:`harness.lab.deploy`);
on the installed kernel the harness sets the sysctl to ``on`` for the
session and puts the old value back, and refuses a board whose command line
fixed it to anything else.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness import arches
from harness.errors import HarnessError, InputError, TargetError
from harness.parse.splat_lines import MIDLINE_STAMP
from harness.targets.base import Layout
from harness.targets.console import ConsoleLog, ConsoleWatcher
from harness.targets.lifecycle import Lifecycle
from harness.targets.ssh import SshClient
from harness.targets.verify import Expect, GuestInfo

KMSG_RE = re.compile(r"^(\d+),(\d+),(\d+),[^;]*;(.*)$")
KERNEL_FACILITY = 0
# syslog's facility names (<syslog.h>), for records user space wrote
FACILITIES = {1: "user", 2: "mail", 3: "daemon", 4: "auth", 5: "syslog", 6: "lpr", 7: "news", 8: "uucp", 9: "cron",
              10: "authpriv", 11: "ftp", **{16 + i: f"local{i}" for i in range(8)}}
DEVKMSG_SYSCTL = "/proc/sys/kernel/printk_devkmsg"

# One command at setup: the run's directory ($1), and writes to /dev/kmsg
# never rate-limited ($2: the sysctl).  Prints printk_devkmsg as it was
# (nothing on a kernel without it: those never rate-limit /dev/kmsg); exit
# status 3: the kernel refused "on" (its command line fixed the value).
PREPARE_SCRIPT = """mkdir -p "$1/selftests" || exit 1
[ -e "$2" ] || exit 0
old=$(cat "$2") || exit 1
echo "$old"
[ "$old" = on ] || echo on > "$2" || exit 3
"""
REFUSED = 3
# ... and at close: the directory removed, printk_devkmsg as it was ($3, if it was changed)
CLEANUP_SCRIPT = 'rm -rf "$1"; [ -z "$3" ] || echo "$3" > "$2"'


@dataclass(frozen=True)
class BoardEntry:
    """A board as a lab file describes it (harness.lab reads the file):
    how to reach it, boot a trial kernel on it and bring it back."""

    name: str
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    arch: str
    boot: str
    dtb: str | None  # a .dtb path under arch/<arch>/boot/dts, "firmware", or None (no dtb)
    kernel_config: str
    initrd: str | None = None  # a file on the board passed to the trial kernel (kexec)
    cmdline: str | None = None  # the trial kernel's; None: the running kernel's /proc/cmdline
    reboot: str = "reboot"  # how the board is asked to go back to its installed kernel
    power_cycle: str | None = None
    console: str | None = None
    boot_timeout: float = 300.0  # trial boot (and return) until SSH answers
    profile: str = ""  # the harness profile for the board's architecture
    labgrid: str | None = None  # a labgrid place (host, port, user, power from it)


@dataclass(frozen=True)
class BoardSpec:
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path

    @classmethod
    def parse(cls, text: str, key: Path, known_hosts: Path) -> "BoardSpec":
        """USER@HOST[:PORT] (user defaults to root, port to 22)."""
        m = re.fullmatch(r"(?:([^@\s]+)@)?([^:@\s]+|\[[^\]]+\])(?::(\d+))?", text)
        if not m:
            raise InputError(f"--board {text!r} is not USER@HOST[:PORT]")
        return cls(m.group(2).strip("[]"), int(m.group(3) or 22), m.group(1) or "root",
                   key.expanduser(), known_hosts.expanduser())


def pinned_host_key(known_hosts: Path, host: str, port: int) -> str:
    """The host key known_hosts holds for host:port, as "type base64"."""
    import paramiko

    try:
        keys = paramiko.HostKeys(str(known_hosts))
    except OSError as e:
        raise InputError(f"cannot read known_hosts {known_hosts}: {e.strerror}",
                         "pass the file that holds the board's host key with --known-hosts") from None
    name = host if port == 22 else f"[{host}]:{port}"
    entry = keys.lookup(name)
    if not entry:
        raise TargetError(f"{name} has no host key in {known_hosts}",
                          f"check the board's key fingerprint, then add it: ssh-keyscan -p {port} {host} >> {known_hosts}")
    key = entry.get("ssh-ed25519") or next(iter(entry.values()))
    return f"{key.get_name()} {key.get_base64()}"


@dataclass(frozen=True)
class KmsgRecord:
    """One /dev/kmsg record: ``PRIO,SEQ,USEC,FLAGS[,...];message``."""

    facility: int
    level: int
    seq: int
    usec: int
    message: str

    @property
    def kernel(self) -> bool:
        """Printed by the kernel (not written to /dev/kmsg by user space)."""
        return self.facility == KERNEL_FACILITY


def parse_kmsg(line: str) -> KmsgRecord | None:
    """The record ``line`` is, or None (a continuation line " KEY=value", noise)."""
    m = KMSG_RE.match(line)
    if not m:
        return None
    prio = int(m.group(1))
    return KmsgRecord(prio >> 3, prio & 7, int(m.group(2)), int(m.group(3)), m.group(4))


def console_line(rec: KmsgRecord) -> str:
    """``rec`` as a line of console.log (the forms are in the module's docstring)."""
    stamp = f"{rec.usec // 1_000_000:5d}.{rec.usec % 1_000_000:06d}"
    if rec.kernel:
        return f"[{stamp}] {rec.message}"
    who = FACILITIES.get(rec.facility, f"facility{rec.facility}")
    text = MIDLINE_STAMP.sub(lambda m: m.group().replace("[", "\\x5b", 1), rec.message)
    return f"[{stamp} {who}] {text}"


class BoardTarget(ConsoleLog):
    """A board over SSH.  ``from_boot``: the kernel was booted for this run
    (a trial kernel), so its whole log is the run's, from its first record;
    else (the installed kernel) only what follows this session's marker."""

    def __init__(self, spec: BoardSpec, run_dir: Path, name: str = "board", from_boot: bool = False):
        self.spec = spec
        self.name = name
        self.from_boot = from_boot
        # the first record read from /dev/kmsg (the oldest the ring buffer
        # held): 0 unless the start of the log was overwritten
        self.first_seq: int | None = None
        self._devkmsg_was: str | None = None  # printk_devkmsg before setup changed it
        host_key = pinned_host_key(spec.known_hosts, spec.host, spec.port)
        self.client = SshClient(spec.host, spec.port, spec.user, spec.key, host_key)
        self._log_client = SshClient(spec.host, spec.port, spec.user, spec.key, host_key)
        self.remote = f"/tmp/iommufd-harness-{secrets.token_hex(4)}"
        self.layout = Layout(f"{self.remote}/selftests", f"{self.remote}/run-tests", f"{self.remote}/killtree",
                             f"{self.remote}/hangcheck", f"{self.remote}/leakcheck")
        self.console = ConsoleWatcher(run_dir / "console.log")
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._lost: str | None = None

    # -- setup / teardown ------------------------------------------------------------

    def setup(self, files: dict[str, tuple[Path, int]]) -> None:
        """Connect, follow the kernel log, and copy ``files`` (remote path
        relative to the run's directory -> (local file, mode))."""
        self.client.connect()
        self.console.path.parent.mkdir(parents=True, exist_ok=True)
        self.console.path.write_text("")
        self._prepare()
        self._start_kmsg()
        for rel, (local, mode) in files.items():
            self.client.put(f"{self.remote}/{rel}", local.read_bytes(), mode)

    def _prepare(self) -> None:
        """The run's directory, and printk_devkmsg ``on`` (the old value is
        put back at close), in one command."""
        host = self.spec.host
        res = self.client.run(["sh", "-c", PREPARE_SCRIPT, "sh", self.remote, DEVKMSG_SYSCTL], 30)
        old = res.text.strip()
        if res.exit_status == REFUSED:
            raise TargetError(f"{host}: {DEVKMSG_SYSCTL} is {old!r} and the board refused to set it to 'on' "
                              f"({res.err_text.strip() or 'refused'}): a value the kernel command line gave cannot "
                              f"be changed, and with {old!r} the kernel may drop the test markers the harness "
                              "writes to /dev/kmsg", "boot the board with printk.devkmsg=on on its kernel command line")
        if res.exit_status != 0:
            why = res.err_text.strip() or ("connection lost" if res.lost else f"status {res.exit_status}")
            raise TargetError(f"cannot prepare {self.remote} on {host}: {why}",
                              "the tests need root on the board (to write /dev/kmsg and open /dev/iommu)")
        if old and old != "on":
            self._devkmsg_was = old

    def _start_kmsg(self) -> None:
        marker = f"iommufd-harness: session {self.remote}"
        seen = threading.Event()

        def on_line(line: str) -> None:
            rec = parse_kmsg(line)
            if rec is None:
                return  # the KEY=value lines of the record before
            if self.first_seq is None:
                self.first_seq = rec.seq
            if not seen.is_set():
                if marker in rec.message:
                    seen.set()
                if not self.from_boot:
                    return  # what came before belongs to earlier sessions
            with open(self.console.path, "a") as f:
                f.write(console_line(rec) + "\n")

        def follow() -> None:
            try:
                self._log_client.connect()
                res = self._log_client.run(["cat", "/dev/kmsg"], 7 * 24 * 3600, on_stdout_line=on_line,
                                           check_stop=self._stop.is_set)
                if res.lost and not self._stop.is_set():
                    self._lost = "the board's kernel log stream was cut"
            except TargetError as e:
                self._lost = f"cannot follow the board's kernel log: {e.message}"

        self._reader = threading.Thread(target=follow, name="kmsg", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while not seen.is_set() and time.monotonic() < deadline and self._lost is None:
            self.client.run(["sh", "-c", 'echo "$1" > /dev/kmsg', "sh", marker], 30)
            seen.wait(1.0)
        if not seen.is_set():
            raise TargetError(f"cannot follow the kernel log of {self.spec.host} ({self._lost or 'no /dev/kmsg'})",
                              "the tests need root on the board (to write /dev/kmsg and open /dev/iommu)")

    def close(self) -> None:
        self._stop.set()
        try:
            if self.client.connected():
                self.client.run(["sh", "-c", CLEANUP_SCRIPT, "sh", self.remote, DEVKMSG_SYSCTL,
                                 self._devkmsg_was or ""], 60)
        finally:
            if self._reader is not None:
                self._reader.join(10)
            self.client.close()
            self._log_client.close()
            self.console.poll()

    # -- Target -------------------------------------------------------------------------

    def run(self, argv, timeout, on_stdout_line=None, on_stderr_line=None, check_stop=None):
        return self.client.run(argv, timeout, on_stdout_line=on_stdout_line, on_stderr_line=on_stderr_line,
                               check_stop=check_stop)

    def failure(self) -> str | None:
        return None if self.client.connected() or self.reconnect() else (
            self._lost or f"{self.spec.host} stopped answering over SSH")

    def reconnect(self) -> bool:
        try:
            self.client.connect()
            return True
        except TargetError:
            return False

    def describe(self) -> dict:
        return {"kind": "board", "host": self.spec.host, "port": self.spec.port, "user": self.spec.user}


class BoardLifecycle(Lifecycle):
    """A board that keeps the kernel its lab installed: "boot" connects,
    follows the kernel log, copies the files and sets up huge pages; the
    harness never reboots it.  ``built_build_id`` is the kernel built here,
    recorded next to the one the board runs."""

    kind = "board"

    def __init__(self, spec: BoardSpec, files: dict[str, tuple[Path, int]], arch: str, run_dir: Path,
                 expect: Expect, built_build_id: str | None, name: str = "board", **kw):
        super().__init__(name, expect, **kw)
        self.spec = spec
        self.files = files
        self.arch = arches.load(arch)
        self.run_dir = run_dir
        self.built_build_id = built_build_id
        self._board: BoardTarget | None = None

    def _boot(self) -> BoardTarget:
        spec = self.spec
        self.say(f"board {spec.user}@{spec.host}:{spec.port} (host key pinned from {spec.known_hosts})")
        self._board = target = BoardTarget(spec, self.run_dir, name=self.name)
        target.setup(self.files)
        machine = target.run(["uname", "-m"], 30).text.strip()
        if machine not in self.arch.machines:
            raise HarnessError(f"the board is {machine or 'unknown'}, profile {self.name} builds "
                               f"for {self.arch.name}", "pick a profile of the board's architecture")
        want = self.expect.hugepages
        target.run(["sh", "-c", f"[ $(cat /proc/sys/vm/nr_hugepages) -ge {want} ] || "
                    f"echo {want} > /proc/sys/vm/nr_hugepages"], 60)
        return target

    def _verified(self, info: GuestInfo) -> None:
        booted = info.build_id == self.built_build_id
        self.guest.clear()
        self.guest.update(kind="board", host=self.spec.host, kernel_release=info.kernel_release,
                          build_id=info.build_id, hugepages=info.hugepages, iommus=list(info.iommus), cpus=info.cpus,
                          built_kernel_booted=booted)
        self.say(f"board up: {info.kernel_release}, IOMMUs: {', '.join(info.iommus) or 'none'}, "
                 f"{info.hugepages} huge pages" + ("" if booted else
                                                   " (not the kernel built here: its own build-id is recorded)"))

    def _reboot(self) -> BoardTarget:
        raise HarnessError("the harness does not reboot real boards", "reboot it from the lab, then rerun")

    def _teardown(self) -> None:
        if self._board is not None:
            self._board.close()

    def ssh_command(self) -> str:
        from harness.targets.ssh import command_line

        return command_line(self.spec.user, self.spec.host, self.spec.port, self.spec.key, self.spec.known_hosts)
