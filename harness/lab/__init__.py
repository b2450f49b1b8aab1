"""The lab: real boards (and the QEMU board that stands in for one), and
everything a run on them needs that a VM does not.

    labfile    the lab's TOML file: its boards, state dir, labgrid coordinator
    state      the shared state: leases on boards, quarantine marks
    labgrid    a board reached through a labgrid place (the lock is the place)
    board      a board's SSH target, and the lifecycle of a board that keeps
               its installed kernel (``boot = "installed"``, or ``--board``)
    deploy     what deploying a trial kernel shares: probe, boot ids, panics
    kexec      ``boot = "kexec"``: the trial kernel kexec'd, then back
    oneshot    ``boot = "oneshot"``: the trial kernel once through U-Boot
    place      what the pipeline asks of "where the tests run" for a board
    qemuboard  a QEMU arm64 machine with U-Boot that behaves like a board
    command    ``iommufd-harness lab check|release|qemu-board``

The lab imports the targets (a board is a target like any other); the
targets never import the lab, and the pipeline reaches it only through
:mod:`harness.lab.place`.  The names below are the lab file's and its
state's, as the lab's users (nightly, the commands) call them.
"""

from harness.errors import LabError
from harness.lab.board import BoardEntry
from harness.lab.labfile import BOOT_METHODS, KERNEL_CONFIGS, Lab, load
from harness.lab.state import GUARD_WAIT_S, LEASE_S, BoardLock, LabState, LockLost, describe_lock, holder_name

__all__ = ["BOOT_METHODS", "GUARD_WAIT_S", "KERNEL_CONFIGS", "LEASE_S", "BoardEntry", "BoardLock", "Lab", "LabError",
           "LabState", "LockLost", "describe_lock", "holder_name", "load"]
