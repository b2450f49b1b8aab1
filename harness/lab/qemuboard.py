"""A QEMU arm64 machine that behaves like a lab board (``iommufd-harness
qemu-board``): to try a lab file, and for the harness's own board tests
without hardware.

``create DIR`` makes its boot disk (MBR, one FAT partition: Debian's arm64
kernel as the installed kernel, an initrd that is the board's whole
userland, ``extlinux/extlinux.conf``), its SSH keys and a ``lab.toml``
naming it.  ``start DIR`` runs it until stopped: Debian's U-Boot is the
firmware, the disk keeps what is written to ``/boot`` across reboots, the
serial console is appended to ``DIR/console.log`` and served raw on a TCP
port of 127.0.0.1 (``console_port`` in board.json: what a lab's ser2net
makes of a board's UART, for a labgrid NetworkSerialPort), SSH is
forwarded from 127.0.0.1.  ``reset DIR`` is its power cycle (QMP
``system_reset``), ``console DIR`` prints its serial console.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from harness import arches, data, proc
from harness.errors import ImageError, InputError, TargetError, ToolMissing
from harness.stages import image
from harness.targets.qemu import free_port
from harness.workdir import WorkDir

DEFAULT_RECIPE = "qemu-board-arm64"
BOARD_FILE = "board.json"


@dataclass(frozen=True)
class BoardRecipe:
    userland: image.Recipe
    arch: str
    package: str  # the installed kernel's Debian package (a meta-package is resolved)
    modules: tuple[str, ...]
    cmdline: str
    machine: dict
    oneshot: dict  # uboot_dev, before, env_flash_mib, env_size

    @classmethod
    def load(cls, name: str = DEFAULT_RECIPE) -> "BoardRecipe":
        directory = data.folder("qemu-images") / name
        path = directory / "recipe.toml"
        try:
            raw = tomllib.loads(path.read_text())
            inst, machine, oneshot = raw["installed"], raw["machine"], raw["oneshot"]
            for key in ("uboot_dev", "env_flash_mib", "env_size"):
                oneshot[key]
            return cls(image.Recipe.load(directory), raw["arch"], inst["package"], tuple(inst["modules"]),
                       inst["cmdline"], dict(machine), dict(oneshot))
        except OSError as e:
            raise InputError(f"cannot read board recipe {path}: {e.strerror}") from None
        except (KeyError, TypeError, tomllib.TOMLDecodeError) as e:
            raise ImageError(f"board recipe {path} is incomplete: {e}",
                             "it needs arch, packages, binaries, [files], [installed], [machine] and [oneshot]") from None


# --- the installed kernel ----------------------------------------------------------


def resolve_kernel_package(package: str, deb_arch: str, log: Path) -> str:
    """A versioned linux-image package for ``package`` (the meta-package's
    dependency; a versioned name is returned as it is)."""
    if re.match(r"linux-image-\d", package):
        return package
    res = proc.run(["apt-cache", "depends", f"{package}:{deb_arch}"], timeout=120, log=log)
    for line in res.output.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-[^:\s]+)", line)
        if m:
            return m.group(1)
    raise ImageError(f"cannot resolve {package}:{deb_arch} to a kernel package",
                     f"run 'apt-get update' (and 'dpkg --add-architecture {deb_arch}')", log=str(log))


def modinfo_depends(path: Path) -> list[str]:
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".modinfo")
        raw = sec.data() if sec is not None else b""
    for field in raw.split(b"\0"):
        if field.startswith(b"depends="):
            return [d for d in field[8:].decode().split(",") if d]
    return []


def module_closure(moddir: Path, wanted) -> list[Path]:
    """The module files for ``wanted`` and everything they depend on, each
    after its dependencies.  Names match with '-' and '_' alike."""
    index = {p.name[:-3].replace("-", "_"): p for p in moddir.rglob("*.ko")}
    order: list[Path] = []

    def add(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key not in index:
            builtin = (moddir / "modules.builtin").read_text() if (moddir / "modules.builtin").is_file() else ""
            if re.search(rf"/{re.escape(key).replace('_', '[-_]')}\.ko$", builtin, re.M):
                return  # built into the kernel
            raise ImageError(f"module {name} (for {' <- '.join(chain) or 'the board'}) is not in {moddir}")
        path = index[key]
        if path in order or key in chain:
            return
        for dep in modinfo_depends(path):
            add(dep, chain + (key,))
        order.append(path)

    for name in wanted:
        add(name, ())
    return order


# --- the U-Boot environment ----------------------------------------------------------


class UBootConsole:
    """U-Boot's prompt on a QEMU serial line (stdio): stop autoboot, run
    commands, read what they print."""

    PROMPT = b"=> "

    def __init__(self, argv: list[str], log: Path):
        self.log = open(log, "ab")
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=proc._pdeathsig)
        self.buf = b""

    def expect(self, mark: bytes, timeout: float = 60.0) -> bytes:
        deadline = time.monotonic() + timeout
        while mark not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ImageError(f"U-Boot did not print {mark.decode()!r} within {timeout:.0f} s",
                                 f"see {self.log.name}", log=self.log.name)
            ready, _, _ = select.select([self.p.stdout], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:
                    raise ImageError("QEMU stopped before U-Boot's prompt", f"see {self.log.name}",
                                     log=self.log.name)
                self.log.write(chunk)
                self.buf += chunk
        at = self.buf.index(mark) + len(mark)
        seen, self.buf = self.buf[:at], self.buf[at:]
        return seen

    def prompt(self) -> None:
        self.expect(b"Hit any key to stop autoboot")
        self.p.stdin.write(b"\n")
        self.p.stdin.flush()
        self.expect(self.PROMPT)

    def command(self, line: str) -> str:
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()
        out = self.expect(self.PROMPT).decode(errors="replace")
        return out[out.find("\n") + 1:-len(self.PROMPT)]  # without the echo and the prompt

    def close(self) -> None:
        self.p.kill()
        self.p.wait()
        self.log.close()


def parse_printenv(text: str) -> dict[str, str]:
    env = {}
    for line in text.replace("\r", "").splitlines():
        name, eq, value = line.partition("=")
        if eq and re.fullmatch(r"[A-Za-z0-9_.]+", name):
            env[name] = value
    return env


def hooked_env(env: dict[str, str], uboot_dev: str, before: str = "") -> dict[str, str]:
    """``env`` with the harness's one-shot hook in front of its bootcmd."""
    from harness.lab import deploy

    out = dict(env)
    out.update(deploy.hook_env(uboot_dev, before))
    if not out.get("bootcmd", "").startswith(deploy.HOOK_RUN):
        out["bootcmd"] = f"{deploy.HOOK_RUN}; {env.get('bootcmd', 'run distro_bootcmd')}"
    return out


