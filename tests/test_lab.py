"""The lab file and the lab's shared state: what a lab maintainer writes is
checked with messages that name the board and the key, a board's lock
names its holder and expires when the holder dies, quarantine blocks runs
until released."""

from __future__ import annotations

import json
import multiprocessing
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from harness import cli, elfinfo, lab
from harness.lab import deploy, kexec, qemuboard
from harness.lab import state as lab_state
from harness.errors import InputError

LAB = """
[boards.m1]
host = "odroid-m1.lab"
key = "keys/lab"
known_hosts = "known_hosts"
arch = "arm64"
dtb = "rockchip/rk3568-odroid-m1.dtb"
power_cycle = "pdu 4 cycle"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "lab.toml"
    p.write_text(text)
    return p


def test_a_board_entry_with_defaults_and_paths_relative_to_the_lab_file(tmp_path):
    the_lab = lab.load(write(tmp_path, LAB))
    b = the_lab.board("m1")
    assert (b.host, b.port, b.user, b.arch) == ("odroid-m1.lab", 22, "root", "arm64")
    assert b.boot == "kexec" and b.kernel_config == "running" and b.profile == "board-arm64"
    assert b.key == tmp_path / "keys/lab" and b.known_hosts == tmp_path / "known_hosts"
    assert b.dtb == "rockchip/rk3568-odroid-m1.dtb" and b.power_cycle == "pdu 4 cycle" and b.console is None
    assert the_lab.state == tmp_path / "lab.state"


@pytest.mark.parametrize("change, words", [
    ('boot = "tftp"', ["board m1", "boot", "kexec, oneshot, installed"]),
    ('kernel_config = "allyes"', ["kernel_config", "running, defconfig, profile"]),
    ('arch = "riscv"', ["arch 'riscv'"]),
    ('colour = "red"', ["unknown key", "colour"]),
    ('port = "ssh"', ["board m1"]),
])
def test_a_bad_entry_names_the_board_and_the_key(tmp_path, change, words):
    text = LAB.replace('arch = "arm64"', 'arch = "arm64"\n' + change) if "arch" not in change \
        else LAB.replace('arch = "arm64"', change)
    with pytest.raises(InputError) as e:
        lab.load(write(tmp_path, text))
    for w in words:
        assert w in e.value.message
    assert str(tmp_path / "lab.toml") in e.value.message


def test_a_missing_key_and_an_unknown_board_are_named(tmp_path):
    with pytest.raises(InputError, match="'known_hosts' is missing"):
        lab.load(write(tmp_path, LAB.replace('known_hosts = "known_hosts"\n', "")))
    with pytest.raises(InputError) as e:
        lab.load(write(tmp_path, LAB)).board("n2")
    assert "no board 'n2'" in e.value.message and "m1" in e.value.hint


def test_a_lock_names_its_holder_and_a_second_run_is_refused(tmp_path):
    state = lab.LabState(tmp_path / "state")
    with lab.BoardLock(state, "m1", "run one"):
        held = state.lock_info("m1")
        assert held["holder"] == lab.holder_name() and held["what"] == "run one"
        with pytest.raises(lab.LabError) as e:
            with lab.BoardLock(state, "m1", "run two"):
                pass
        assert "locked by" in e.value.message and lab.holder_name() in e.value.message
        assert "run one" in e.value.message and "lab release" in e.value.hint
    assert state.lock_info("m1") is None  # released on exit


def test_a_lock_is_released_when_the_run_fails(tmp_path):
    state = lab.LabState(tmp_path / "state")
    with pytest.raises(RuntimeError):
        with lab.BoardLock(state, "m1", "run"):
            raise RuntimeError("the run broke")
    assert state.lock_info("m1") is None


def test_a_waiting_run_gets_the_board_when_the_holder_ends(tmp_path):
    state = lab.LabState(tmp_path / "state")
    first = lab.BoardLock(state, "m1", "first")
    first.__enter__()
    said = []
    t0 = time.monotonic()
    import threading
    threading.Timer(0.5, first.__exit__, (None, None, None)).start()
    with lab.BoardLock(state, "m1", "second", wait=10, say=said.append):
        assert state.lock_info("m1")["what"] == "second"
    assert time.monotonic() - t0 < 8
    assert said and "waiting" in said[0] and "first" in said[0]


def _hold_and_die(root: str) -> None:
    lock = lab.BoardLock(lab.LabState(Path(root)), "m1", "dies", lease=1.0)
    lock.__enter__()
    import os
    os._exit(0)  # no release, no renewal: a holder that died


def test_the_lock_of_a_holder_that_died_expires(tmp_path):
    p = multiprocessing.get_context("fork").Process(target=_hold_and_die, args=(str(tmp_path / "state"),))
    p.start()
    p.join(10)
    state = lab.LabState(tmp_path / "state")
    assert state.lock_info("m1") is not None and state.lock_info("m1")["what"] == "dies"
    time.sleep(1.2)
    assert state.lock_info("m1") is None
    with lab.BoardLock(state, "m1", "next"):
        pass


def test_a_live_lock_is_renewed_past_its_lease(tmp_path):
    state = lab.LabState(tmp_path / "state")
    with lab.BoardLock(state, "m1", "long run", lease=0.8):
        time.sleep(1.6)
        assert state.lock_info("m1") is not None


def _until_raises(check, limit: float = 10.0):
    deadline = time.monotonic() + limit
    while True:
        try:
            check()
        except lab.LockLost as e:
            return e
        assert time.monotonic() < deadline, "the lost lock was never noticed"
        time.sleep(0.05)


def test_a_lock_another_holder_took_stops_the_run_at_its_next_check(tmp_path):
    """A renewal that finds the lock not ours (released by 'lab release',
    then taken by another run) ends the run's hold at once: check() raises,
    naming the new holder, and leaving never drops that holder's lock."""
    state = lab.LabState(tmp_path / "state")
    with pytest.raises(lab.LockLost) as e:
        with lab.BoardLock(state, "m1", "long run", lease=0.4) as lock:
            lock.check()
            assert state.release("m1") == ["lock dropped"]
            assert state.try_lock("m1", "other", "someone else's nightly") is None
            lost = _until_raises(lock.check)
            assert "someone else's nightly" in lost.message and lost.voids_verdict
            lock.check()
    assert "lost its lock on board m1: another run holds it now" in e.value.message
    assert "lab check" in e.value.hint
    assert state.lock_info("m1")["what"] == "someone else's nightly"


