"""Proof that a booted target is the one the run asked for: the kernel just
built (its build-id in /sys/kernel/notes), the promised IOMMU, enough huge
pages.  Target-agnostic: it runs one command (a QEMU target may instead
hand over what the guest's image printed on its console while booting)."""

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


# Everything verify reads, in one command: every SSH command is a channel, a
# fork and an exec in the guest, which under TCG costs a round trip of its
# own.  Each text answer is followed by a marker line with its exit status;
# /sys/kernel/notes (binary) comes last, raw.
MARK = b"@@iommufd-harness-status "
ASKED = (("uname -r", "uname -r"), ("cat /proc/meminfo", "reading /proc/meminfo"),
         ("cat /sys/devices/system/cpu/online", "reading online CPUs"), ("ls /sys/class/iommu", "listing /sys/class/iommu"))
SCRIPT = "".join(f"{cmd} 2>&1; echo \"{MARK.decode()}$?\"; " for cmd, _ in ASKED) + "cat /sys/kernel/notes 2>/dev/null"


def _answers(out: bytes) -> tuple[list[str], bytes]:
    """The text answers, each checked for its exit status, and the notes."""
    texts = []
    rest = out
    for cmd, what in ASKED:
        text, sep, rest = rest.partition(MARK)
        status, _, rest = rest.partition(b"\n")
        if not sep or not status.strip().isdigit():
            raise TargetError(f"the guest did not answer {cmd} (verifying the booted kernel): "
                              f"{out[-300:].decode(errors='replace')!r}")
        if int(status) != 0:
            raise TargetError(f"{what} failed in the guest (status {int(status)}): "
                              f"{text.decode(errors='replace').strip()[:500]}")
        texts.append(text.decode(errors="replace"))
    return texts, rest


@dataclass(frozen=True)
class Answers:
    """What a guest told about itself, before any check."""

    release: str
    hugepages: int
    online: str  # cpulist of the online CPUs
    iommus: tuple[str, ...]
    notes: bytes  # /sys/kernel/notes


def ask(target: Target) -> Answers:
    """Everything verify needs, in one command."""
    res = target.run(["sh", "-c", SCRIPT], 30)
    (release, meminfo, online, iommu_list), notes = _answers(res.stdout)
    huge = 0
    for line in meminfo.splitlines():
        if line.startswith("HugePages_Total:"):
            huge = int(line.split()[1])
    return Answers(release.strip(), huge, online.strip(), tuple(iommu_list.split()), notes)


# The harness's guest image says the same on its console while the harness
# connects (qemu-images/debian-bookworm/init), so a VM is verified without a
# command: one line, all of it or nothing (a kernel message written into the
# middle of it makes it unreadable, and the harness asks over SSH instead).
FACTS = re.compile(r"^iommufd-harness: facts release=(\S+) cpus=([0-9,-]+) hugepages=(\d+) "
                   r"iommus=(\S*) notes=((?:[0-9a-f]{2})*) end\r?$", re.M)


def from_console(text: str) -> Answers | None:
    """The facts line of a boot's console, or None (absent or garbled)."""
    m = FACTS.search(text)
    if m is None:
        return None
    release, online, huge, iommus, notes = m.groups()
    return Answers(release, int(huge), online, tuple(i for i in iommus.split(",") if i), bytes.fromhex(notes))


def verify(target: Target, expect: Expect, answers: Answers | None = None) -> GuestInfo:
    """The guest runs the kernel we built (unless ``expect.build_id`` is
    None), and has what the tests need: checked on ``answers`` if the guest
    already gave them, else on what it answers now."""
    a = answers if answers is not None else ask(target)
    build_id = elfinfo.build_id_from_notes(a.notes) if a.notes else None
    if expect.build_id is not None and build_id != expect.build_id:
        raise TargetError(f"the guest runs kernel build-id {build_id}, not the one just built ({expect.build_id})",
                          "the wrong kernel image was booted")
    if a.hugepages < expect.hugepages:
        raise TargetError(f"the guest has {a.hugepages} huge pages, the selftests need {expect.hugepages}",
                          "give the VM more memory, or check CONFIG_HUGETLBFS")
    cpus = count_cpus(a.online)
    if expect.cpus is not None and cpus != expect.cpus:
        raise TargetError(f"the guest runs on {cpus} CPU(s), the machine has {expect.cpus}",
                          f"build the kernel with CONFIG_SMP=y and CONFIG_NR_CPUS >= {expect.cpus} (configs/base.config)")
    if expect.iommu and not any(re.search(expect.iommu, i) for i in a.iommus):
        raise TargetError(f"the guest has no IOMMU matching '{expect.iommu}' (found: {', '.join(a.iommus) or 'none'}):\n"
                          f"{target.console_excerpt(30)}",
                          "the vIOMMU did not come up; check the profile and the kernel config")
    return GuestInfo(a.release, build_id, a.hugepages, a.iommus, cpus)


def verify_booted(target: Target, expect: Expect, console: str) -> tuple[GuestInfo, str]:
    """(info, "console") when the facts the guest's image printed on the
    ``console`` while booting pass the checks, else (info, "ssh"): what it
    answers now.  A command saved is a round trip under TCG; the facts are
    from early in the boot, so what fails on them (a device that came
    later) is asked again before the verdict."""
    facts = from_console(console)
    if facts is not None:
        try:
            return verify(target, expect, facts), "console"
        except TargetError:
            pass
    return verify(target, expect), "ssh"


def count_cpus(cpulist: str) -> int:
    """CPUs in a kernel cpulist ("0-1", "0,2-3")."""
    n = 0
    for part in cpulist.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
    return n
