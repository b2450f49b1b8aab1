"""The target lifecycle: its states, the transitions allowed between them,
and teardown whatever happens."""

import contextlib

import pytest

from fakes import LocalLifecycle

from harness import data
from harness.errors import HarnessError, TargetError
from harness.targets.lifecycle import TRANSITIONS, Lifecycle, LifecycleError, State
from harness.targets.verify import Expect


def test_boot_verify_crash_reboot_teardown(fake_selftests):
    lc = LocalLifecycle(fake_selftests)
    assert lc.state is State.OFF
    first = lc.boot()
    assert lc.state is State.BOOTED and lc.target is first
    lc.verify()
    assert lc.state is State.VERIFIED and lc.info.kernel_release == "fake"
    lc.crashed("the guest kernel panicked")
    assert lc.state is State.CRASHED and lc.crash == "the guest kernel panicked"
    second = lc.reboot()  # reboot verifies the new target before handing it out
    assert second is not first and lc.state is State.VERIFIED and lc.boots == 2
    lc.teardown()
    assert lc.state is State.OFF and lc.torn_down == 1
    assert [t for t, _ in lc.history] == ["boot", "verify", "crashed", "reboot", "verify", "teardown"]
    with pytest.raises(LifecycleError, match="there is no target"):
        lc.target


@pytest.mark.parametrize("transition,prepare", [
    ("verify", []), ("crashed", []), ("reboot", []),
    ("boot", ["boot"]), ("crashed", ["boot"]), ("reboot", ["boot", "verify"]),
])
def test_transitions_out_of_order_are_refused(fake_selftests, transition, prepare):
    lc = LocalLifecycle(fake_selftests)
    for step in prepare:
        getattr(lc, step)()
    before = lc.state
    with pytest.raises(LifecycleError, match=f"cannot {transition}"):
        getattr(lc, transition)(*(["why"] if transition == "crashed" else []))
    assert lc.state is before


def test_teardown_runs_from_every_state_and_on_errors(fake_selftests):
    for state in State:
        assert state in TRANSITIONS["teardown"][0]
    lc = LocalLifecycle(fake_selftests)
    with pytest.raises(RuntimeError):
        with lc:
            lc.up()
            raise RuntimeError("the tests blew up")
    assert lc.state is State.OFF and lc.torn_down == 1


def test_a_failed_boot_stays_off_and_is_still_torn_down():
    class Broken(Lifecycle):
        torn = False

        def _boot(self):
            raise TargetError("QEMU did not start")

        def _teardown(self):
            self.torn = True

    lc = Broken("broken", Expect(None, "", 0))
    with pytest.raises(HarnessError, match="QEMU did not start"):
        with lc:
            lc.up()
    assert lc.state is State.OFF and lc.torn and lc.boots == 0


def test_a_target_that_cannot_reboot_says_so(fake_selftests):
    class Once(LocalLifecycle):
        _reboot = Lifecycle._reboot

    lc = Once(fake_selftests)
    lc.up()
    lc.crashed("gone")
    with pytest.raises(TargetError, match="cannot be rebooted"):
        lc.reboot()
    assert lc.state is State.CRASHED


def test_vm_teardown_stops_every_vm_it_started_and_cleans_up(tmp_path):
    """After reboots a VmLifecycle owns several VMs: teardown stops all of them
    (a crashed guest's QEMU may still run) and removes the run's initrd and
    QMP socket directory.  The e2e leak checks cannot see this: QEMU dies with
    the harness process anyway (PR_SET_PDEATHSIG)."""
    from harness import profiles
    from harness.targets.vm import VmLifecycle, VmRequest

    class FakeVM:
        stopped = False

        def stop(self):
            self.stopped = True

    lc = VmLifecycle(VmRequest(profiles.load("x86_64-vtd"), tmp_path / "bzImage", None, tmp_path, tmp_path / "vm",
                               tmp_path), Expect(None, "", 0))
    lc.vms = [FakeVM(), FakeVM(), FakeVM()]
    lc._sock_dir = tmp_path / "sock"
    lc._sock_dir.mkdir()
    lc._initrd = tmp_path / "initrd.cpio"
    lc._initrd.write_bytes(b"070701")
    lc.teardown()
    assert all(vm.stopped for vm in lc.vms)
    assert not lc._sock_dir.exists() and not lc._initrd.exists() and lc.state is State.OFF