def test_renewals_that_fail_for_a_whole_lease_stop_the_run(tmp_path):
    """The state directory gone (an NFS mount that went away): the renewals
    fail, the lease covers a few misses, and once it would have expired the
    next check() raises with the renewal's error."""
    root = tmp_path / "state"
    state = lab.LabState(root)
    lease = 1.0
    with pytest.raises(lab.LockLost) as e:
        with lab.BoardLock(state, "m1", "long run", lease=lease) as lock:
            root.rename(tmp_path / "away")
            root.write_text("not a directory")  # every renewal fails in _guard
            broken = time.monotonic()
            lock.check()  # renewed within the lease: the run goes on
            _until_raises(lock.check)
            assert time.monotonic() - broken >= lease / 2, "a missed renewal is covered by the lease"
            lock.check()
    assert "could not be renewed" in e.value.message and f"cannot use the lab state directory {root}" in e.value.message
    assert f"{root} is reachable" in e.value.hint


def test_a_stuck_renewal_is_noticed_by_check_alone(tmp_path, monkeypatch):
    """Renewals that never return (a hung filesystem) set nothing: check()
    itself sees that no renewal held for a whole lease."""
    state = lab.LabState(tmp_path / "state")
    hang = threading.Event()
    with lab.BoardLock(state, "m1", "long run", lease=0.4) as lock:
        monkeypatch.setattr(state, "renew", lambda *a, **k: hang.wait(30))
        e = _until_raises(lock.check)
        assert "was not renewed for" in e.message and lock._lost is None
        hang.set()


