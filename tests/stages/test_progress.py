"""Live build progress: kbuild steps counted against an estimate."""

from __future__ import annotations

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
