"""repro: a results dir's run again, from what it recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.jobs import repro_options
from harness.pipeline import Options
from harness.reports.markdown import render
from harness.reports.results import RunRecord

INPUTS = {"kernel_src": "/src/linux", "rev": None, "commits": "a" * 40 + ".." + "b" * 40, "default_patches": False,
          "patches": ["/p/fix.patch"], "kconfig_add": ["CONFIG_DEBUG_VM=y"], "fragments": ["/f/x.config"],
          "config": "/c/.config", "cmdline": "iommu.strict=1", "debug": ["lockdep"]}


def _results(tmp_path: Path, golden: Path, inputs=INPUTS) -> Path:
    data = json.loads((golden / "results-x86_64-vtd-full-fail.json").read_text())
    data["inputs"] = inputs
    out = tmp_path / "res"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(data))
    return out


def test_repro_takes_everything_that_defines_the_kernel_and_the_failing_tests(tmp_path, golden):
    res = _results(tmp_path, golden)
    machine = Options.of(work=tmp_path / "w", accel="tcg", repeat=5, until_fail=True)
    opts = repro_options(res, None, machine)
    assert (opts.kernel.kernel_src, opts.kernel.commits, opts.kernel.default_patches) == (Path("/src/linux"), INPUTS["commits"], False)
    assert (opts.kernel.patches, opts.kernel.fragments, opts.kernel.base_config) == ([Path("/p/fix.patch")], [Path("/f/x.config")],
                                                                Path("/c/.config"))
    assert (opts.kernel.kconfig_add, opts.kernel.debug, opts.machine.extra_cmdline) == (["CONFIG_DEBUG_VM=y"], ("lockdep",),
                                                                  "iommu.strict=1")
    assert (opts.machine.profile, opts.testing.suite) == ("x86_64-vtd", "full")
    assert opts.testing.tests.split(",") == [f"iommufd_ioas.{v}.area_auto_iova"
                                     for v in ("no_domain", "mock_domain", "two_mock_domain", "mock_domain_limit")]
    assert (opts.machine.accel, opts.testing.repeat, opts.testing.until_fail) == ("tcg", 5, True)
    assert repro_options(res, "iommufd_ioas.*.access_pin", machine).testing.tests == "iommufd_ioas.*.access_pin"


def test_repro_of_a_green_run_needs_a_test_name(tmp_path, golden):
    data = json.loads((golden / "results-x86_64-vtd-full-pass.json").read_text())
    data["inputs"] = INPUTS
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "results.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="nothing failed"):
        repro_options(tmp_path / "ok", None, Options.of(work=tmp_path))


def test_summary_names_the_repro_command(tmp_path, golden):
    res = _results(tmp_path, golden)
    run = RunRecord.from_json(json.loads((res / "results.json").read_text()))
    run.results_dir = str(res)
    md = render(run, None)
    assert f"iommufd-harness repro {res}" in md and "--commits " + INPUTS["commits"] in md


def test_a_test_of_a_parallel_run_is_reproduced_with_the_tests_that_ran_alongside_it(tmp_path, golden):
    """A data race needs its partner: repro (and the printed reproducer)
    runs a failed test of a --parallel run again with the tests of the other
    lanes that ran while it did, in as many lanes; a serial run's stays alone."""
    from harness.reports.repro import reproducer

    data = json.loads((golden / "results-x86_64-vtd-full-fail.json").read_text())
    failed = [t for t in data["tests"] if t["status"] == "fail"]
    partner = next(t["name"] for t in data["tests"] if t["status"] == "pass")
    for t in failed:
        t["alongside"] = [partner]
    data["inputs"] = {**INPUTS, "parallel": 2}
    (tmp_path / "par").mkdir()
    (tmp_path / "par" / "results.json").write_text(json.dumps(data))
    opts = repro_options(tmp_path / "par", None, Options.of(work=tmp_path))
    assert opts.testing.parallel == 2
    assert opts.testing.tests.split(",") == [t["name"] for t in failed] + [partner]
    line = reproducer("x86_64-vtd", "full", failed[0]["name"], data["inputs"], alongside=[partner])
    assert f"--tests '{failed[0]['name']},{partner}'" in line and line.count("--parallel 2") == 1
    run = RunRecord.from_json(data)
    assert f"--tests '{failed[0]['name']},{partner}'" in render(run, None)
    # the same run without --parallel: the test alone
    assert repro_options(_results(tmp_path, golden), None, Options.of(work=tmp_path)).testing.parallel == 1
    alone = reproducer("x86_64-vtd", "full", failed[0]["name"], INPUTS, alongside=[partner])
    assert f"--tests '{failed[0]['name']}'" in alone and "--parallel" not in alone


def test_a_results_dir_keeps_its_inputs_and_repro_takes_the_copies_when_the_originals_are_gone(tmp_path, golden):
    """keep_inputs copies the series (a file and a quilt directory), the
    fragments and --config into the results dir; repro uses a copy only
    where the recorded path no longer exists."""
    from harness.pipeline import inputs, keep_inputs

    mine = tmp_path / "mine"
    (mine / "quilt").mkdir(parents=True)
    (mine / "fix.patch").write_text("--- a/x\n+++ b/x\n")
    (mine / "quilt" / "series").write_text("one.patch\n")
    (mine / "quilt" / "one.patch").write_text("--- a/y\n+++ b/y\n")
    (mine / "x.config").write_text("CONFIG_X=y\n")
    (mine / "full.config").write_text("CONFIG_Y=y\n")
    opts = Options.of(work=tmp_path / "w", patches=[mine / "fix.patch", mine / "quilt"], fragments=[mine / "x.config"],
                   base_config=mine / "full.config")
    res = _results(tmp_path, golden, inputs={**inputs(opts), "kept": None})
    kept = keep_inputs(opts, res)
    data = json.loads((res / "results.json").read_text())
    data["inputs"]["kept"] = kept
    (res / "results.json").write_text(json.dumps(data))
    assert kept == {"patches": ["inputs/patches/0-fix.patch", "inputs/patches/1-quilt"],
                    "fragments": ["inputs/fragments/0-x.config"], "config": "inputs/config/0-full.config"}
    assert (res / "inputs/patches/1-quilt/one.patch").read_text() == "--- a/y\n+++ b/y\n"
    # the originals still there: they are what runs
    again = repro_options(res, None, Options.of(work=tmp_path / "w"))
    assert again.kernel.patches == [mine / "fix.patch", mine / "quilt"] and again.kernel.base_config == mine / "full.config"
    # moved elsewhere, the originals gone: the copies
    import shutil

    shutil.move(res, tmp_path / "elsewhere")
    (mine / "fix.patch").unlink()
    shutil.rmtree(mine / "quilt")
    (mine / "full.config").unlink()
    again = repro_options(tmp_path / "elsewhere", None, Options.of(work=tmp_path / "w"))
    where = (tmp_path / "elsewhere").resolve()
    assert again.kernel.patches == [where / "inputs/patches/0-fix.patch", where / "inputs/patches/1-quilt"]
    assert again.kernel.fragments == [mine / "x.config"]  # still there: the original
    assert again.kernel.base_config == where / "inputs/config/0-full.config"


def test_repro_of_a_lab_board_run_goes_to_that_board(tmp_path, golden):
    res = _results(tmp_path, golden, inputs={**INPUTS, "lab": "/lab/lab.toml", "board": "odroid-1"})
    opts = repro_options(res, None, Options.of(work=tmp_path / "w"))
    assert (opts.machine.lab, opts.machine.board) == (Path("/lab/lab.toml"), "odroid-1")
