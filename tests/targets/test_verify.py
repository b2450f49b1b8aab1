"""Proof of the booted kernel, asked of a real machine: this one.  The local
target runs verify's command here, so the kernel release, build-id, huge
pages, CPUs and IOMMUs it reads are this machine's, read the way a guest's
are, in one command (every command is a round trip of its own under TCG)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakes import LocalTarget

from harness import elfinfo
from harness.errors import TargetError
from harness.targets.verify import Expect, verify

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
