"""A board that boots the kernel built here once, and always comes back.

    record the installed kernel (release, build-id, boot_id)
    -> copy the trial kernel to /boot/iommufd-harness/<id>/
    -> kexec it (the board's boot configuration is never touched, so any
       power cycle returns to the installed kernel), or "oneshot": reboot
       through U-Boot, whose hook runs the harness's one-shot script once
       (the script deletes itself before it boots the trial kernel)
    -> wait for SSH with a new boot_id and the built kernel's build-id
    -> tests, exactly as on any target
    -> reboot (power cycle if it does not answer by the deadline)
    -> the installed kernel's build-id again; remove the directory.

A trial kernel that does not come up, or comes up as another kernel, is
"deploy failed": no verdict (exit 2), never a test failure.  A board that
does not come back to its installed kernel is quarantined in the lab state.
"""

from __future__ import annotations

import gzip
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import elfinfo, proc
from harness.errors import HarnessError, TargetError
from harness.targets.board import BoardEntry, BoardLifecycle, BoardSpec, BoardTarget, pinned_host_key
from harness.targets.ssh import SshClient, SshLost
from harness.targets.verify import Expect, GuestInfo

REMOTE_ROOT = "/boot/iommufd-harness"
POLL_S = 2.0
PANIC_REBOOT = "Rebooting in"  # panic=N > 0: it reboots by itself
PANIC_END = "---[ end Kernel panic"  # printed after it, when it does not reboot


def first_panic(text: str):
    """The first panic on a console, as the one detector (parse.splats)
    reads it, or None."""
    from harness.parse import splats

    return next((s for s in splats.scan(text) if s.kind == "panic"), None)

# --- oneshot: the hook a lab puts in a board's U-Boot environment, once ---------------
# U-Boot reads the partition mounted at /boot on the board; paths below are
# on that partition.  The hook sources the harness's script if there is one;
# the script deletes itself (fatrm) before it boots the trial kernel, so the
# trial kernel boots exactly once and every later boot is the board's own.
BOOT_MOUNT = "/boot"
ONESHOT_SCRIPT = "/iommufd-harness/oneshot.scr"
HOOK_VAR = "iommufd_harness"
HOOK_DEV_VAR = "iommufd_harness_dev"
HOOK_RUN = f"run {HOOK_VAR}"
ONESHOT_MARK = "iommufd-harness: one-shot trial"
UBOOT_UNSAFE = set("'\"$;\\\n`")
# Writes to /dev/kmsg (the test markers) never rate-limited away; last on
# the command line, so it wins over a value of the board's or --cmdline's
DEVKMSG_ON = "printk.devkmsg=on"


def trial_cmdline(board: str, extra: str) -> str:
    """The trial kernel's command line: the board's (its /proc/cmdline, or
    the lab file's), the run's ``--cmdline``, then ``DEVKMSG_ON``."""
    return " ".join(x for x in (board, extra, DEVKMSG_ON) if x)


def hook_env(uboot_dev: str, before: str = "") -> dict[str, str]:
    """The U-Boot variables of the hook (``before``: what U-Boot must run to
    see the device, e.g. "virtio scan"); bootcmd gets ``run iommufd_harness``
    in front."""
    load = (f"if load ${{{HOOK_DEV_VAR}}} ${{scriptaddr}} {ONESHOT_SCRIPT}; then source ${{scriptaddr}}; fi")
    return {HOOK_DEV_VAR: uboot_dev, HOOK_VAR: f"{before}; {load}" if before else load}