def test_a_lab_run_that_lost_its_lock_stops_with_no_verdict(tmp_path, monkeypatch):
    """The pipeline checks the lock at every stage boundary: a lease lost
    while the board was probed stops the run before the source stage, exit
    2, and the board's new holder keeps it."""
    (tmp_path / "known_hosts").write_text("")
    path = write(tmp_path, LAB)
    state = lab.LabState(tmp_path / "lab.state")
    monkeypatch.setattr(lab_state, "LEASE_S", 0.4)

    def probe(entry, fetch_config=False, into=None):
        state.release("m1")
        assert state.try_lock("m1", "other", "someone else's nightly") is None
        time.sleep(0.6)  # longer than the lease: lost, whether a renewal ran or not
        return {"release": "6.1.0", "machine": "aarch64", "kexec": True}

    monkeypatch.setattr(deploy, "probe", probe)
    work = tmp_path / "w"
    assert cli.main(["run", "--lab", str(path), "--board", "m1", "--work", str(work),
                     "--results", str(tmp_path / "r")]) == 2
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["verdict"] == "error" and "lost its lock on board m1" in data["errors"][0]
    assert data["stages"] == {}
    assert not list((work / "trees").glob("*/src"))  # nothing extracted, nothing built
    assert state.lock_info("m1")["what"] == "someone else's nightly"


def _flock_holder(path: Path, seconds: float) -> subprocess.Popen:
    """Another process that holds ``path``'s flock for ``seconds``."""
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "held\n"
    return p


def test_a_state_file_held_by_another_process_is_waited_for_then_refused(tmp_path, monkeypatch):
    """The state file's flock is waited for (a holder that lets go within
    the wait is no error), but not forever: one that keeps it fails the
    lock with the file named and what to do."""
    state = lab.LabState(tmp_path / "state")
    guard = tmp_path / "state" / "m1.guard"
    guard.parent.mkdir()
    monkeypatch.setattr(lab_state, "GUARD_WAIT_S", 10.0)
    brief = _flock_holder(guard, 0.5)
    try:
        t0 = time.monotonic()
        assert state.try_lock("m1", "tok", "run") is None
        assert time.monotonic() - t0 >= 0.3  # it did wait for the holder
    finally:
        brief.wait(10)
    monkeypatch.setattr(lab_state, "GUARD_WAIT_S", 0.5)
    hung = _flock_holder(guard, 60)
    try:
        t0 = time.monotonic()
        with pytest.raises(lab.LabError) as e:
            state.renew("m1", "tok")
        assert 0.5 <= time.monotonic() - t0 < 5
    finally:
        hung.kill()
        hung.wait(10)
    assert e.value.message == f"the lab state file {guard} stayed locked for 0.5 s"
    assert f"lslocks or fuser {guard}" in e.value.hint
    assert state.renew("m1", "tok")  # the holder is gone: the state is usable again


def test_quarantine_refuses_runs_until_released(tmp_path):
    state = lab.LabState(tmp_path / "state")
    state.quarantine("m1", "did not return to its installed kernel")
    with pytest.raises(lab.LabError) as e:
        with lab.BoardLock(state, "m1", "run"):
            pass
    assert "quarantined" in e.value.message and "did not return" in e.value.message
    assert "lab release" in e.value.hint
    assert state.release("m1") == ["quarantine ended"]
    with lab.BoardLock(state, "m1", "run"):
        pass


def test_lab_release_on_the_command_line(tmp_path, capsys):
    path = write(tmp_path, LAB)
    lab.LabState(tmp_path / "lab.state").quarantine("m1", "gone")
    assert cli.main(["lab", "release", str(path), "m1"]) == 0
    assert "quarantine ended" in capsys.readouterr().out
    assert lab.LabState(tmp_path / "lab.state").quarantined("m1") is None
    assert cli.main(["lab", "release", str(path), "zz"]) == 2


def test_lab_check_says_unreachable_without_a_traceback(tmp_path, capsys):
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "keys").mkdir()
    from harness.stages.image import make_keys
    keys = make_keys(tmp_path / "k")
    (tmp_path / "keys/lab").write_bytes(keys.client_private.read_bytes())
    path = write(tmp_path, LAB.replace('host = "odroid-m1.lab"', 'host = "127.0.0.1"\nport = 9'))
    assert cli.main(["lab", "check", str(path)]) == 2
    out = capsys.readouterr().out
    assert "m1: root@127.0.0.1:9" in out and "reachable: no" in out and "no host key" in out


def test_run_on_a_lab_board_needs_its_name(tmp_path, capsys):
    path = write(tmp_path, LAB)
    assert cli.main(["run", "--lab", str(path), "--work", str(tmp_path / "w")]) == 2
    assert "--lab needs --board NAME" in capsys.readouterr().err