class _FakeQemu:
    """QEMU for a VmLifecycle's own _boot: starts (or fails to), never runs."""

    fail: BaseException | None = None

    def __init__(self, boot):
        self.req, self.version, self.argv, self.ssh_port = boot, "fake", ["qemu"], 2222

    def start(self):
        if self.fail is not None:
            raise self.fail

    def wait_for_sshd(self, connect):
        pass

    def failure(self):
        return None

    def stop(self):
        pass


class _FakeSsh:
    connections = commands = 0

    def __init__(self, host, port, user, key, host_key):
        assert key.is_file(), "the client key is there while SSH needs it"

    def connect(self):
        pass

    def close(self):
        pass


def _vm_with_real_keys(tmp_path, monkeypatch, fail=None):
    """A VmLifecycle whose _boot makes the run's keys and initrd for real
    (image.make_keys, image.run_image); only QEMU and SSH are fakes."""
    from harness import profiles
    from harness.stages import image
    from harness.stages.cpio import CpioWriter
    from harness.targets import vm
    from harness.targets.vm import VmLifecycle, VmRequest

    monkeypatch.setattr(vm.qemu, "QemuVM", type("Qemu", (_FakeQemu,), {"fail": fail}))
    monkeypatch.setattr(vm, "SshClient", _FakeSsh)
    with open(tmp_path / "base.cpio", "wb") as f:
        CpioWriter(f).close()
    ssh = image.Recipe.load(data.folder("qemu-images") / "debian-bookworm").ssh
    base = image.BaseImage(tmp_path / "base.cpio", {}, False, ssh)
    vm_dir = tmp_path / "work" / "vm" / "run"
    return VmLifecycle(VmRequest(profiles.load("x86_64-vtd"), tmp_path / "bzImage", base, tmp_path, vm_dir,
                                 tmp_path, accel="tcg"), Expect(None, "", 0)), vm_dir / "id_ed25519"


@pytest.mark.parametrize("ending", ["normal", "error", "interrupt"])
def test_the_runs_private_key_is_gone_after_teardown(tmp_path, monkeypatch, ending):
    """Each VM run writes a fresh private key to <work>/vm/<run>/id_ed25519:
    it is there while the VM is up (the ssh line --keep-vm prints names it;
    a kept VM is held inside the lifecycle) and gone once it is torn down,
    however the run ended."""
    lc, key = _vm_with_real_keys(tmp_path, monkeypatch)
    raised = {"normal": None, "error": RuntimeError("the tests blew up"), "interrupt": KeyboardInterrupt()}[ending]
    with contextlib.suppress(RuntimeError, KeyboardInterrupt):
        with lc:
            lc.boot()
            assert key.is_file() and f"-i {key} " in lc.ssh_command()
            assert (key.parent / "known_hosts").is_file() and (key.parent / "initrd.cpio").is_file()
            if raised is not None:
                raise raised
    assert lc.state is State.OFF
    assert not key.exists() and not key.parent.exists(), list(key.parent.glob("*"))


@pytest.mark.parametrize("fail", [TargetError("QEMU did not start"), KeyboardInterrupt()])
def test_a_boot_that_fails_after_making_the_key_leaves_no_key(tmp_path, monkeypatch, fail):
    lc, key = _vm_with_real_keys(tmp_path, monkeypatch, fail=fail)
    with pytest.raises(type(fail)):
        with lc:
            lc.up()
    assert lc.state is State.OFF and lc.boots == 0
    assert not key.exists() and not key.parent.exists()


def test_on_boot_runs_once_when_the_machine_was_told_to_boot(fake_selftests):
    """What a run needs only later loads while the machine boots: the hook
    runs at the first boot, not before it and not again at a reboot."""
    lc = LocalLifecycle(fake_selftests)
    calls = []
    lc.on_boot = lambda: calls.append(lc.boots)
    assert calls == []
    lc.up()
    assert calls == [0]  # during boot, before it was counted
    lc.crashed("the guest kernel panicked")
    lc.reboot()
    lc.teardown()
    assert calls == [0]
