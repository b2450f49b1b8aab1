"""What a debug kernel changes besides its config: the per-test limit and
hang window grow by its measured slowdown, and its traces decode to
file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import debugkernels, suites
from harness.errors import InputError
from harness.run.session import SessionOptions, limits


def test_the_slowdowns_multiply_and_the_limits_follow():
    assert debugkernels.slowdown(()) == 1
    assert debugkernels.slowdown(("kasan", "lockdep")) == 30
    access = suites.load("access")
    assert limits(access, SessionOptions()) == (30.0, 5.0)
    limit, window = limits(access, SessionOptions(slowdown=30))
    assert limit == 900 and window == pytest.approx(5 * 30 ** 0.5)
    # --per-test-timeout is the limit as given, and the window never more than half of it
    assert limits(access, SessionOptions(per_test_timeout=4, slowdown=30)) == (4, 2)


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


def test_debug_kernels_that_exclude_each_other_are_refused_by_name():
    """KCSAN depends on !KASAN: asked for together, the run stops before
    configuring, naming both (a config stage would only say a symbol did
    not stick)."""
    with pytest.raises(InputError, match="debug kernels kcsan and kasan cannot be combined"):
        debugkernels.parse(["kasan,lockdep", "kcsan"])
    assert debugkernels.parse(["kcsan,lockdep"]) == ("kcsan", "lockdep")
    assert debugkernels.parse(["kasan,kmemleak,lockdep"]) == ("kasan", "kmemleak", "lockdep")