def test_the_qemu_board_lab_file_is_a_valid_lab(tmp_path):
    info = {"port": 2222, "arch": "arm64", "installed": {"initrd": "/boot/initrd.img-6.1.0-57-arm64"}}
    (tmp_path / "lab.toml").write_text(qemuboard.lab_toml(tmp_path, info))
    b = lab.load(tmp_path / "lab.toml").board("qemu-board")
    assert (b.host, b.port, b.boot, b.dtb, b.kernel_config) == ("127.0.0.1", 2222, "kexec", "firmware", "profile")
    assert "qemu-board reset" in b.power_cycle and "qemu-board console" in b.console


@pytest.mark.parametrize("fails", ["disk", "uboot", "interrupt"])
def test_a_qemu_board_that_was_not_made_leaves_no_private_key(tmp_path, monkeypatch, fails):
    """create writes the lab's private key (and an initrd holding the board's
    host key) before the disk and U-Boot's environment are made: when those
    fail there is no board for the key to reach, and neither is left."""
    from harness.errors import ImageError
    from harness.stages import image
    from harness.stages.cpio import CpioWriter
    from harness.workdir import WorkDir

    def unpack(debs, root, log):
        (root / "boot").mkdir(parents=True)
        for name in ("vmlinuz-6.1.0-test", "config-6.1.0-test"):
            (root / "boot" / name).write_text("")

    def base(req, images, cache, log):
        with open(tmp_path / "base.cpio", "wb") as f:
            CpioWriter(f).close()
        return image.BaseImage(tmp_path / "base.cpio", {}, True, req.recipe.ssh)

    seen = {}

    def disk(path, mib, files, log):
        seen["initrd"] = files["initrd.img-6.1.0-test"].is_file()
        seen["key"] = (dest / "id_ed25519").is_file()
        if fails == "disk":
            raise ImageError("mcopy failed")
        if fails == "interrupt":
            raise KeyboardInterrupt

    def env_flash(dest, recipe, log):
        raise ImageError("U-Boot did not print its prompt")

    monkeypatch.setattr(qemuboard, "check_host", lambda recipe: None)
    monkeypatch.setattr(qemuboard, "resolve_kernel_package", lambda pkg, arch, log: "linux-image-6.1.0-test")
    monkeypatch.setattr(qemuboard.image, "fetch_packages", lambda pkgs, arch, cache, log: {pkgs[0]: Path("k.deb")})
    monkeypatch.setattr(qemuboard.image, "unpack", unpack)
    monkeypatch.setattr(qemuboard, "module_closure", lambda moddir, wanted: [])
    monkeypatch.setattr(qemuboard.image, "build_base", base)
    monkeypatch.setattr(qemuboard, "_fat_disk", disk)
    monkeypatch.setattr(qemuboard, "_env_flash", env_flash)
    dest = tmp_path / "qb"
    with pytest.raises(KeyboardInterrupt if fails == "interrupt" else ImageError):
        qemuboard.create(dest, WorkDir(tmp_path / "work"), port=2222)
    assert seen == {"initrd": True, "key": True}  # the real files, while the disk was made
    left = sorted(p.name for p in dest.iterdir())
    assert not {"id_ed25519", "id_ed25519.pub", "initrd.cpio", "lab.toml", "board.json"} & set(left), left


def test_a_qemu_board_without_its_tools_names_their_packages_before_any_work(tmp_path, monkeypatch):
    """'make setup' leaves the QEMU lab board's U-Boot and FAT tools out:
    create names every package it misses at once, before it fetches or
    writes anything (no key either)."""
    import dataclasses
    import shutil

    from harness.errors import ToolMissing
    from harness.workdir import WorkDir

    have = shutil.which
    monkeypatch.setattr(qemuboard.shutil, "which",
                        lambda t: None if t in ("mcopy", "mmd", "mkenvimage") else have(t) or f"/usr/bin/{t}")

    def fetch(*a):
        raise AssertionError("fetched before the tools were checked")

    monkeypatch.setattr(qemuboard, "resolve_kernel_package", fetch)
    recipe = qemuboard.BoardRecipe.load()
    recipe = dataclasses.replace(recipe, machine={**recipe.machine, "firmware": str(tmp_path / "u-boot.bin")})
    dest = tmp_path / "qb"
    with pytest.raises(ToolMissing) as e:
        qemuboard.create(dest, WorkDir(tmp_path / "work"), recipe)
    assert e.value.message == "the QEMU lab board needs mtools u-boot-tools u-boot-qemu, not installed here"
    assert "apt-get install mtools u-boot-tools u-boot-qemu" in e.value.hint and "make setup-test" in e.value.hint
    assert not dest.exists()