def oneshot_script(run_id: str, directory: str, image: str, dtb: str | None, initrd: str | None,
                   cmdline: str) -> str:
    """The U-Boot script (source) that boots the trial kernel once.
    Paths are on the hook's partition."""
    bad = sorted(UBOOT_UNSAFE & set(cmdline))
    if bad:
        raise DeployError(f"the kernel command line {cmdline!r} has characters U-Boot's shell would interpret "
                          f"({' '.join(repr(b) for b in bad)})", "set a plain cmdline in the lab file")
    dev = f"${{{HOOK_DEV_VAR}}}"
    lines = [f"# iommufd-harness: boot the trial kernel of run {run_id} once",
             f'echo "{ONESHOT_MARK} {run_id}"',
             f"if fatrm {dev} {ONESHOT_SCRIPT}; then",
             f"  if load {dev} ${{kernel_addr_r}} {directory}/{image}; then"]
    fdt = "${fdtcontroladdr}"
    if dtb:
        lines.append(f"    load {dev} ${{fdt_addr_r}} {directory}/{dtb}")
        fdt = "${fdt_addr_r}"
    lines.append(f"    setenv bootargs '{cmdline}'")
    if initrd:
        lines += [f"    if load {dev} ${{ramdisk_addr_r}} {initrd}; then",
                  f"      booti ${{kernel_addr_r}} ${{ramdisk_addr_r}}:${{filesize}} {fdt}",
                  "    fi"]
    else:
        lines.append(f"    booti ${{kernel_addr_r}} - {fdt}")
    lines += ["  fi", "fi",
              'echo "iommufd-harness: the trial kernel was not booted; the board boots as usual"', ""]
    return "\n".join(lines)


def compile_script(text: str) -> bytes:
    """A U-Boot script image (mkimage -T script) for ``source``."""
    proc.require_tool("mkimage")
    with tempfile.TemporaryDirectory(prefix="iommufd-harness-uboot-") as tmp:
        src, out = Path(tmp) / "oneshot.cmd", Path(tmp) / "oneshot.scr"
        src.write_text(text)
        res = proc.run(["mkimage", "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none",
                        "-n", "iommufd-harness one-shot", "-d", str(src), str(out)], timeout=60)
        if res.returncode != 0 or res.timed_out:
            raise DeployError(f"mkimage could not make the one-shot script: {res.output.strip()[-500:]}")
        return out.read_bytes()


class DeployError(HarnessError):
    """The trial kernel could not be put on the board or did not boot: an
    infrastructure failure, no verdict."""

    stage = "deploy"


@dataclass(frozen=True)
class TrialKernel:
    image: Path
    vmlinux: Path
    build_id: str
    dtb: Path | None  # built here; None: the board's firmware dtb (or none)


@dataclass
class Booted:
    release: str
    build_id: str | None
    boot_id: str


def spec_of(entry: BoardEntry) -> BoardSpec:
    return BoardSpec(entry.host, entry.port, entry.user, entry.key.expanduser(), entry.known_hosts.expanduser())


def client(entry: BoardEntry, connect_timeout: float = 15.0) -> SshClient:
    """An SSH client for the board with its pinned host key (not connected)."""
    spec = spec_of(entry)
    return SshClient(spec.host, spec.port, spec.user, spec.key,
                     pinned_host_key(spec.known_hosts, spec.host, spec.port), connect_timeout=connect_timeout)


# The kernel release, the boot's id and the kernel's notes (binary, last), in
# one command: three commands could be answered by two boots (the client
# reconnects when a channel cannot be opened, and a board that kexecs away
# mid-command closes it without an exit status), and a release of one boot
# with the boot_id of the next is a kernel that never ran.
BOOTED_SCRIPT = "uname -r && cat /proc/sys/kernel/random/boot_id && { cat /sys/kernel/notes 2>/dev/null; true; }"


