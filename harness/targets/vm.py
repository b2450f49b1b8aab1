"""A QEMU VM as a target: :class:`QemuTarget` is what the runner talks to,
:class:`VmLifecycle` boots it (QEMU, then SSH), reboots it after a crash
(a fresh VM with its own console.N.log) and always tears every VM down."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import arches
from harness.profiles import Profile
from harness.stages import image
from harness.targets import qemu
from harness.targets.base import IMAGE_LAYOUT, Layout
from harness.targets.console import ConsoleLog, ConsoleWatcher
from harness.targets.lifecycle import Lifecycle
from harness.targets.ssh import ExecResult, SshClient, SshLost
from harness.targets.verify import Expect, GuestInfo, verify_booted


class QemuTarget(ConsoleLog):
    """A booted :class:`harness.targets.qemu.QemuVM` reached over SSH."""

    layout: Layout = IMAGE_LAYOUT

    def __init__(self, vm: qemu.QemuVM, client: SshClient):
        self.vm = vm
        self.client = client
        self.name = vm.req.profile.name

    @property
    def console(self) -> ConsoleWatcher:
        return self.vm.console  # a reboot replaces the VM, and its console

    def run(self, argv, timeout, on_stdout_line=None, on_stderr_line=None, check_stop=None) -> ExecResult:
        def stop() -> bool:
            return self.vm.failure() is not None or (check_stop is not None and check_stop())

        return self.client.run(argv, timeout, on_stdout_line=on_stdout_line, on_stderr_line=on_stderr_line,
                               check_stop=stop)

    def failure(self) -> str | None:
        return self.vm.failure()

    def reconnect(self) -> bool:
        if self.vm.failure():
            return False
        try:
            self.client.connect()
            return True
        except SshLost:
            return False

    def describe(self) -> dict:
        return {"kind": "qemu", "ssh_port": self.vm.ssh_port, "accel": self.vm.req.accel}


@dataclass(frozen=True)
class VmRequest:
    profile: Profile
    kernel: Path  # bzImage / Image
    base: image.BaseImage  # the guest image; boot adds the run's SSH keys to it
    run_dir: Path  # console logs, qemu.log, qemu-cmdline.txt
    vm_dir: Path  # the run's keys, known_hosts and initrd (removed at teardown)
    cache: Path  # the KVM probe's verdict
    accel: str = "auto"  # "auto" | "tcg" | "kvm"
    boot_timeout: float = 300.0
    extra_cmdline: str = ""


class VmLifecycle(Lifecycle):
    kind = "qemu"

    def __init__(self, req: VmRequest, expect: Expect, **kw):
        super().__init__(req.profile.name, expect, **kw)
        self.req = req
        self.vms: list[qemu.QemuVM] = []
        self._sock_dir: Path | None = None
        self._accel: str | None = None
        self._keys: image.SshKeys | None = None
        self._initrd: Path | None = None

    def _boot(self) -> QemuTarget:
        req = self.req
        self._keys = image.make_keys(req.vm_dir)
        self._initrd = image.run_image(req.base, self._keys, req.vm_dir)
        arch = arches.load(req.profile.arch)
        self._accel, why = qemu.choose_accel(req.accel, arch, req.profile.qemu.binary, req.kernel, req.cache)
        self.machine.update(accel=self._accel, accel_reason=why, profile=req.profile.name)
        self.say(f"booting {req.profile.name} ({req.profile.description}) with {self._accel}: {why}")
        # AF_UNIX socket paths are limited to 107 bytes: the QMP socket lives in a short temp dir
        self._sock_dir = Path(tempfile.mkdtemp(prefix="iommufd-harness-"))
        return self._start_vm()

    def _reboot(self) -> QemuTarget:
        self.vms[-1].stop()  # a guest that only lost SSH may still be running
        return self._start_vm()

    def _start_vm(self) -> QemuTarget:
        req, n = self.req, len(self.vms)
        boot = qemu.BootRequest(req.profile, req.kernel, self._initrd, req.run_dir, self._accel, req.boot_timeout,
                                req.extra_cmdline, qmp_dir=self._sock_dir,
                                console_name="console.log" if n == 0 else f"console.{n}.log")
        vm = qemu.QemuVM(boot)
        self.vms.append(vm)
        try:
            vm.start()
        finally:
            self.machine["version"] = vm.version or qemu.qemu_version(req.profile.qemu.binary)
        self._booting()
        self.machine["cmdline"] = vm.argv
        keys = self._keys
        client = SshClient("127.0.0.1", vm.ssh_port, "root", keys.client_private, keys.host_public)
        try:
            vm.wait_for_sshd(client.connect)
        except BaseException:
            client.close()  # it may have connected before the boot failed
            raise
        (req.vm_dir / "known_hosts").write_text(f"[127.0.0.1]:{vm.ssh_port} {keys.host_public}\n")
        return QemuTarget(vm, client)

    def _verify(self, target: QemuTarget) -> GuestInfo:
        info, self.guest["verified_from"] = verify_booted(target, self.expect, target.console.text)
        return info

    def _verified(self, info: GuestInfo) -> None:
        self.guest.update(kernel_release=info.kernel_release, build_id=info.build_id, hugepages=info.hugepages,
                          iommus=list(info.iommus), cpus=info.cpus, boots=self.boots)
        self.say(f"guest up: {info.kernel_release}, {info.cpus} CPUs, IOMMUs: {', '.join(info.iommus) or 'none'}, "
                 f"{info.hugepages} huge pages")

    def _teardown(self) -> None:
        try:
            if self._target is not None:
                client = self._target.client
                self.guest.update(ssh_connections=client.connections, ssh_commands=client.commands)
        finally:
            for vm in self.vms:
                vm.stop()
            if self._sock_dir is not None:
                shutil.rmtree(self._sock_dir, ignore_errors=True)
            if self._initrd is not None:
                self._initrd.unlink(missing_ok=True)
            # the run's private key, also when _boot failed after making it;
            # a kept VM (--keep-vm, boot) is torn down only when its hold ends
            image.remove_keys(self.req.vm_dir)

    def ssh_command(self) -> str:
        from harness.targets.ssh import command_line

        port = self.vms[-1].ssh_port if self.vms else 0
        return command_line("root", "127.0.0.1", port, self._keys.client_private if self._keys else "?",
                            self.req.vm_dir / "known_hosts")