def _env_flash(dest: Path, recipe: BoardRecipe, log: Path) -> Path:
    """The board's U-Boot environment flash: U-Boot's default environment
    (as it prints it) with the one-shot hook, what a lab does once per board
    at its U-Boot prompt (README: Real boards).  Written here with
    mkenvimage, as this U-Boot's saveenv fails on QEMU's emulated flash."""
    one = recipe.oneshot
    flash = dest / "uboot-env.img"
    flash.unlink(missing_ok=True)
    with open(flash, "wb") as f:
        f.truncate(int(one["env_flash_mib"]) << 20)
    con = UBootConsole(_qemu_argv(dest, recipe.machine, flash, serial="stdio", disk=False), log)
    try:
        con.prompt()
        env = parse_printenv(con.command("printenv"))
    finally:
        con.close()
    if "bootcmd" not in env:
        raise ImageError("U-Boot's printenv shows no bootcmd", f"see {log}", log=str(log))
    env = hooked_env(env, one["uboot_dev"], one.get("before", ""))
    # runtime values U-Boot sets at every start
    for name in ("fdtcontroladdr", "stdin", "stdout", "stderr", "ethact"):
        env.pop(name, None)
    text = dest / "uboot-env.txt"
    text.write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))
    blob = dest / "uboot-env.bin"
    proc.require_tool("mkenvimage")
    proc.run(["mkenvimage", "-s", str(int(one["env_size"])), "-o", str(blob), str(text)], timeout=60, log=log,
             error=ImageError, what="making the board's U-Boot environment")
    with open(flash, "r+b") as f:
        f.write(blob.read_bytes())
    blob.unlink()
    return flash


# --- create ------------------------------------------------------------------------