def read_booted(c: SshClient) -> Booted:
    """Which kernel the board runs, and which boot this is, from one answer
    of one boot.  A board that does not answer all of it (a session refused
    or lost while it is still coming up, or cut by a reboot) raises SshLost:
    an answer with parts missing is never taken for a kernel."""
    res = c.run(["sh", "-c", BOOTED_SCRIPT], 30)
    release, _, rest = res.stdout.partition(b"\n")
    boot_id, _, notes = rest.partition(b"\n")
    release, boot_id = release.decode(errors="replace").strip(), boot_id.decode(errors="replace").strip()
    if res.lost or res.timed_out or res.exit_status != 0 or not release or not boot_id:
        why = "connection lost" if res.lost else "timed out" if res.timed_out else \
            f"status {res.exit_status}" if res.exit_status != 0 else "no output"
        raise SshLost(f"the board did not answer which kernel and boot it runs ({why})")
    return Booted(release, elfinfo.build_id_from_notes(notes) if notes else None, boot_id)


def wait_booted(entry: BoardEntry, not_boot_id: str, deadline: float, give_up=None) -> Booted | None:
    """The board answering over SSH with a boot_id other than
    ``not_boot_id`` (it rebooted), or None at the deadline, or when
    ``give_up()`` (asked before every attempt) says so."""
    while time.monotonic() < deadline:
        if give_up is not None and give_up():
            return None
        # short: while a board reboots its port may accept and never answer,
        # and every attempt waits this long
        c = client(entry, connect_timeout=5.0)
        try:
            c.connect()
            b = read_booted(c)
            if b.boot_id and b.boot_id != not_boot_id:
                return b
        except SshLost:
            pass
        finally:
            c.close()
        time.sleep(POLL_S)
    return None


def probe(entry: BoardEntry, fetch_config: bool = False, into: Path | None = None, enforce: bool = True) -> dict:
    """What the board runs and can do, over SSH with its pinned key (an
    unknown or changed host key is refused here, before anything is built).
    With ``fetch_config`` its kernel config and loaded modules are saved in
    ``into`` (board-config, board-lsmod) for the trial kernel's config.
    ``enforce``: refuse a board that cannot boot the way the lab says."""
    c = client(entry)
    try:
        c.connect()
    except SshLost as e:
        raise TargetError(f"board {entry.name} is not reachable: {e.message}",
                          f"check that it is up (iommufd-harness lab check LAB {entry.name})") from None
    try:
        def sh(script: str, timeout: float = 30) -> str:
            res = c.run(["sh", "-c", script], timeout)
            return res.text.strip() if res.exit_status == 0 else ""

        booted = read_booted(c)
        facts = {
            "release": booted.release, "build_id": booted.build_id, "boot_id": booted.boot_id,
            "machine": sh("uname -m"), "cmdline": sh("cat /proc/cmdline"),
            "kexec": bool(sh("command -v kexec")),
            "efi": bool(sh("[ -d /sys/firmware/efi ] && echo yes")),
            "gic_its": bool(sh("grep -qw ITS /proc/interrupts && echo yes")),
            "firmware_dtb": bool(sh("[ -e /sys/firmware/fdt ] && echo yes")),
            # the board's own U-Boot boot files (never edited here)
            "uboot_files": sh("ls -d /boot/boot.scr /boot/boot.ini /boot/extlinux/extlinux.conf 2>/dev/null; true").split(),
            "boot_fs": sh(BOOT_FS),
        }
        if fetch_config:
            config = c.run(["sh", "-c", "zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r)"], 60)
            if config.exit_status != 0 or b"CONFIG_" not in config.stdout:
                raise DeployError(f"board {entry.name} shows no kernel config (no /proc/config.gz, no "
                                  f"/boot/config-{facts['release']})",
                                  "set kernel_config = \"defconfig\" in the lab file, or enable CONFIG_IKCONFIG_PROC")
            into.mkdir(parents=True, exist_ok=True)
            (into / "board-config").write_bytes(config.stdout)
            # the names alone, sorted: use counts change from boot to boot and
            # would make every run reconfigure
            names = sorted({line.split()[0] for line in c.run(["cat", "/proc/modules"], 30).text.splitlines()
                            if line.strip()})
            (into / "board-lsmod").write_text("".join(f"{n}\n" for n in names))
            facts["config_file"], facts["lsmod_file"] = into / "board-config", into / "board-lsmod"
    finally:
        c.close()
    if not enforce:
        return facts
    if entry.boot == "kexec" and not facts["kexec"]:
        raise DeployError(f"board {entry.name} has no kexec", "install kexec-tools on the board, "
                          "or use boot = \"oneshot\" in the lab file")
    if entry.boot == "oneshot":
        check_oneshot(entry, facts["boot_fs"])
    return facts


