"""One QEMU VM behind a vIOMMU, driven over QMP.

The guest starts with QEMU, exactly as the bare boot of ``make bench`` does:
QEMU listens on the QMP socket (in a private directory) and the harness
connects while the guest boots, so neither the QMP library's import nor the
handshake delays it.  Connecting, and waiting for QEMU's greeting, are
bounded and watch QEMU's process, so a QEMU that never comes up cannot block
the harness; every QMP call is bounded.  The serial console goes to
``console.log`` and is watched for panics.  The VM is
always torn down: QMP ``quit``, then SIGKILL; QEMU also gets SIGKILL if the
harness itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness import proc
from harness.arches import Arch
from harness.errors import BootError, HarnessError
from harness.profiles import Profile
from harness.targets.console import ConsoleWatcher

GUEST_SSH_PORT = 22
SSHD_MARKER = "iommufd-harness: sshd started"
SSHD_FAILED = "iommufd-harness: sshd exited"  # the guest's init, when its sshd died before listening
NET_MARKER = "iommufd-harness: network up"  # the init's network is up: its SSH port may be probed
FACTS_MARKER = "iommufd-harness: facts "  # the init's facts line: the guest's network is up
BOOT_MARKERS = (SSHD_MARKER, SSHD_FAILED, NET_MARKER, FACTS_MARKER)  # what the console watcher notes the time of
QMP_TIMEOUT = 10.0


def qemu_version(binary: str) -> str:
    try:
        out = proc.run([binary, "--version"], timeout=30).output
    except (OSError, HarnessError):
        return "unknown"
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "unknown"


def binary_identity(binary: str) -> str:
    """Which QEMU ``binary`` is, without running it: its resolved path, size
    and modification time (an upgrade changes them)."""
    path = shutil.which(binary) or binary
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return f"{binary} unknown"
    return f"{real} {st.st_size} {st.st_mtime_ns}"


def greeting_version(greeting) -> str | None:
    """QEMU's version as ``--version`` prints it ("7.2.19"), from the QMP
    greeting: asking the binary would be a process of its own."""
    try:
        v = greeting["QMP"]["version"]["qemu"]
        return f"{int(v['major'])}.{int(v['minor'])}.{int(v['micro'])}"
    except (TypeError, KeyError, ValueError):
        return None


def probe_ssh(host: str, port: int, wait: float = 0.3) -> socket.socket | None:
    """A connection to ``host:port`` on which an SSH server has started to
    talk (its banner, left unread), or None.  Behind QEMU's user network the
    host side of a forwarded port always accepts: a guest port nobody
    listens on shows as the connection closing at once, and a server that
    accepted sends its banner; neither within ``wait`` is None too."""
    try:
        sock = socket.create_connection((host, port), timeout=wait)
    except OSError:
        return None
    try:
        if select.select([sock], [], [], wait)[0] and sock.recv(4, socket.MSG_PEEK) == b"SSH-":
            sock.settimeout(None)
            return sock
    except OSError:
        pass
    sock.close()
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KVM_PROBE_IDLE = 5.0  # a kernel under KVM prints its first lines within a second; nested KVM prints nothing


def probe_kvm(arch: Arch, binary: str, kernel: Path, cache: Path, timeout: float = 20.0,
              idle: float = KVM_PROBE_IDLE) -> tuple[str, str]:
    """('kvm'|'tcg', why): does KVM really boot a kernel here?  Nested KVM can
    hang in early boot, so ``binary`` boots ``kernel`` without an initrd on the
    architecture's probe machine and waits (bounded) for it to reach the
    root-fs panic, giving up as soon as the console stays silent for
    ``idle`` seconds.  Cached per host."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not usable"
    ident = f"{os.uname().release} {binary_identity(binary)}"
    cache_file = cache / "kvm-probe.json"
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("ident") == ident:
            return cached["accel"], cached["why"] + " (cached)"
    except (OSError, ValueError, KeyError):
        pass
    argv = [binary, "-machine", arch.probe_machine, *(["-cpu", arch.probe_cpu] if arch.probe_cpu else []),
            "-accel", "kvm", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-m", "512M", "-serial", "stdio", "-kernel", str(kernel),
            "-append", f"console={arch.console} panic=-1"]
    t0 = time.monotonic()
    res = proc.run(argv, timeout=timeout, idle_timeout=idle)
    if "Kernel panic" in res.output or "Run /init" in res.output:
        accel, why = "kvm", "KVM booted a test kernel"
    elif res.timed_out:
        accel, why = "tcg", (f"KVM did not boot a test kernel: its console was silent for {idle:.0f} s "
                             f"(nested KVM?)" if time.monotonic() - t0 < timeout - 1 else
                             f"KVM did not boot a test kernel within {timeout:.0f} s (nested KVM?)")
    else:
        accel, why = "tcg", f"KVM failed: {res.output.strip().splitlines()[-1:] or ['no output']}"
    cache.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({"ident": ident, "accel": accel, "why": why}))
    return accel, why


