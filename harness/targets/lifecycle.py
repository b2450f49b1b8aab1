"""A target's lifecycle as an explicit state machine.

    off --boot--> booted --verify--> verified --crashed--> crashed
                                        ^                     |
                                        +--verify-- rebooted <-reboot
    any state --teardown--> off

Every kind of target (a QEMU VM, a board over SSH, a board the harness
deploys a kernel to) implements one :class:`Lifecycle` by filling in the
hooks ``_boot``, ``_reboot`` and ``_teardown``; the transitions, their
order and the checks of ``verify`` are the same for all of them, so the
pipeline and the test session drive any target the same way and the runner
only ever sees the :class:`~harness.targets.base.Target` it is handed.
"""

from __future__ import annotations

import enum
from typing import Callable

from harness.errors import HarnessError, TargetError
from harness.targets.base import Target
from harness.targets.verify import Expect, GuestInfo, verify


class State(enum.Enum):
    OFF = "off"
    BOOTED = "booted"  # up and reachable, not yet checked
    VERIFIED = "verified"  # checked: the right kernel, the promised IOMMU, huge pages
    CRASHED = "crashed"  # the kernel died (or the machine went away) during the tests
    REBOOTED = "rebooted"  # up again after a crash, not yet checked


# transition -> (states it may start from, state it ends in)
TRANSITIONS: dict[str, tuple[frozenset[State], State]] = {
    "boot": (frozenset({State.OFF}), State.BOOTED),
    "verify": (frozenset({State.BOOTED, State.REBOOTED}), State.VERIFIED),
    "crashed": (frozenset({State.VERIFIED}), State.CRASHED),
    "reboot": (frozenset({State.CRASHED}), State.REBOOTED),
    "teardown": (frozenset(State), State.OFF),
}


class LifecycleError(HarnessError):
    """A transition that is not allowed from the current state: a bug in the
    caller, reported instead of driving a machine into an unknown state."""

    stage = "target"


class Lifecycle:
    """One target from power-on to teardown.  Use as a context manager: the
    target is torn down on exit, whatever happened.

    ``guest`` and ``machine`` are dicts the lifecycle fills with what it
    learns (they become ``guest`` and ``qemu`` in results.json); ``say``
    gets one-line progress messages."""

    kind = "target"

    def __init__(self, name: str, expect: Expect, *, guest: dict | None = None, machine: dict | None = None,
                 say: Callable[[str], None] | None = None):
        self.name = name
        self.expect = expect
        self.guest = guest if guest is not None else {}
        self.machine = machine if machine is not None else {}
        self.say = say or (lambda text: None)
        self.state = State.OFF
        self.history: list[tuple[str, State]] = []  # (transition, state it reached)
        self.boots = 0
        self.info: GuestInfo | None = None
        self.crash: str | None = None  # why the last crash happened
        self._target: Target | None = None
        # called once, as soon as the machine was told to boot (QEMU runs, a
        # board was deployed to): what the run needs only later loads while it
        # boots instead of slowing its start
        self.on_boot: Callable[[], None] | None = None

    # -- the transitions --------------------------------------------------------

    @property
    def target(self) -> Target:
        if self._target is None or self.state is State.OFF:
            raise LifecycleError(f"{self.name} is {self.state.value}: there is no target to talk to")
        return self._target

    def boot(self) -> Target:
        self._allowed("boot")
        self._target = self._boot()
        self._booting()
        self.boots += 1
        return self._reached("boot")

    def verify(self) -> GuestInfo:
        self._allowed("verify")
        self.info = self._verify(self.target)
        self._verified(self.info)
        self._reached("verify")
        return self.info

    def up(self) -> Target:
        """boot, then verify: a target the tests can run on."""
        self.boot()
        self.verify()
        return self.target

    def crashed(self, why: str) -> None:
        self._allowed("crashed")
        self.crash = why
        self._reached("crashed")

    def reboot(self) -> Target:
        """After a crash: a fresh, verified target for the tests that are left."""
        self._allowed("reboot")
        self._target = self._reboot()
        self.boots += 1
        self._reached("reboot")
        self.verify()
        return self.target

    def teardown(self) -> None:
        self._allowed("teardown")
        try:
            self._teardown()
        finally:
            self._reached("teardown")

    def __enter__(self) -> "Lifecycle":
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def _booting(self) -> None:
        """The machine was told to boot: run ``on_boot`` (once).  A kind of
        target whose ``_boot`` waits for the machine calls this when it
        started it; else ``boot`` does once ``_boot`` returned."""
        hook, self.on_boot = self.on_boot, None
        if hook is not None:
            hook()

    # -- what a kind of target fills in ------------------------------------------

    def _boot(self) -> Target:
        """Bring the machine up until commands reach it; return the target."""
        raise NotImplementedError

    def _verify(self, target: Target) -> GuestInfo:
        self.guest["verified_from"] = "ssh"
        return verify(target, self.expect)

    def _verified(self, info: GuestInfo) -> None:
        """Record what ``verify`` learnt (``self.guest``) and say so."""

    def _reboot(self) -> Target:
        raise TargetError(f"{self.name} cannot be rebooted by the harness")

    def _teardown(self) -> None:
        """Release everything ``_boot``/``_reboot`` took, from any state;
        must not raise for a machine that is already gone."""

    def ssh_command(self) -> str:
        """How a person reaches the target (for --keep-vm and boot)."""
        return ""

    # -- internals -----------------------------------------------------------------

    def _allowed(self, transition: str) -> None:
        sources, _ = TRANSITIONS[transition]
        if self.state not in sources:
            raise LifecycleError(f"cannot {transition} {self.name}: it is {self.state.value}")

    def _reached(self, transition: str) -> Target | None:
        self.state = TRANSITIONS[transition][1]
        self.history.append((transition, self.state))
        return self._target