BOOT_FS = f"awk '$2 == \"{BOOT_MOUNT}\" {{print $3, $4}}' /proc/mounts"


def oneshot_ready(boot_fs: str) -> bool:
    """``boot_fs`` (/boot's type and options from /proc/mounts): FAT, read-write."""
    fs = boot_fs.split()
    return len(fs) > 1 and fs[0] == "vfat" and fs[1].split(",")[0] == "rw"


def check_oneshot(entry: BoardEntry, boot_fs: str) -> None:
    """``oneshot`` needs U-Boot's partition at /boot, FAT, read-write (the
    script deletes itself with fatrm), and mkimage here."""
    fs = boot_fs.split()
    if not oneshot_ready(boot_fs):
        raise DeployError(f"board {entry.name}: boot = \"oneshot\" needs its U-Boot partition mounted read-write "
                          f"at {BOOT_MOUNT} as FAT (U-Boot deletes the one-shot script with fatrm); it is "
                          f"{' '.join(fs[:2]) or 'not mounted'}", "mount it there, or use boot = \"kexec\"")
    proc.require_tool("mkimage")


class KexecLifecycle(BoardLifecycle):
    """``boot = "kexec"``: the trial kernel is loaded with the board's dtb
    and command line and jumped into; teardown reboots into the installed
    kernel."""

    kind = "board"
    CONSOLE_TIMEOUT = 30.0  # the lab file's console command: what it printed by then
    POWER_TIMEOUT = 120.0  # the lab file's power_cycle command

    def __init__(self, entry: BoardEntry, files, arch: str, run_dir: Path, expect: Expect, trial: TrialKernel,
                 state, run_id: str, extra_cmdline: str = "", lab_path: Path | None = None,
                 name: str = "board", **kw):
        super().__init__(spec_of(entry), files, arch, run_dir, expect, trial.build_id, name=name, **kw)
        self.entry = entry
        self.trial = trial
        self.lab_state = state  # LabState, or a labgrid Place: quarantine(board, reason)
        self.remote_dir = f"{REMOTE_ROOT}/{run_id}"
        self.extra_cmdline = extra_cmdline
        self.lab_path = lab_path or state.root
        pinned_host_key(self.spec.known_hosts, self.spec.host, self.spec.port)  # refused here, not mid-run
        self.installed: Booted | None = None
        self.trial_boot: Booted | None = None
        self.copied = False
        self.trial_started = False
        self._console_before = ""
        self._gunzip: bool | None = None

    # -- SSH ------------------------------------------------------------------------------

    def _client(self) -> SshClient:
        return client(self.entry, connect_timeout=5.0)

    def _wait_booted(self, not_boot_id: str, deadline: float, watch_panic: bool = False) -> Booted | None:
        """``wait_booted``; with ``watch_panic`` and a console, a kernel
        panic there that does not reboot ("---[ end Kernel panic" without
        "Rebooting in") ends the wait at once: that kernel hangs."""
        t_wait = time.monotonic()
        told = False

        def hangs() -> bool:
            nonlocal told
            if not (watch_panic and self.entry.console) or told:
                return False
            text = self._console_new()
            panic = first_panic(text)
            if panic is None:
                return False
            tail = text[panic.start:]
            if PANIC_REBOOT in tail:
                self.say(f"board {self.entry.name}: the trial kernel panicked "
                         f"({time.monotonic() - t_wait:.0f} s in) and reboots by itself")
                told = True
            elif PANIC_END in tail:
                self.say(f"board {self.entry.name}: the trial kernel panicked "
                         f"({time.monotonic() - t_wait:.0f} s in) and stays there")
                return True
            return False

        return wait_booted(self.entry, not_boot_id, deadline, give_up=hangs)

    def _put(self, c: SshClient, remote: str, local: Path) -> None:
        """Copy a file to the board, gzip-compressed when the board can
        unpack it (a kernel image is a third of its size, and SSH is slow on
        small boards)."""
        if self._gunzip is None:
            self._gunzip = c.run(["sh", "-c", "command -v gunzip"], 30).exit_status == 0
        data = local.read_bytes()
        if self._gunzip:
            c.put(remote, gzip.compress(data, 6), 0o644, timeout=600, gzipped=True)
        else:
            c.put(remote, data, 0o644, timeout=600)

    def _detach(self, c: SshClient, command: str) -> None:
        """Start ``command`` on the board so that it outlives this SSH session."""
        c.run(["sh", "-c", f"setsid sh -c {shlex.quote('sleep 1; ' + command)} </dev/null >/dev/null 2>&1 &"], 30)

    def _console_text(self) -> str:
        if not self.entry.console:
            return ""
        # the lab file's command, through the one gateway: a console client that hangs is killed
        # with everything it started
        res = proc.run(["sh", "-c", self.entry.console], timeout=self.CONSOLE_TIMEOUT, split_stderr=True)
        return res.output  # what it printed before it was killed too

    def _console_new(self) -> str:
        """What the console printed since the trial kernel was started."""
        text = self._console_text()
        before = self._console_before
        if before and text.startswith(before):
            return text[len(before):]
        if before.strip():
            last = before.strip().splitlines()[-1]
            at = text.rfind(last)
            return text[at + len(last):] if at >= 0 else text
        return text

    def _console(self, lines: int = 40) -> str:
        """The board's serial console since the trial kernel was started
        (all of it in logs/board-console.log), for an error message: around
        the first panic if there is one, else its end."""
        text = self._console_new()
        if not text.strip():
            return ""
        log = self.run_dir / "logs" / "board-console.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)
        rows = text.splitlines()
        found = first_panic(text)
        panic = text[:found.start].count("\n") if found is not None else None
        shown = rows[max(0, panic - lines + 10):panic + 10] if panic is not None else rows[-lines:]
        return (f"\n--- the board's console since the trial kernel was started ({len(shown)} of {len(rows)} lines, all in {log}) ---\n"
                + "\n".join(shown))

    # -- deploy -----------------------------------------------------------------------------

    def _boot(self) -> BoardTarget:
        entry, t0 = self.entry, time.monotonic()
        self.say(f"board {entry.name}: {entry.user}@{entry.host}:{entry.port} (host key pinned from "
                 f"{self.spec.known_hosts}), deploying the kernel built here with kexec")
        c = self._client()
        c.connect()
        try:
            self.installed = read_booted(c)
            if self.installed.build_id == self.trial.build_id:
                raise DeployError(f"board {entry.name} already runs the trial kernel (build-id "
                                  f"{self.trial.build_id[:16]}): it is not on its installed kernel",
                                  f"bring it back (reboot or power cycle), then: iommufd-harness lab check "
                                  f"{self.lab_path} {entry.name}")
            cmdline = entry.cmdline if entry.cmdline is not None else \
                c.run(["cat", "/proc/cmdline"], 30).text.strip()
            cmdline = trial_cmdline(cmdline, self.extra_cmdline)
            c.run(["mkdir", "-p", self.remote_dir], 30)
            self.copied = True
            self._stage(c, cmdline)
            self.machine["deploy"] = {"method": self.method, "cmdline": cmdline, "dir": self.remote_dir,
                                      "copy_s": round(time.monotonic() - t0, 1)}
            self._console_before = self._console_text()
            self._start(c)
            self.trial_started = True
        finally:
            c.close()
        self.say(f"board {entry.name}: {self.starting} (waiting up to {entry.boot_timeout:.0f} s for SSH)")
        t_kexec = time.monotonic()
        booted = self._wait_booted(self.installed.boot_id, t_kexec + entry.boot_timeout, watch_panic=True)
        self.machine["deploy"]["wait_s"] = round(time.monotonic() - t_kexec, 1)
        if booted is None:
            raise DeployError(f"deploy failed: the trial kernel did not answer over SSH on {entry.name} "
                              f"({time.monotonic() - t0:.0f} s after the deploy started; boot_timeout "
                              f"{entry.boot_timeout:.0f} s)" + self._console(),
                              "its console says why; the board is brought back to its installed kernel")
        if booted.build_id != self.trial.build_id:
            raise DeployError(f"deploy failed: {entry.name} came back running {booted.release} (build-id "
                              f"{(booted.build_id or 'unknown')[:16]}), not the trial kernel "
                              f"{self.trial.build_id[:16]}: {self._why_not_booted()}" + self._console(),
                              "its console says why; the board is on its installed kernel again")
        self.trial_boot = booted
        self._trial_up()
        self.machine["deploy"]["boot_s"] = round(time.monotonic() - t0, 1)
        self.say(f"board {entry.name}: trial kernel {booted.release} up (build-id {booted.build_id[:16]}) "
                 f"in {time.monotonic() - t0:.0f} s")
        return self._setup_target()

    method = "kexec"
    starting = "kexec into the trial kernel"

    def _stage(self, c: SshClient, cmdline: str) -> None:
        """Put the trial kernel on the board and make it the next kernel."""
        image = f"{self.remote_dir}/{self.trial.image.name}"
        self._put(c, image, self.trial.image)
        argv = ["kexec", "-l", image, f"--append={cmdline}"]
        if self.trial.dtb is not None:
            dtb = f"{self.remote_dir}/{self.trial.dtb.name}"
            self._put(c, dtb, self.trial.dtb)
            argv.append(f"--dtb={dtb}")
        if self.entry.initrd:
            argv.append(f"--initrd={self.entry.initrd}")
        res = c.run(argv, 120)
        if res.exit_status != 0:
            raise DeployError(f"kexec could not load the trial kernel on {self.entry.name}: "
                              f"{(res.err_text or res.text).strip()[-800:]}", "see the board's kexec-tools")

    def _start(self, c: SshClient) -> None:
        self._detach(c, "kexec -e")

    def _why_not_booted(self) -> str:
        return "the trial kernel did not boot (a panic, and the board rebooted?)"

    def _trial_up(self) -> None:
        pass

    def _before_reboot(self, c: SshClient) -> None:
        pass

    def _leftovers(self) -> list[str]:
        return [self.remote_dir]

    def _setup_target(self) -> BoardTarget:
        """The trial kernel as a target: booted for this run, so its whole
        kernel log is the run's, reports printed while it booted included."""
        self._board = target = BoardTarget(self.spec, self.run_dir, name=self.name, from_boot=True)
        target.setup(self.files)
        if target.first_seq:
            self.say(f"board {self.entry.name}: warning: the trial kernel's log starts at record "
                     f"{target.first_seq}, not 0: the records it printed first were overwritten in its ring "
                     "buffer before the harness read them, so a report among them is not seen "
                     "(a larger log_buf_len= on the board's command line keeps them)")
        want = self.expect.hugepages
        target.run(["sh", "-c", f"[ $(cat /proc/sys/vm/nr_hugepages) -ge {want} ] || "
                    f"echo {want} > /proc/sys/vm/nr_hugepages"], 60)
        return target

    def _verified(self, info: GuestInfo) -> None:
        installed = {"release": self.installed.release, "build_id": self.installed.build_id}
        self.guest.clear()
        self.guest.update(kind="board", board=self.entry.name, host=self.spec.host, kernel_release=info.kernel_release,
                          build_id=info.build_id, hugepages=info.hugepages, iommus=list(info.iommus), cpus=info.cpus,
                          built_kernel_booted=info.build_id == self.trial.build_id, installed=installed,
                          kernel_log_from_seq=self._board.first_seq if self._board else None)
        self.say(f"board up: {info.kernel_release}, IOMMUs: {', '.join(info.iommus) or 'none'}, "
                 f"{info.hugepages} huge pages")

    def _reboot(self) -> BoardTarget:
        """After a crash in the tests: back to the installed kernel, then
        the trial kernel again."""
        if self._board is not None:
            self._board.close()
            self._board = None
        self._return()
        self.trial_started = False
        return self._boot()

    # -- return -----------------------------------------------------------------------------

    def _teardown(self) -> None:
        try:
            if self._board is not None:
                self._board.close()
        except HarnessError:
            pass
        finally:
            self._board = None
        if self.installed is None:
            return  # never reached the board
        self._return()

    def _power_cycle(self) -> bool:
        if not self.entry.power_cycle:
            return False
        self.say(f"board {self.entry.name}: power cycle ({self.entry.power_cycle})")
        res = proc.run(["sh", "-c", self.entry.power_cycle], timeout=self.POWER_TIMEOUT,
                       log=self.run_dir / "logs" / "power-cycle.log")
        return res.returncode == 0 and not res.timed_out

    def _return(self) -> None:
        """Back to the installed kernel, checked by its build-id; the trial
        files removed.  A board that does not come back is quarantined."""
        entry, inst = self.entry, self.installed
        t0 = time.monotonic()
        how = "already there"
        back = None
        if self.trial_started:
            seen = self.trial_boot.boot_id if self.trial_boot else inst.boot_id
            c = self._client()
            try:
                c.connect()
                now = read_booted(c)
                if now.build_id == inst.build_id and now.boot_id != seen:
                    back = now  # the trial kernel died and the board rebooted by itself
                    how = "rebooted by itself"
                else:
                    seen = now.boot_id
                    self._before_reboot(c)
                    self._detach(c, entry.reboot)
                    how = "reboot"
            except SshLost:
                how = "power cycle"  # not answering: the trial kernel hangs
            finally:
                c.close()
            if back is None and how == "reboot":
                back = self._wait_booted(seen, time.monotonic() + entry.boot_timeout)
                if back is None:
                    how = "power cycle"
            if back is None and self._power_cycle():
                back = self._wait_booted(seen, time.monotonic() + entry.boot_timeout)
            elif back is None:
                how = "no power cycle command" if not entry.power_cycle else "power cycle failed"
        else:
            c = self._client()
            try:
                c.connect()
                back = read_booted(c)
            except SshLost:
                back = None
            finally:
                c.close()
        ok = back is not None and back.build_id == inst.build_id
        self.machine["return"] = {"how": how, "ok": ok, "seconds": round(time.monotonic() - t0, 1),
                                  "release": back.release if back else None}
        if not ok:
            why = (f"came back as {back.release} (build-id {(back.build_id or 'unknown')[:16]})" if back else
                   f"did not answer within {entry.boot_timeout:.0f} s ({how})")
            reason = f"did not return to its installed kernel {inst.release}: {why}"
            self.lab_state.quarantine(entry.name, reason)
            raise DeployError(f"board {entry.name} {reason}; it is quarantined" + self._console(),
                              f"bring it back by hand, then: iommufd-harness lab release {self.lab_path} "
                              f"{entry.name}")
        if self.trial_started:
            self.say(f"board {entry.name}: back on its installed kernel {back.release} ({how}, "
                     f"{time.monotonic() - t0:.0f} s)")
        self.trial_started = False
        if self.copied:
            c = self._client()
            try:
                c.connect()
                c.run(["rm", "-rf", *self._leftovers()], 60)
                c.run(["sync"], 60)
                self.copied = False
            except SshLost:
                pass
            finally:
                c.close()


