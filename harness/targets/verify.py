"""Proof that a booted target is the one the run asked for: the kernel just
built (its build-id in /sys/kernel/notes), the promised IOMMU, enough huge
pages.  Target-agnostic: it only runs commands."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness import elfinfo
from harness.errors import TargetError
from harness.targets.base import Target


@dataclass(frozen=True)
class Expect:
    """What ``verify`` checks: ``build_id`` None means any kernel (a board
    that keeps the kernel its lab installed)."""

    build_id: str | None
    iommu: str  # regex an entry of /sys/class/iommu must match; "" for any
    hugepages: int
    cpus: int | None = None  # CPUs the kernel must bring up (QEMU's -smp); None: any


@dataclass(frozen=True)
class GuestInfo:
    kernel_release: str
    build_id: str | None
    hugepages: int
    iommus: tuple[str, ...]
    cpus: int = 0  # online CPUs


def _check(res, what: str) -> str:
    if res.exit_status != 0:
        raise TargetError(f"{what} failed in the guest (status {res.exit_status}): {res.err_text.strip()[:500]}")
    return res.text


def verify(target: Target, expect: Expect) -> GuestInfo:
    """The guest runs the kernel we built (unless ``expect.build_id`` is
    None), and has what the tests need."""
    release = _check(target.run(["uname", "-r"], 30), "uname -r").strip()
    notes = target.run(["cat", "/sys/kernel/notes"], 30)
    build_id = elfinfo.build_id_from_notes(notes.stdout) if notes.exit_status == 0 else None
    if expect.build_id is not None and build_id != expect.build_id:
        raise TargetError(f"the guest runs kernel build-id {build_id}, not the one just built ({expect.build_id})",
                          "the wrong kernel image was booted")
    meminfo = _check(target.run(["cat", "/proc/meminfo"], 30), "reading /proc/meminfo")
    huge = 0
    for line in meminfo.splitlines():
        if line.startswith("HugePages_Total:"):
            huge = int(line.split()[1])
    if huge < expect.hugepages:
        raise TargetError(f"the guest has {huge} huge pages, the selftests need {expect.hugepages}",
                          "give the VM more memory, or check CONFIG_HUGETLBFS")
    cpus = count_cpus(_check(target.run(["cat", "/sys/devices/system/cpu/online"], 30), "reading online CPUs"))
    if expect.cpus is not None and cpus != expect.cpus:
        raise TargetError(f"the guest runs on {cpus} CPU(s), the machine has {expect.cpus}",
                          f"build the kernel with CONFIG_SMP=y and CONFIG_NR_CPUS >= {expect.cpus} (configs/base.config)")
    iommus = tuple(_check(target.run(["ls", "/sys/class/iommu"], 30), "listing /sys/class/iommu").split())
    if expect.iommu and not any(re.search(expect.iommu, i) for i in iommus):
        raise TargetError(f"the guest has no IOMMU matching '{expect.iommu}' (found: {', '.join(iommus) or 'none'}):\n"
                          f"{target.console_excerpt(30)}",
                          "the vIOMMU did not come up; check the profile and the kernel config")
    return GuestInfo(release, build_id, huge, iommus, cpus)


def count_cpus(cpulist: str) -> int:
    """CPUs in a kernel cpulist ("0-1", "0,2-3")."""
    n = 0
    for part in cpulist.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
    return n
