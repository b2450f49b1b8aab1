"""What a debug kernel changes besides its config: the per-test limit and
hang window grow by its measured slowdown, its command-line words (if any)
reach every target, and its traces decode to file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import debugkernels, suites
from harness.errors import InputError
from harness.pipeline import Options, Pipeline
from harness.reports.results import RunRecord
from harness.run.session import SessionOptions, limits
from harness.ui import Ui


def test_the_slowdowns_multiply_and_the_limits_follow():
    assert debugkernels.slowdown(()) == 1
    assert debugkernels.slowdown(("kasan", "lockdep")) == 30
    access = suites.load("access")
    assert limits(access, SessionOptions()) == (30.0, 5.0)
    limit, window = limits(access, SessionOptions(slowdown=30))
    assert limit == 900 and window == pytest.approx(5 * 30 ** 0.5)
    # --per-test-timeout is the limit as given, and the window never more than half of it
    assert limits(access, SessionOptions(per_test_timeout=4, slowdown=30)) == (4, 2)


def test_a_debug_kernel_s_command_line_words_come_before_the_user_s(tmp_path, monkeypatch):
    """What a debug kernel needs on its command line reaches every target
    (a VM's, a board's trial kernel's), before --cmdline; KASAN needs
    nothing: kasan_multi_shot would flood the console with one report per
    faulting access, so the run lists the tests after its first report."""
    assert debugkernels.cmdline(("kasan", "lockdep")) == ""
    (tmp_path / "odd.config").write_text("CONFIG_X=y\n")
    (tmp_path / "odd.toml").write_text('cmdline = "odd.knob=1"\n')
    monkeypatch.setattr(debugkernels, "directory", lambda: tmp_path)
    opts = Options(work=tmp_path, debug=("odd",), extra_cmdline="iommu.strict=1")
    pipe = Pipeline(opts, Ui(quiet=True), RunRecord(suite="access", profile="x86_64-vtd"), tmp_path / "logs")
    assert pipe.cmdline() == "odd.knob=1 iommu.strict=1"
    assert Pipeline(Options(work=tmp_path), Ui(quiet=True), RunRecord(suite="access", profile="x86_64-vtd"),
                    tmp_path / "logs").cmdline() == ""


def test_debug_kernels_carry_line_tables_and_the_default_one_does_not():
    frags = [f.name for f in debugkernels.fragments(("kasan", "lockdep"))]
    assert frags == ["kasan.config", "lockdep.config", "debuginfo.config"]
    assert debugkernels.fragments(()) == ()
    text = Path(debugkernels.fragments(("lockdep",))[-1]).read_text()
    assert "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y" in text and "# CONFIG_DEBUG_INFO_NONE is not set" in text


def test_a_bad_facts_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "odd.config").write_text("CONFIG_X=y\n")
    (tmp_path / "odd.toml").write_text('slowdown = "fast"\n')
    monkeypatch.setattr(debugkernels, "directory", lambda: tmp_path)
    with pytest.raises(InputError, match="odd.toml is invalid"):
        debugkernels.slowdown(("odd",))
