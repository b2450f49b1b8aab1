"""The target lifecycle: its states, the transitions allowed between them,
and teardown whatever happens."""

import pytest

from fakes import LocalLifecycle

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