def _fat_disk(disk: Path, mib: int, files: dict[str, Path], log: Path) -> None:
    """An MBR disk with one FAT partition (from 1 MiB) holding ``files``
    (path on the partition -> host file)."""
    for tool in ("sfdisk", "mkfs.vfat", "mcopy"):
        proc.require_tool(tool)
    disk.unlink(missing_ok=True)
    with open(disk, "wb") as f:
        f.truncate(mib << 20)
    proc.run(["sfdisk", "--quiet", str(disk)], stdin_text="label: dos\nstart=2048, type=c, bootable\n", timeout=60,
             log=log, error=ImageError, what="partitioning the board disk")
    sectors = (mib << 20) // 512 - 2048
    proc.run(["mkfs.vfat", "-F", "32", "-n", "BOOT", "--offset", "2048", str(disk), str(sectors // 2)],
             timeout=60, log=log, error=ImageError, what="formatting the board disk")
    img, env = f"{disk}@@1M", {"MTOOLS_SKIP_CHECK": "1"}
    for d in sorted({str(Path(rel).parent) for rel in files} - {"."}):
        proc.run(["mmd", "-i", img, f"::/{d}"], timeout=60, log=log, error=ImageError,
                 what=f"making {d} on the board disk", env=env)
    for rel, src in files.items():
        proc.run(["mcopy", "-i", img, str(src), f"::/{rel}"], timeout=300, log=log, error=ImageError,
                 what=f"copying {rel} to the board disk", env=env)


# what create runs on this machine besides QEMU: the disk's partition table,
# FAT file system and files, and U-Boot's environment
CREATE_TOOLS = ("sfdisk", "mkfs.vfat", "mmd", "mcopy", "mkenvimage")


def check_host(recipe: BoardRecipe) -> None:
    """Everything create needs on this machine, checked before any work:
    'make setup' installs only QEMU of it (the rest is for the tests' QEMU
    lab board, 'make setup-test')."""
    m = recipe.machine
    missing = [proc.package_for(t) for t in (*CREATE_TOOLS, m["binary"]) if shutil.which(t) is None]
    if not Path(m["firmware"]).is_file():
        missing.append(m["firmware_package"])
    if missing:
        packages = " ".join(dict.fromkeys(missing))
        raise ToolMissing(f"the QEMU lab board needs {packages}, not installed here",
                          f"install them with: apt-get install {packages}  (or run 'make setup-test')")


def create(dest: Path, work: WorkDir, recipe: BoardRecipe | None = None, port: int = 0) -> dict:
    """A new board in ``dest``: disk, keys, lab.toml.  Returns board.json."""
    recipe = recipe or BoardRecipe.load()
    check_host(recipe)
    arch = arches.load(recipe.arch)
    dest.mkdir(parents=True, exist_ok=True)
    log = dest / "create.log"
    log.write_text("")
    debs = work.cache / "debs" / arch.debian_arch
    kpkg = resolve_kernel_package(recipe.package, arch.debian_arch, log)
    kdeb = image.fetch_packages([kpkg], arch.debian_arch, debs, log)
    kroot = work.cache / "rootfs" / kpkg
    image.unpack(kdeb, kroot, log)
    vmlinuz = sorted((kroot / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise ImageError(f"{kpkg} has no /boot/vmlinuz-*", log=str(log))
    release = vmlinuz[-1].name[len("vmlinuz-"):]
    moddir = kroot / "lib/modules" / release
    modules = module_closure(moddir, recipe.modules)

    base = image.build_base(image.ImageRequest(recipe.userland, recipe.arch, {}), work.images, work.cache, log)
    keys = image.make_keys(dest)  # the lab's key (id_ed25519) and the board's host key
    try:
        port = port or free_port()
        (dest / "known_hosts").write_text(f"[127.0.0.1]:{port} {keys.host_public}\n")
        rel = [str(m.relative_to(moddir)) for m in modules]
        (dest / "modules.load").write_text("".join(f"{r}\n" for r in rel))
        extra = {f"/lib/modules/{release}/{r}": (m, 0o644) for m, r in zip(modules, rel)}
        extra[f"/lib/modules/{release}/load"] = (dest / "modules.load", 0o644)
        initrd = dest / "initrd.cpio"  # what run_image writes
        try:
            image.run_image(base, keys, dest, extra)  # holds the board's private host key
            (dest / "extlinux.conf").write_text(
                f"default installed\ntimeout 1\n\nlabel installed\n    kernel /vmlinuz-{release}\n"
                f"    initrd /initrd.img-{release}\n    append {recipe.cmdline}\n")
            _fat_disk(dest / "disk.img", int(recipe.machine.get("disk_mib", 256)),
                      {f"vmlinuz-{release}": vmlinuz[-1], f"initrd.img-{release}": initrd,
                       # as Debian installs it: a board's own config (lab kernel_config = "running")
                       f"config-{release}": kroot / "boot" / f"config-{release}",
                       "extlinux/extlinux.conf": dest / "extlinux.conf"}, log)
        finally:
            initrd.unlink(missing_ok=True)
        _env_flash(dest, recipe, log)
    except BaseException:
        # no board, so nothing may use its lab key: none is left behind
        image.remove_keys(dest)
        raise
    info = {"recipe": recipe.userland.name, "arch": recipe.arch, "port": port, "console_port": free_port(),
            "installed": {
        "package": kpkg, "deb": kdeb[kpkg].name, "release": release, "cmdline": recipe.cmdline,
        "initrd": f"/boot/initrd.img-{release}", "modules": [m.name for m in modules]},
        "machine": recipe.machine, "oneshot": recipe.oneshot}
    (dest / BOARD_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (dest / "lab.toml").write_text(lab_toml(dest, info))
    return info


def lab_toml(dest: Path, info: dict) -> str:
    py = sys.executable
    return f"""# The QEMU lab board in {dest} (made by 'iommufd-harness qemu-board create').
[boards.qemu-board]
host = "127.0.0.1"
port = {info["port"]}
user = "root"
key = "{dest / 'id_ed25519'}"
known_hosts = "{dest / 'known_hosts'}"
arch = "{info["arch"]}"
# "oneshot" works too: its U-Boot environment has the hook (README: Real boards)
boot = "kexec"
dtb = "firmware"
initrd = "{info["installed"]["initrd"]}"
kernel_config = "profile"
# its init is a shell script, not an init system: reboot at once
reboot = "reboot -f"
boot_timeout = 120
power_cycle = "{py} -m harness qemu-board reset {dest}"
console = "{py} -m harness qemu-board console {dest}"
"""


# --- run ---------------------------------------------------------------------------


def load(dest: Path) -> dict:
    try:
        return json.loads((dest / BOARD_FILE).read_text())
    except (OSError, ValueError):
        raise InputError(f"{dest} holds no QEMU board", f"make one: iommufd-harness qemu-board create {dest}") from None


def _qemu_argv(dest: Path, m: dict, env_flash: Path, serial: str, disk: bool = True) -> list[str]:
    if not Path(m["firmware"]).is_file():
        raise InputError(f"the board firmware {m['firmware']} is missing", f"apt-get install {m['firmware_package']}")
    argv = [m["binary"], "-nodefaults", "-no-user-config", "-display", "none", "-machine", m["machine"],
            "-accel", "tcg", "-cpu", m["cpu"], "-smp", str(m["smp"]), "-m", m["memory"], "-bios", m["firmware"],
            "-drive", f"if=pflash,unit=1,format=raw,file={env_flash}"]
    if disk:
        argv += ["-drive", f"if=none,id=disk0,format=raw,file={dest / 'disk.img'}",
                 "-device", "virtio-blk-pci,drive=disk0"]
    return argv + ["-serial", serial]


def command_line(dest: Path, info: dict) -> list[str]:
    env_flash = dest / "uboot-env.img"
    if not env_flash.is_file():
        raise InputError(f"{dest} has no U-Boot environment flash (made by an older harness)",
                         f"make the board again: iommufd-harness qemu-board create {dest}")
    return _qemu_argv(dest, info["machine"], env_flash, "chardev:con0") + [
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{info['port']}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        *console_chardev(dest, info),
        "-chardev", f"socket,id=qmp0,path={dest / 'qmp.sock'},server=on,wait=off",
        "-mon", "chardev=qmp0,mode=control"]


def console_chardev(dest: Path, info: dict) -> list[str]:
    """The serial console: appended to console.log and, on boards made
    since it has one, served on ``console_port`` (one reader at a time; what
    the board prints while nobody reads is only in the log)."""
    log = dest / "console.log"
    if not info.get("console_port"):
        return ["-chardev", f"file,id=con0,path={log},append=on"]
    return ["-chardev", f"socket,id=con0,host=127.0.0.1,port={info['console_port']},server=on,wait=off,"
                        f"logfile={log},logappend=on"]


def start(dest: Path) -> int:
    """Run the board in the foreground until it is stopped (SIGTERM/SIGINT)."""
    info = load(dest)
    argv = command_line(dest, info)
    (dest / "qmp.sock").unlink(missing_ok=True)
    with open(dest / "qemu.log", "ab") as log:
        # QEMU dies with this process (PR_SET_PDEATHSIG), even when it is killed
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=proc._pdeathsig)
    (dest / "qemu.pid").write_text(f"{p.pid}\n")

    def stop(signum, frame):
        p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return p.wait()
    finally:
        if p.poll() is None:
            p.kill()
        (dest / "qemu.pid").unlink(missing_ok=True)


def reset(dest: Path, timeout: float = 10.0) -> None:
    """The power cycle: QMP system_reset."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    sock = dest / "qmp.sock"
    deadline = time.monotonic() + timeout
    while True:
        try:
            qmp = QEMUMonitorProtocol(str(sock))
            qmp.connect()
            break
        except OSError as e:
            if time.monotonic() > deadline:
                raise TargetError(f"cannot reach the board's QMP socket {sock}: {e}",
                                  f"is it running? iommufd-harness qemu-board start {dest}") from None
            time.sleep(0.2)
    try:
        qmp.cmd("system_reset")
    finally:
        qmp.close()


def console(dest: Path) -> str:
    """Its serial console since it was created (every boot, appended)."""
    try:
        return (dest / "console.log").read_text(errors="replace")
    except OSError:
        return ""