def test_the_qemu_board_modules_come_with_their_dependencies(tmp_path):
    """Each module after what it depends on (from .modinfo), built-in ones
    skipped, a missing one named."""
    import subprocess
    import shutil
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("no gcc")
    mods = tmp_path / "lib/modules/6.1.0-test"
    for name, deps in (("virtio_net", "net_failover"), ("net_failover", "failover"), ("failover", ""),
                       ("nls-cp437", "")):
        src = tmp_path / f"{name}.c"
        src.write_text(f'__attribute__((section(".modinfo"))) const char m[] = "depends={deps}";\n')
        sub = mods / "kernel/drivers" / name
        sub.mkdir(parents=True)
        subprocess.run([cc, "-c", str(src), "-o", str(sub / f"{name}.ko")], check=True)
    (mods / "modules.builtin").write_text("kernel/drivers/virtio/virtio_ring.ko\n")
    order = [p.name for p in qemuboard.module_closure(mods, ["virtio_net", "virtio_ring", "nls_cp437"])]
    assert order == ["failover.ko", "net_failover.ko", "virtio_net.ko", "nls-cp437.ko"]
    with pytest.raises(Exception, match="module vfat"):
        qemuboard.module_closure(mods, ["vfat"])


def test_board_json_round_trip(tmp_path):
    with pytest.raises(InputError, match="holds no QEMU board"):
        qemuboard.load(tmp_path)
    (tmp_path / "board.json").write_text(json.dumps({"port": 1}))
    assert qemuboard.load(tmp_path)["port"] == 1


def test_a_board_without_its_pinned_key_is_refused_before_any_work(tmp_path, capsys):
    path = write(tmp_path, LAB.replace('host = "odroid-m1.lab"', 'host = "127.0.0.1"\nport = 9\nboot = "oneshot"'))
    work = tmp_path / "w"
    assert cli.main(["run", "--lab", str(path), "--board", "m1", "--work", str(work),
                     "--results", str(tmp_path / "r")]) == 2
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert "cannot read known_hosts" in data["errors"][0] and data["stages"] == {}
    assert not list((work / "trees").glob("*/src"))  # nothing extracted, nothing built


# --- oneshot: the U-Boot hook and script ---------------------------------------------


def test_the_hook_goes_in_front_of_the_boards_own_bootcmd_once():
    env = qemuboard.parse_printenv("bootcmd=run distro_bootcmd\r\nbootdelay=2\r\n=> junk\r\nno equals\r\n")
    assert env == {"bootcmd": "run distro_bootcmd", "bootdelay": "2"}
    hooked = qemuboard.hooked_env(env, "mmc 1:1")
    assert hooked["bootcmd"] == "run iommufd_harness; run distro_bootcmd"
    assert hooked["iommufd_harness_dev"] == "mmc 1:1"
    assert hooked["iommufd_harness"] == ("if load ${iommufd_harness_dev} ${scriptaddr} /iommufd-harness/oneshot.scr; "
                                         "then source ${scriptaddr}; fi")
    assert qemuboard.hooked_env(hooked, "mmc 1:1")["bootcmd"] == hooked["bootcmd"]  # not twice
    assert qemuboard.hooked_env(env, "virtio 0:1", "virtio scan")["iommufd_harness"].startswith("virtio scan; if load")


