import shutil
from pathlib import Path

import pytest

from harness import proc, profiles
from harness.errors import InputError
from harness.targets import qemu


def _argv(name):
    prof = profiles.load(name)
    req = qemu.BootRequest(prof, Path("/k/bzImage"), Path("/r/initrd.cpio"), Path("/r"), "tcg")
    return qemu.QemuVM(req).command_line(10022, Path("/s/qmp.sock"))


def test_vtd_profile_command_line_golden():
    assert _argv("x86_64-vtd") == [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", "q35,kernel-irqchip=split", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2G",
        "-device", "intel-iommu,intremap=on",
        "-kernel", "/k/bzImage", "-initrd", "/r/initrd.cpio",
        "-append", "console=ttyS0 panic=-1 oops=panic printk.time=1 intel_iommu=on harness.hugepages=64",
        "-chardev", "file,id=con0,path=/r/console.log", "-serial", "chardev:con0",
        "-netdev", "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:10022-:22",
        "-device", "virtio-net-pci,netdev=net0",
        "-chardev", "socket,id=qmp0,path=/s/qmp.sock,server=on,wait=off", "-mon", "chardev=qmp0,mode=control",
    ]


@pytest.mark.parametrize("name", [n for n in profiles.available() if profiles.load(n).qemu is not None])
def test_every_profile_is_isolated_from_the_network(name):
    argv = _argv(name)
    net = argv[argv.index("-netdev") + 1]
    assert "restrict=on" in net and "hostfwd=tcp:127.0.0.1:" in net
    assert "-no-reboot" in argv
    assert "panic=-1" in argv[argv.index("-append") + 1]


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(InputError) as e:
        profiles.load("x86_64-nope")
    assert "x86_64-vtd" in e.value.hint


def test_arm64_smmuv3_profile_command_line_golden():
    assert _argv("arm64-smmuv3") == [
        "qemu-system-aarch64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", "virt,iommu=smmuv3,gic-version=3", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2G",
        "-kernel", "/k/bzImage", "-initrd", "/r/initrd.cpio",
        "-append", "console=ttyAMA0 panic=-1 oops=panic printk.time=1 harness.hugepages=64",
        "-chardev", "file,id=con0,path=/r/console.log", "-serial", "chardev:con0",
        "-netdev", "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:10022-:22",
        "-device", "virtio-net-pci,netdev=net0",
        "-chardev", "socket,id=qmp0,path=/s/qmp.sock,server=on,wait=off", "-mon", "chardev=qmp0,mode=control",
    ]


def test_profiles_promise_a_checked_iommu():
    """Every vIOMMU profile names the QEMU device and the guest IOMMU it promises."""
    for name in profiles.available():
        p = profiles.load(name)
        if p.qemu is None or name.endswith("-none"):
            continue
        assert p.qemu.qtree and p.iommu, name
    assert profiles.load("x86_64-none").qemu.devices == ()
    board = profiles.load("board-arm64")
    assert board.qemu is None and board.arch == "arm64"


def test_every_profile_fits_the_guest_kernels_cpus():
    """The guest kernel brings up every CPU a profile gives QEMU (verify
    checks it), so -smp never exceeds CONFIG_NR_CPUS."""
    from harness import data
    from harness.kconfig import fragments
    from harness.targets.verify import count_cpus

    base = {s.symbol: s.value for s in fragments.parse_fragment(data.folder("configs") / "base.config")}
    assert base["CONFIG_SMP"] == "y" and base["CONFIG_SLUB_TINY"] == "n"
    for name in profiles.available():
        q = profiles.load(name).qemu
        if q is not None:
            assert 2 <= q.smp <= int(base["CONFIG_NR_CPUS"]), name
    assert [count_cpus(s) for s in ("0", "0-1", "0,2-3\n", "0-7")] == [1, 2, 3, 8]


def test_the_bare_boot_of_make_bench_is_the_same_machine_without_monitor_or_forward():
    prof = profiles.load("x86_64-vtd")
    req = qemu.BootRequest(prof, Path("/k/bzImage"), Path("/r/initrd.cpio"), Path("/r"), "tcg")
    bare = qemu.QemuVM(req).command_line(None, None)
    full = _argv("x86_64-vtd")
    assert "-mon" not in bare and not any("qmp" in a for a in bare)
    assert bare[bare.index("-netdev") + 1] == "user,id=net0,restrict=on"
    assert full[:bare.index("-netdev")] == bare[:bare.index("-netdev")]


@pytest.mark.parametrize("name", [n for n in profiles.available() if profiles.load(n).qemu is not None])
def test_qemu_itself_accepts_every_profiles_command_line_and_builds_the_iommu_it_promises(name, tmp_path):
    """The command line the harness makes for a profile, given to the real
    QEMU (stopped before its CPUs run, -S; the kernel left out: nothing is
    booted): QEMU accepts every option and device, listens on the QMP
    socket, and its device tree has the vIOMMU the profile promises."""
    prof = profiles.load(name)
    if shutil.which(prof.qemu.binary) is None:
        pytest.skip(f"{prof.qemu.binary} is not installed (make setup installs it)")
    vm = qemu.QemuVM(qemu.BootRequest(prof, tmp_path / "kernel", tmp_path / "initrd", tmp_path, "tcg"))
    argv = vm.command_line(qemu.free_port(), tmp_path / "qmp.sock")
    at = argv.index("-kernel")
    assert argv[at:at + 6:2] == ["-kernel", "-initrd", "-append"]
    vm.proc = proc.spawn(argv[:at] + argv[at + 6:] + ["-S"], tmp_path / "qemu.log")
    try:
        try:
            vm._connect_qmp(tmp_path / "qmp.sock", timeout=30)
        except Exception as e:  # noqa: BLE001 - QEMU exited (an option refused) or never listened
            pytest.fail(f"QEMU refused the command line of {name}: {e}: {(tmp_path / 'qemu.log').read_text()}")
        assert vm.qmp.cmd("query-status")["status"] == "prelaunch"
        vm.check_device()  # raises when the promised vIOMMU is not in QEMU's device tree
        if prof.qemu.qtree:
            tree = str(vm.qmp.cmd("human-monitor-command", **{"command-line": "info qtree"}))
            assert f"dev: {prof.qemu.qtree}" in tree
            assert f"dev: {prof.qemu.nic.split(',')[0]}" in tree  # the NIC the guest's network comes up on
    finally:
        vm.stop()
