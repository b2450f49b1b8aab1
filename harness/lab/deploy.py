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

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import elfinfo, proc
from harness.errors import HarnessError, TargetError
from harness.lab.board import BoardEntry, BoardSpec, pinned_host_key
from harness.targets.ssh import SshClient, SshLost

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