def test_the_oneshot_script_deletes_itself_before_it_boots_the_trial_kernel():
    text = deploy.oneshot_script("r1", "/iommufd-harness/r1", "Image", "rk3568-odroid-m1.dtb",
                                 "/initrd.img-6.1", "console=ttyS2,1500000 root=/dev/mmcblk0p2")
    rows = [r.strip() for r in text.splitlines()]
    rm = rows.index("if fatrm ${iommufd_harness_dev} /iommufd-harness/oneshot.scr; then")
    boot = next(i for i, r in enumerate(rows) if r.startswith("booti "))
    assert rm < boot  # a kernel that hangs is never booted a second time
    assert rows[boot] == "booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdt_addr_r}"
    assert "load ${iommufd_harness_dev} ${fdt_addr_r} /iommufd-harness/r1/rk3568-odroid-m1.dtb" in rows
    assert "setenv bootargs 'console=ttyS2,1500000 root=/dev/mmcblk0p2'" in rows
    bare = deploy.oneshot_script("r2", "/iommufd-harness/r2", "Image", None, None, "console=ttyAMA0")
    assert "booti ${kernel_addr_r} - ${fdtcontroladdr}" in bare
    with pytest.raises(deploy.DeployError, match="U-Boot's shell would interpret"):
        deploy.oneshot_script("r3", "/d", "Image", None, None, "console=ttyAMA0; reset")


def test_the_oneshot_script_is_a_u_boot_script_image():
    blob = deploy.compile_script(deploy.oneshot_script("r1", "/d", "Image", None, None, "console=ttyAMA0"))
    magic, hcrc = struct.unpack(">II", blob[:8])
    assert magic == 0x27051956 and blob[30] == 6  # IH_MAGIC, IH_TYPE_SCRIPT
    header = blob[:4] + b"\0\0\0\0" + blob[8:64]
    assert zlib.crc32(header) == hcrc
    assert b'echo "iommufd-harness: one-shot trial r1"' in blob


def test_the_trial_kernel_never_rate_limits_the_test_markers():
    """printk.devkmsg=on comes last on the trial kernel's command line (the
    last value wins), whatever the board's or --cmdline's say, and U-Boot's
    script passes it on."""
    assert deploy.trial_cmdline("console=ttyS2,1500000 printk.devkmsg=ratelimit", "iommu.strict=1") == \
        "console=ttyS2,1500000 printk.devkmsg=ratelimit iommu.strict=1 printk.devkmsg=on"
    assert deploy.trial_cmdline("", "") == "printk.devkmsg=on"
    script = deploy.oneshot_script("r1", "/d", "Image", None, None, deploy.trial_cmdline("console=ttyAMA0", ""))
    assert "setenv bootargs 'console=ttyAMA0 printk.devkmsg=on'" in script


def test_oneshot_needs_u_boots_fat_partition_at_boot_read_write(tmp_path):
    e = lab.load(write(tmp_path, LAB)).board("m1")
    deploy.check_oneshot(e, "vfat rw,relatime,fmask=0022")
    for fs, words in (("ext4 rw,relatime", "it is ext4 rw,relatime"), ("vfat ro,relatime", "it is vfat ro"),
                      ("", "it is not mounted")):
        with pytest.raises(deploy.DeployError, match=words):
            deploy.check_oneshot(e, fs)


# --- labgrid places ---------------------------------------------------------------------


def test_a_labgrid_board_needs_no_host_and_names_its_coordinator(tmp_path, monkeypatch):
    monkeypatch.delenv("LG_COORDINATOR", raising=False)
    text = LAB.replace('host = "odroid-m1.lab"\n', 'labgrid = "odroid-m1"\n')
    the_lab = lab.load(write(tmp_path, text))
    b = the_lab.board("m1")
    assert b.labgrid == "odroid-m1" and b.host == ""
    p = the_lab.place(b)
    assert (p.name, p.coordinator, p.env) == ("odroid-m1", "127.0.0.1:20408", None)
    monkeypatch.setenv("LG_COORDINATOR", "lg.lab:20408")
    assert lab.load(write(tmp_path, text)).labgrid_coordinator == "lg.lab:20408"
    the_lab = lab.load(write(tmp_path, '[labgrid]\ncoordinator = "c:1"\nenv = "env.yaml"\n' + text))
    assert (the_lab.labgrid_coordinator, the_lab.labgrid_env) == ("c:1", tmp_path / "env.yaml")
    assert lab.load(write(tmp_path, LAB)).place(lab.load(write(tmp_path, LAB)).board("m1")) is None
    with pytest.raises(InputError, match="'host' is missing"):
        lab.load(write(tmp_path, LAB.replace('host = "odroid-m1.lab"\n', "")))
    with pytest.raises(InputError, match=r"\[labgrid\] takes coordinator and env"):
        lab.load(write(tmp_path, '[labgrid]\nserver = "x"\n' + text))