class OneshotLifecycle(KexecLifecycle):
    """``boot = "oneshot"``: the trial kernel, its dtb and a one-shot U-Boot
    script go to the board's boot partition; a reboot runs the script
    through the hook in the board's U-Boot environment (README: Real
    boards), and the script deletes itself before it boots the trial kernel.
    The board's own boot files (boot.ini, boot.scr, extlinux.conf) and
    defaults are never touched: every boot after that one, power cycles
    included, is the installed kernel."""

    method = "oneshot"
    starting = "reboot through U-Boot into the trial kernel, once"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.script = BOOT_MOUNT + ONESHOT_SCRIPT
        self.run_id = self.remote_dir.rsplit("/", 1)[-1]

    def _on_partition(self, path: str) -> str | None:
        """``path`` on the board as U-Boot sees it on the /boot partition."""
        if path.startswith(BOOT_MOUNT + "/"):
            return path[len(BOOT_MOUNT):]
        return None

    def _stage(self, c: SshClient, cmdline: str) -> None:
        entry = self.entry
        check_oneshot(entry, c.run(["sh", "-c", BOOT_FS], 30).text.strip())
        directory = self._on_partition(self.remote_dir)
        self._put(c, f"{self.remote_dir}/{self.trial.image.name}", self.trial.image)
        dtb = None
        if self.trial.dtb is not None:
            self._put(c, f"{self.remote_dir}/{self.trial.dtb.name}", self.trial.dtb)
            dtb = self.trial.dtb.name
        initrd = None
        if entry.initrd:
            initrd = self._on_partition(entry.initrd)
            if initrd is None:  # elsewhere on the board: U-Boot cannot read it there
                res = c.run(["cp", entry.initrd, f"{self.remote_dir}/initrd"], 300)
                if res.exit_status != 0:
                    raise DeployError(f"cannot copy the initrd {entry.initrd} to {self.remote_dir} on "
                                      f"{entry.name}: {res.err_text.strip()}")
                initrd = f"{directory}/initrd"
        text = oneshot_script(self.run_id, directory, self.trial.image.name, dtb, initrd, cmdline)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs" / "oneshot.cmd").write_text(text)
        c.put(self.script, compile_script(text), 0o644, timeout=120)
        res = c.run(["sync"], 120)
        if res.exit_status != 0:
            raise DeployError(f"sync failed on {entry.name}: {res.err_text.strip()}")

    def _start(self, c: SshClient) -> None:
        self._detach(c, self.entry.reboot)

    def _script_left(self) -> bool | None:
        c = self._client()
        try:
            c.connect()
            return c.run(["test", "-e", self.script], 30).exit_status == 0
        except SshLost:
            return None
        finally:
            c.close()

    def _why_not_booted(self) -> str:
        if self._script_left():
            return (f"U-Boot did not run the one-shot script ({self.script} is still there): the board's U-Boot "
                    f"environment lacks the hook ('{HOOK_RUN}' in bootcmd, README: Real boards)")
        return "U-Boot ran the one-shot script, but the trial kernel did not boot (a panic, and the board rebooted?)"

    def _trial_up(self) -> None:
        left = self._script_left()
        self.machine["deploy"]["script_consumed"] = left is False
        if left:
            raise DeployError(f"the trial kernel runs on {self.entry.name} but the one-shot script {self.script} "
                              "is still there: the next boot would boot the trial kernel again",
                              "check the board's U-Boot for fatrm (CONFIG_FAT_WRITE)")

    def _before_reboot(self, c: SshClient) -> None:
        c.run(["sh", "-c", f"rm -f {shlex.quote(self.script)}; sync"], 60)

    def _leftovers(self) -> list[str]:
        return [self.remote_dir, self.script]
