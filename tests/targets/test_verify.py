"""Proof of the booted kernel, asked of a real machine: this one.  The local
target runs verify's command here, so the kernel release, build-id, huge
pages, CPUs and IOMMUs it reads are this machine's, read the way a guest's
are, in one command (every command is a round trip of its own under TCG)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from fakes import LocalTarget

from harness import elfinfo
from harness.errors import TargetError
from harness.targets.verify import Expect, from_console, verify, verify_booted

NOTES = Path("/sys/kernel/notes")
HERE = elfinfo.build_id_from_notes(NOTES.read_bytes()) if os.access(NOTES, os.R_OK) else None


def test_the_running_kernel_is_read_in_one_command(tmp_path):
    t = LocalTarget(tmp_path)
    info = verify(t, Expect(build_id=HERE, iommu="", hugepages=0, cpus=os.cpu_count()))
    assert info.kernel_release == os.uname().release
    assert info.build_id == HERE and info.cpus == os.cpu_count()
    assert info.iommus == tuple(sorted(os.listdir("/sys/class/iommu")))
    assert len(t.commands) == 1


@pytest.mark.skipif(HERE is None, reason="this machine's /sys/kernel/notes is not readable")
def test_another_kernel_is_refused_by_its_build_id(tmp_path):
    with pytest.raises(TargetError, match=f"runs kernel build-id {HERE}, not the one just built"):
        verify(LocalTarget(tmp_path), Expect(build_id="0" * 40, iommu="", hugepages=0))


class Missing(LocalTarget):
    """A guest without /proc/meminfo (the command's path made to point nowhere)."""

    def run(self, argv, timeout, **kw):
        return super().run([a.replace("/proc/meminfo", "/proc/no-meminfo") for a in argv], timeout, **kw)


def test_a_read_that_fails_in_the_guest_is_named_with_its_error(tmp_path):
    with pytest.raises(TargetError, match=r"reading /proc/meminfo failed in the guest \(status 1\): cat: "
                                          r"/proc/no-meminfo: No such file"):
        verify(Missing(tmp_path), Expect(build_id=None, iommu="", hugepages=0))


def test_what_the_tests_need_is_checked(tmp_path):
    with pytest.raises(TargetError, match="huge pages, the selftests need 100000"):
        verify(LocalTarget(tmp_path), Expect(build_id=None, iommu="", hugepages=100000))
    with pytest.raises(TargetError, match="the guest has no IOMMU matching 'no-such-iommu'"):
        verify(LocalTarget(tmp_path), Expect(build_id=None, iommu="no-such-iommu", hugepages=0))


# -- the facts the guest image prints on its console at boot ---------------------------

CONSOLE = Path(__file__).resolve().parents[1] / "golden" / "console"
BOOTED = {"x86_64": ("x86_64-clean-boot.log", r"^dmar\d+$"), "arm64": ("arm64-clean-boot.log", r"^smmu3\.")}


def _facts_line(text: str) -> str:
    return next(line for line in text.split("\r\n") if line.startswith("iommufd-harness: facts "))


@pytest.mark.parametrize("arch", sorted(BOOTED))
def test_a_guest_that_said_its_facts_while_booting_is_verified_without_a_command(tmp_path, arch):
    """A real boot's console (captured by tests/golden/capture.py): the
    kernel it names, its CPUs, IOMMUs and huge pages are the ones the boot
    log itself shows, and verify needs no command for them."""
    name, iommu = BOOTED[arch]
    text = (CONSOLE / name).read_bytes().decode()
    facts = from_console(text)
    assert facts is not None
    assert re.search(rf"\] Linux version {re.escape(facts.release)} ", text)
    assert re.search(r"smp: Brought up 1 node, 2 CPUs", text) and facts.online == "0-1"
    assert "iommufd_selftest_iommu.0" in facts.iommus and any(re.match(iommu, i) for i in facts.iommus)
    build_id = elfinfo.build_id_from_notes(facts.notes)
    assert build_id and re.fullmatch(r"[0-9a-f]{40}", build_id)
    t = LocalTarget(tmp_path)
    info, source = verify_booted(t, Expect(build_id=build_id, iommu=iommu, hugepages=64, cpus=2), text)
    assert (source, t.commands) == ("console", [])
    assert (info.kernel_release, info.build_id, info.hugepages, info.cpus) == (facts.release, build_id, 64, 2)
    # the same facts for another kernel: refused
    with pytest.raises(TargetError, match="not the one just built"):
        verify(t, Expect(build_id="0" * 40, iommu="", hugepages=0), facts)


@pytest.mark.parametrize("arch", sorted(BOOTED))
def test_a_facts_line_that_is_not_whole_is_not_read(arch):
    """A kernel message written into the middle of the line, or a line cut
    short: nothing is read from it (verify asks over SSH instead)."""
    text = (CONSOLE / BOOTED[arch][0]).read_bytes().decode()
    line = _facts_line(text)
    kernel_line = next(x for x in text.split("\r\n") if x.startswith("[") and "Run /init" in x)
    for cut in range(len("iommufd-harness: facts "), len(line)):
        assert from_console(text.replace(line, line[:cut])) is None, cut
        assert from_console(text.replace(line, line[:cut] + "\r\n" + kernel_line + "\r\n" + line[cut:])) is None, cut


@pytest.mark.skipif(HERE is None, reason="this machine's /sys/kernel/notes is not readable")
def test_facts_that_do_not_pass_are_asked_again(tmp_path):
    """The facts are from early in the boot: what fails on them is asked of
    the target before any verdict (here this machine, whose kernel is not
    the guest's)."""
    text = (CONSOLE / BOOTED["x86_64"][0]).read_bytes().decode()
    t = LocalTarget(tmp_path)
    info, source = verify_booted(t, Expect(build_id=HERE, iommu="", hugepages=0, cpus=os.cpu_count()), text)
    assert source == "ssh" and len(t.commands) == 1
    assert info.kernel_release == os.uname().release and info.build_id == HERE