def test_the_qemu_board_serves_its_console_on_a_port_and_still_logs_it(tmp_path):
    """A labgrid exporter exports that port as a NetworkSerialPort; the log
    (qemu-board console, the e2e tests) keeps every boot either way."""

    served = qemuboard.console_chardev(tmp_path, {"console_port": 4321})
    assert served[0] == "-chardev" and served[1].startswith("socket,id=con0,host=127.0.0.1,port=4321,server=on,")
    assert f"logfile={tmp_path / 'console.log'},logappend=on" in served[1] and "wait=off" in served[1]
    # a board made before it had a console port: the log only
    assert qemuboard.console_chardev(tmp_path, {}) == ["-chardev",
                                                       f"file,id=con0,path={tmp_path / 'console.log'},append=on"]


def test_a_board_that_answers_only_in_part_is_not_taken_for_a_kernel(monkeypatch):
    """Coming up, a board's sshd may refuse or drop a session, and a board
    that kexecs away mid-command closes it without an exit status: neither
    an empty answer nor one cut short reads as "came back on another
    kernel" (the board would be quarantined, or a trial kernel taken for
    one that never ran); the wait tries again."""
    from harness.targets.ssh import ExecResult, SshLost

    notes = Path("/sys/kernel/notes")
    here = notes.read_bytes() if os.access(notes, os.R_OK) else b""

    def result(out: bytes, status=0, lost=False):
        return ExecResult(("x",), None if lost else status, out, b"", False, lost, 0.0)

    answers = [result(b"", lost=True),  # refused
               result(b"6.1.0-57-arm64\nb0ff\n", status=-1),  # cut in the notes: closed without an exit status
               result(b"6.1.0-57-arm64\nb1e2\n" + here)]
    asked = []

    class Client:
        def __init__(self, *a, **k):
            pass

        def connect(self):
            pass

        def close(self):
            pass

        def run(self, argv, timeout):
            asked.append(argv)
            return answers.pop(0)

    with pytest.raises(SshLost, match=r"did not answer which kernel and boot it runs \(connection lost\)"):
        deploy.read_booted(Client())
    with pytest.raises(SshLost, match=r"\(status -1\)"):
        deploy.read_booted(Client())
    answers[:0] = [result(b"", lost=True), result(b"6.1.0-57-arm64\nb0ff\n", status=-1)]
    monkeypatch.setattr(deploy, "client", lambda *a, **k: Client())
    monkeypatch.setattr(deploy, "POLL_S", 0.0)
    got = deploy.wait_booted(None, "old-boot", time.monotonic() + 5)
    want_id = elfinfo.build_id_from_notes(here) if here else None
    assert (got.release, got.build_id, got.boot_id) == ("6.1.0-57-arm64", want_id, "b1e2")
    assert len(asked) == 5 and {tuple(a) for a in asked} == {("sh", "-c", deploy.BOOTED_SCRIPT)}


def test_the_lab_files_console_and_power_commands_are_killed_whole_at_their_limit(tmp_path, monkeypatch):
    """A console or power command that leaves a child behind (a client that
    never exits, in the background) is ended with everything it started at
    its limit; what the console printed by then is kept."""
    import types


    monkeypatch.setattr(kexec.KexecLifecycle, "CONSOLE_TIMEOUT", 1.0)
    monkeypatch.setattr(kexec.KexecLifecycle, "POWER_TIMEOUT", 1.0)
    pidfile = tmp_path / "child.pid"
    lc = object.__new__(kexec.KexecLifecycle)  # only the lab file's commands are exercised
    lc.run_dir = tmp_path
    lc.say = lambda text: None
    lc.entry = types.SimpleNamespace(name="b", console=f"echo booting; sleep 600 & echo $! > {pidfile}; wait",
                                     power_cycle=f"sleep 600 & echo $! > {pidfile}.2; wait")
    t0 = time.monotonic()
    assert lc._console_text() == "booting\n"
    assert lc._power_cycle() is False
    assert time.monotonic() - t0 < 10
    for f in (pidfile, Path(f"{pidfile}.2")):
        pid = int(f.read_text())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and \
                Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", pid
    assert "sleep 600" in (tmp_path / "logs" / "power-cycle.log").read_text()
