"""Live build progress: kbuild steps counted against an estimate."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from harness import profiles
from harness.stages import build, config
from harness.stages.progress import BuildProgress
from harness.toolchain import Toolchain


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_steps_warnings_and_eta_from_streamed_output():
    clock, shown = Clock(), []
    p = BuildProgress("building bzImage (cold)", 100, lambda line, final: shown.append((line, final)),
                      interval=30, clock=clock)
    # output arrives in arbitrary chunks: a line split across two is counted once
    p.feed(b"  CC      init/main.o\n  CC      init/versi")
    p.feed(b"on.o\n" + b"".join(b"  CC      kernel/f%d.o\n" % i for i in range(23)))
    p.feed(b"drivers/x.c:3:1: warning: unused variable 'y' [-Wunused-variable]\n")
    assert (p.steps, p.warnings) == (25, 1) and shown == []  # nothing shown before the interval
    clock.t += 60
    p.feed(b"  LD      vmlinux.o\n")
    assert shown == [("building bzImage (cold): 26/~100 steps (26%), 1m00s elapsed, ETA 2m50s, 1 warning", False)]
    p.done()
    assert shown[-1] == ("building bzImage (cold): 26 steps in 1m00s, 1 warning", True)


def test_without_an_estimate_only_counts():
    clock = Clock()
    p = BuildProgress("building Image (incremental)", 0, lambda *a: None, clock=clock)
    p.feed(b"  CC      drivers/iommu/iommufd/device.o\n  AR      drivers/iommu/iommufd/built-in.a\n")
    clock.t += 5
    assert p.line() == "building Image (incremental): 2 steps, 5s elapsed"


def test_the_build_shows_its_progress_and_remembers_a_cold_builds_size(fake_kernel, tmp_path):
    prof = profiles.load("x86_64-vtd")
    tc = Toolchain("x86_64")
    bdir = tmp_path / "b"
    cfg = config.configure(config.ConfigRequest(fake_kernel, bdir, tc, "tinyconfig", prof.fragments, ()),
                           tmp_path / "config.log")
    shown = []

    def go(generation):
        shown.clear()
        build.build(build.BuildRequest(fake_kernel, bdir, tc, cfg.sha256, generation), tmp_path / "build.log",
                    show=lambda line, final: shown.append((line, final)))
        return shown[-1]

    line, final = go("1")
    assert final and line.startswith("building bzImage (cold): 3 steps in ")
    assert go("2")[0].startswith("building bzImage (incremental): 3 steps")
    (bdir / "vmlinux").unlink()  # cold again: the estimate is this dir's last cold build
    progress = []
    orig = BuildProgress.__init__

    def spy(self, what, estimate, show, **kw):
        progress.append((what, estimate))
        orig(self, what, estimate, show, **kw)

    BuildProgress.__init__ = spy
    try:
        go("3")
    finally:
        BuildProgress.__init__ = orig
    assert progress == [("building bzImage (cold)", 3)]
    assert tc.spec.cold_build_steps > 1000  # the recorded figure for a first cold build


KBUILD_LOGS = sorted((Path(__file__).resolve().parents[1] / "golden" / "kbuild").glob("*-cold.log"))


def kbuild_lines(data: bytes) -> int:
    """kbuild's quiet lines: two spaces, its tag in capitals, the target."""
    n = 0
    for line in data.splitlines():
        tag = line[2:].split(b" ", 1)[0]
        if line.startswith(b"  ") and not line.startswith(b"   ") and tag.isupper() and line[2 + len(tag):3 + len(tag)] == b" ":
            n += 1
    return n


def image_make(log: Path) -> bytes:
    """The kernel image's make in a build.log (the harness heads each command
    it logs with "$ "): what the live progress line counts."""
    data = log.read_bytes()
    start = data.index(b"$ make ")
    end = data.find(b"\n$ ", start)
    return data[data.index(b"\n", start) + 1:end if end >= 0 else len(data)]


@pytest.mark.parametrize("log", KBUILD_LOGS, ids=lambda p: p.name)
def test_a_real_cold_build_is_counted_step_by_step_whatever_the_chunks(log):
    """A real cold kernel build's output (tests/golden/capture_kbuild.py),
    streamed in pieces of any size: every kbuild line is one step, and
    make's own lines are not."""
    data = image_make(log)
    rnd = random.Random(log.name)
    clock = Clock()
    p = BuildProgress("building", 0, lambda *a: None, clock=clock)
    at = 0
    while at < len(data):
        n = rnd.randint(1, 9000)
        p.feed(data[at:at + n])
        at += n
    p.done()
    assert p.steps == kbuild_lines(data) > 1000
    assert p.warnings == data.count(b": warning: ")


@pytest.mark.parametrize("log", KBUILD_LOGS, ids=lambda p: p.name)
def test_the_recorded_cold_figure_is_what_a_cold_build_takes(log):
    """The ETA of a first cold build comes from arches/<arch>.toml: within
    10% of the steps a real cold build of that kernel printed, the debug
    kernels' too (their detectors add only a few objects)."""
    profile = log.name.removesuffix("-cold.log").partition("+")[0]
    steps = kbuild_lines(image_make(log))
    want = Toolchain(profiles.load(profile).arch).spec.cold_build_steps
    assert abs(want - steps) <= 0.1 * steps, (log.name, want, steps)


def test_there_is_a_cold_build_log_of_each_architecture():
    arches = {profiles.load(p.name.removesuffix("-cold.log").partition("+")[0]).arch for p in KBUILD_LOGS}
    assert {"x86_64", "arm64"} <= arches, KBUILD_LOGS