def choose_accel(requested: str, arch: Arch, binary: str, kernel: Path, cache: Path) -> tuple[str, str]:
    """The accelerator for a guest of ``arch`` and why: what was asked for,
    else KVM only where a probe shows that it boots a kernel."""
    if requested in ("tcg", "kvm"):
        return requested, "requested"
    if not arch.native:
        return "tcg", f"a {arch.name} guest on this host needs emulation"
    return probe_kvm(arch, binary, kernel, cache)


@dataclass
class BootRequest:
    profile: Profile
    kernel: Path
    initrd: Path
    run_dir: Path
    accel: str  # "tcg" | "kvm"
    boot_timeout: float = 300.0
    extra_cmdline: str = ""
    qmp_dir: Path | None = None  # short path for the QMP socket (AF_UNIX paths are limited to 107 bytes)
    console_name: str = "console.log"  # another name for the console of a reboot


class QemuVM:
    """One VM.  Use as a context manager; ``start()`` boots it to the point
    where the guest's SSH port is forwarded to ``self.ssh_port`` on 127.0.0.1."""

    def __init__(self, req: BootRequest):
        self.req = req
        self.proc: subprocess.Popen | None = None
        self.qmp = None
        self.ssh_port = 0
        self.console = ConsoleWatcher(req.run_dir / req.console_name, watch=BOOT_MARKERS)
        self.qemu_log = req.run_dir / "qemu.log"
        self.argv: list[str] = []
        self.version: str | None = None  # QEMU's, from its QMP greeting

    # -- command line --------------------------------------------------------

    def command_line(self, ssh_port: int | None, qmp_path: Path | None) -> list[str]:
        """QEMU's argv.  Without ``qmp_path`` the VM has no monitor, without
        ``ssh_port`` nothing is forwarded: the bare boot that ``make bench``
        measures the harness against."""
        q = self.req.profile.qemu
        cmdline = " ".join(filter(None, [q.cmdline, f"harness.hugepages={self.req.profile.hugepages}",
                                         self.req.extra_cmdline]))
        argv = [q.binary, "-nodefaults", "-no-user-config", "-display", "none",
                "-no-reboot", "-machine", q.machine, "-accel", self.req.accel,
                "-cpu", "host" if self.req.accel == "kvm" else q.cpu, "-smp", str(q.smp), "-m", q.memory]
        for dev in q.devices:
            argv += ["-device", dev]
        fwd = f",hostfwd=tcp:127.0.0.1:{ssh_port}-:{GUEST_SSH_PORT}" if ssh_port else ""
        argv += ["-kernel", str(self.req.kernel), "-initrd", str(self.req.initrd), "-append", cmdline,
                 "-chardev", f"file,id=con0,path={self.console.path}", "-serial", "chardev:con0",
                 "-netdev", f"user,id=net0,restrict=on{fwd}", "-device", f"{q.nic},netdev=net0"]
        if qmp_path:
            argv += ["-chardev", f"socket,id=qmp0,path={qmp_path},server=on,wait=off",
                     "-mon", "chardev=qmp0,mode=control"]
        return argv

    # -- lifecycle -------------------------------------------------------------

    def start(self, attempts: int = 3) -> None:
        proc.require_tool(self.req.profile.qemu.binary)
        self.req.run_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            qmp_path = (self.req.qmp_dir or self.req.run_dir) / "qmp.sock"
            qmp_path.unlink(missing_ok=True)
            self.console.path.unlink(missing_ok=True)
            self.console = ConsoleWatcher(self.console.path, watch=BOOT_MARKERS)
            self.ssh_port = free_port()
            self.argv = self.command_line(self.ssh_port, qmp_path)
            (self.req.run_dir / "qemu-cmdline.txt").write_text(" ".join(_shq(a) for a in self.argv) + "\n")
            self.proc = proc.spawn(self.argv, self.qemu_log)
            try:
                greeting = self._connect_qmp(qmp_path)
            except Exception as e:  # noqa: BLE001 - any failure here means QEMU did not come up
                err = self.qemu_log.read_text(errors="replace")[-2000:]
                self._kill()
                if "host forwarding" in err and attempt < attempts:
                    continue  # the port was taken between probe and use
                self.console.poll()
                if self.console.text.strip():  # the guest ran (and died) before QMP was up
                    self._check_boot()
                raise BootError(f"QEMU did not start ({type(e).__name__}): {err.strip() or 'no output'}",
                                f"command line in {self.req.run_dir / 'qemu-cmdline.txt'}",
                                log=str(self.qemu_log)) from None
            self.qmp.settimeout(QMP_TIMEOUT)
            self.version = greeting_version(greeting)
            # the guest boots while its device tree is checked: a VM without
            # the vIOMMU is stopped by the caller's teardown
            self.check_device()
            return

    def _connect_qmp(self, path: Path, timeout: float | None = None) -> dict:
        """Connect to the QMP socket QEMU listens on and negotiate; QEMU's
        greeting.  Raises if QEMU exits, or neither listens nor greets within
        ``timeout``."""
        # imported here, while QEMU starts: asyncio and the library are a
        # measurable part of the harness's own start-up
        from qemu.qmp.legacy import QEMUMonitorProtocol

        timeout = QMP_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ChildProcessError(f"QEMU exited with status {self.proc.returncode}")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"QEMU did not listen on {path} within {timeout:.0f} s") from None
                time.sleep(0.005)
        try:
            # the library waits for the greeting without a limit
            while not select.select([sock], [], [], 0.05)[0]:
                if self.proc.poll() is not None:
                    raise ChildProcessError(f"QEMU exited with status {self.proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"QEMU did not greet on {path} within {timeout:.0f} s")
            self.qmp = QEMUMonitorProtocol(sock)
        except BaseException:
            sock.close()
            raise
        return self.qmp.connect()

    def check_device(self) -> None:
        """The profile's vIOMMU really is part of the machine QEMU built."""
        want = self.req.profile.qemu.qtree
        if not want:
            return
        tree = self.qmp.cmd("human-monitor-command", **{"command-line": "info qtree"})
        if not re.search(rf"dev: {re.escape(want)}\b", str(tree)):
            raise BootError(f"QEMU's device tree has no {want}, which profile {self.req.profile.name} promises",
                            f"check the profile's devices and machine options ({self.req.profile.path})")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def failure(self) -> str | None:
        """Why the guest is unusable (panic, QEMU exit), or None."""
        self.console.poll()
        if self.console.panic_at is not None:
            return "the guest kernel panicked"
        if self.proc is not None and self.proc.poll() is not None:
            self.console.finish()  # QEMU is gone: its last line counts without a newline
            if self.console.panic_at is not None:
                return "the guest kernel panicked"
            return f"QEMU exited with status {self.proc.returncode}"
        return None

    def wait_for_sshd(self, connect) -> object:
        """Wait for the guest's sshd and return ``connect()``'s result once
        the guest's init is done.  ``connect`` raises while the guest is not
        ready yet.

        The init says "sshd started" once it sees sshd listen, but it looks
        only every few milliseconds and the console is read every 20: from
        its "network up" line (or its facts line, which comes after the
        network) the forwarded port is probed directly, and a connection
        that sshd answered is handed to ``connect(sock=...)``.  The init
        goes on meanwhile (mounts, huge pages, its facts line): the
        connection is returned once it has said "sshd started", its last
        line."""
        deadline = time.monotonic() + self.req.boot_timeout
        last_err = None
        probing = True  # until a connection sshd answered failed: then the marker, and fewer tries
        while time.monotonic() < deadline:
            self._check_boot()
            if SSHD_MARKER in self.console.markers:
                try:
                    return connect()
                except Exception as e:  # noqa: BLE001 - banner errors are expected while sshd comes up
                    last_err = e
            elif probing and (NET_MARKER in self.console.markers or FACTS_MARKER in self.console.markers):
                sock = probe_ssh("127.0.0.1", self.ssh_port)
                if sock is not None:
                    try:
                        result = connect(sock=sock)
                    except Exception as e:  # noqa: BLE001 - as above; the marker path tries again
                        last_err = e
                        probing = False
                    else:
                        self._wait_for_init(deadline)
                        return result
                time.sleep(0.005)
                continue
            # the console is a local file: looking at it often costs nothing, and every
            # tenth of a second the guest's sshd is not seen is a tenth of a second of every run
            time.sleep(0.02 if SSHD_MARKER not in self.console.markers else 0.2)
        reached = "sshd started" if SSHD_MARKER in self.console.markers else "sshd never started"
        raise BootError(
            f"the guest did not answer on SSH within {self.req.boot_timeout:.0f} s ({reached}; last error: {last_err}):\n"
            f"{self.console.excerpt(40)}",
            "raise --boot-timeout under slow emulation, or check console.log",
            log=str(self.console.path))

    def _check_boot(self) -> None:
        why = self.failure()
        if why:
            raise BootError(f"{why} during boot:\n{self.console.excerpt()}",
                            "see console.log; check the kernel config and command line",
                            log=str(self.console.path))
        if SSHD_FAILED in self.console.markers:
            raise BootError(f"the guest's sshd exited before it listened:\n{self.console.excerpt(20)}",
                            "its last log lines are above; check the image recipe's SSH server and keys",
                            log=str(self.console.path))

    def _wait_for_init(self, deadline: float) -> None:
        """Until the init has said "sshd started" (after its facts line)."""
        while SSHD_MARKER not in self.console.markers:
            self._check_boot()
            if time.monotonic() > deadline:
                raise BootError(
                    f"the guest's init did not finish within {self.req.boot_timeout:.0f} s (SSH answered after "
                    f"its 'network up' line, but it never said 'sshd started'):\n{self.console.excerpt(40)}",
                    "raise --boot-timeout under slow emulation, or check the init in console.log",
                    log=str(self.console.path))
            time.sleep(0.005)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.alive() and self.qmp is not None:
            try:
                self.qmp.settimeout(5.0)
                self.qmp.cmd("quit")
            except Exception:  # noqa: BLE001 - fall through to kill
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._kill()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:  # noqa: BLE001
                pass
            self.qmp = None
        self.console.poll()

    def __enter__(self) -> "QemuVM":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _shq(arg: str) -> str:
    import shlex
    return shlex.quote(arg)
