"""--coverage on this machine's side, with real gcc, gcov and gcovr: a
program compiled the way kbuild compiles (sources in one tree, objects in
a build directory of their own, -fprofile-arcs -ftest-coverage), run, its
.gcda named as the kernel's debugfs names it (under the build directory's
absolute path); the harness puts it next to the build's .gcno, gcovr
makes the report, and the lines a change touched are split into executed
and not executed.  The kernel side (debugfs, the profile patch on the real
tree) is in the end-to-end tests."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from harness import coverage
from harness.errors import InputError

BEFORE = """#include <stdio.h>

int used(int a)
{
\treturn a * 2;
}

int unused(int a)
{
\treturn a * 3;
}

int main(int argc, char **argv)
{
\tif (argc > 5)
\t\treturn unused(argc);
\tprintf("%d\\n", used(argc));
\treturn 0;
}
"""
# the "series": one changed line in each function, and a comment
AFTER = BEFORE.replace("\treturn a * 2;", "\tint b = a * 2; /* changed */\n\treturn b;") \
    .replace("\treturn a * 3;", "\tint b = a * 3; /* changed */\n\treturn b;") \
    .replace("int main(", "/* a comment of the series */\nint main(")


class Target:
    """Stands for the guest: runs the harness's collect command in a shell
    on this machine, with /sys/kernel/debug/gcov replaced by a directory."""

    def __init__(self, root: Path):
        self.root = root

    def run(self, argv, timeout):
        script = argv[-1].replace(coverage.GCOV_ROOT, str(self.root))
        res = subprocess.run(["sh", "-c", script], capture_output=True, timeout=timeout)

        class R:
            exit_status = res.returncode
            stdout = res.stdout
            err_text = res.stderr.decode()
        return R()


@pytest.fixture
def built(tmp_path):
    # laid out as the work dir lays a tree out (trees/<t>/{src,build/<arch>}): with ccache's
    # base dir the compiler is handed the source relative to the build dir, as here
    src, build = tmp_path / "src", tmp_path / "build" / "arch"
    (src / "d").mkdir(parents=True)
    (build / "d").mkdir(parents=True)
    (tmp_path / "origin" / "d").mkdir(parents=True)
    (tmp_path / "origin" / "d" / "x.c").write_text(BEFORE)
    (src / "d" / "x.c").write_text(AFTER)
    subprocess.run(["gcc", "-fprofile-arcs", "-ftest-coverage", "-c", "../../src/d/x.c", "-o", "d/x.o"], cwd=build,
                   check=True)
    subprocess.run(["gcc", "-fprofile-arcs", "d/x.o", "-o", "prog"], cwd=build, check=True)
    subprocess.run(["./prog"], cwd=build, check=True, capture_output=True)
    # what debugfs shows: the counters under the build directory's absolute path
    debugfs = tmp_path / "debugfs"
    where = debugfs / build.resolve().relative_to("/") / "d"
    where.mkdir(parents=True)
    shutil.move(build / "d" / "x.gcda", where / "x.gcda")
    return tmp_path, src, build, debugfs


def test_the_lines_a_change_touched_are_split_into_executed_and_not(built):
    tmp, src, build, debugfs = built
    results = tmp / "results"
    cov = coverage.after_suite(Target(debugfs), src, tmp / "origin", build, ("d",), ["d/x.c", "d/README"],
                               "gcov", results)
    [f] = cov["series"]
    lines = AFTER.splitlines()
    assert f["file"] == "d/x.c" and f["profiled"]
    assert [lines[n - 1].strip() for n in f["executed"]] == ["int b = a * 2; /* changed */", "return b;"]
    assert [lines[n - 1].strip() for n in f["not_executed"]] == ["int b = a * 3; /* changed */", "return b;"]
    assert [lines[n - 1] for n in f["not_code"]] == ["/* a comment of the series */"]
    assert f["changed"] == 5
    # the whole file, and the reports a CI system shows
    assert cov["files"]["d/x.c"]["executed"] < cov["files"]["d/x.c"]["lines"] == cov["total"]["lines"]
    assert cov["total"]["branches"] == 2 and cov["total"]["taken"] == 1
    for rel in cov["reports"].values():
        assert (results / rel).is_file()
    assert "<coverage" in (results / "coverage" / "cobertura.xml").read_text()
    assert cov["objects"] == 1 and not (results / "coverage" / "raw").exists()
    assert not list(build.rglob("*.gcda")), "the build directory is left as it was"


def test_counters_of_another_build_are_not_this_kernels(built, tmp_path):
    tmp, src, build, debugfs = built
    other = tmp / "elsewhere"
    shutil.move(debugfs, other)
    (tmp / "debugfs2" / "srv" / "other-build" / "d").mkdir(parents=True)
    shutil.copy(next(other.rglob("x.gcda")), tmp / "debugfs2" / "srv" / "other-build" / "d" / "x.gcda")
    with pytest.raises(coverage.CoverageError, match="no gcov data for this build"):
        coverage.after_suite(Target(tmp / "debugfs2"), src, tmp / "origin", build, ("d",), [], "gcov",
                             tmp / "results")


def test_an_archive_from_the_guest_cannot_write_outside_its_directory(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("./a/ok.gcda", b"x"), ("../../evil.gcda", b"y"), ("./a/notes.txt", b"z")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    class T:
        def run(self, argv, timeout):
            class R:
                exit_status, stdout, err_text = 0, buf.getvalue(), ""
            return R()
    assert coverage.collect(T(), tmp_path / "into") == ["a/ok.gcda"]
    assert not (tmp_path / "evil.gcda").exists() and not list(tmp_path.rglob("notes.txt"))


def test_the_profile_patch_applies_to_the_tree_and_names_what_it_profiles(fake_kernel, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(fake_kernel, tree)
    (tree / "drivers/iommu/iommufd/Makefile").write_text(
        "# SPDX-License-Identifier: GPL-2.0-only\niommufd-y := main.o\nobj-$(CONFIG_IOMMUFD) += iommufd.o\n")
    p = coverage.profile_patch(tree, coverage.check_dirs(tree, coverage.DEFAULT_DIRS))
    assert p.files == ("drivers/iommu/iommufd/Makefile",) and "drivers/iommu/iommufd" in p.subject
    res = subprocess.run(["patch", "-p1", "--forward"], input=p.text, cwd=tree, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tree / "drivers/iommu/iommufd/Makefile").read_text().splitlines()[:2] == \
        ["# SPDX-License-Identifier: GPL-2.0-only", "GCOV_PROFILE := y"]
    with pytest.raises(InputError, match="--coverage-dir mm/nothing"):
        coverage.check_dirs(tree, ("mm/nothing",))
    with pytest.raises(InputError):
        coverage.check_dirs(tree, ("../etc",))


def test_the_gcov_of_each_compiler():
    from harness.toolchain import Toolchain

    assert Toolchain("x86_64").gcov == "gcov"  # this machine's own
    assert Toolchain("arm64").gcov == "aarch64-linux-gnu-gcov" == Toolchain("arm64").cc.replace("gcc", "gcov")


def test_the_gcovr_report_is_read_line_by_line(built):
    tmp, src, build, debugfs = built
    coverage.collect(Target(debugfs), tmp / "raw")
    coverage.gather(tmp / "raw", build, tmp / "objs")
    report = coverage.gcovr(tmp / "objs", src, build, ("d",), "gcov", tmp / "out", tmp / "gcovr.log")
    counts = coverage.file_lines(report)["d/x.c"]
    lines = AFTER.splitlines()
    executed = {lines[n - 1].strip() for n, c in counts.items() if c}
    assert "printf(\"%d\\n\", used(argc));" in executed and "return unused(argc);" not in executed
    assert json.loads((tmp / "out" / "coverage.json").read_text())["files"][0]["file"] == "d/x.c"


def test_the_summary_shows_the_series_lines_not_executed(built):
    from harness.reports.markdown import render
    from harness.reports.results import RunRecord, TestRecord

    tmp, src, build, debugfs = built
    cov = coverage.after_suite(Target(debugfs), src, tmp / "origin", build, ("d",), ["d/x.c"], "gcov", tmp / "r")
    run = RunRecord(verdict="pass", suite="access", profile="x86_64-vtd", tests=[TestRecord("t", "pass")],
                    coverage=cov)
    md = render(run, None)
    f = cov["series"][0]
    assert f"| `d/x.c` | 5 | 2 | 2 | {f['not_executed'][0]}-{f['not_executed'][1]} |" in md
    assert "`d`: " in md and "branches taken (50.0%)" in md
    assert "#### Coverage" not in render(RunRecord(verdict="pass", tests=[TestRecord("t", "pass")]), None)


class _Machine:
    def __init__(self, dead=None):
        self.dead = dead

    def failure(self):
        return self.dead


def test_a_kernel_that_died_in_the_suite_says_why_there_is_no_coverage():
    from harness.reports.markdown import render
    from harness.reports.results import RunRecord, TestRecord

    def collect():
        raise AssertionError("nothing to collect from a dead kernel")

    cov = coverage.of_run(_Machine("the guest kernel panicked"), 0, collect)
    assert cov == {"collected": False, "why": "the guest kernel panicked during the suite, and its counters with it"}
    md = render(RunRecord(verdict="fail", tests=[TestRecord("t", "crash")], coverage=cov), None)
    assert "#### Coverage\n\nNot collected: the guest kernel panicked during the suite" in md


def test_counters_after_a_reboot_in_the_suite_are_marked_partial():
    from harness.reports.markdown import render
    from harness.reports.results import RunRecord, TestRecord

    whole = coverage.of_run(_Machine(), 0, lambda: {"dirs": ["d"], "total": {"lines": 4, "executed": 2}})
    assert "partial" not in whole
    cov = coverage.of_run(_Machine(), 2, lambda: {"dirs": ["d"], "total": {"lines": 4, "executed": 2}})
    assert cov["partial"].startswith("the kernel was rebooted 2 times during the suite: only the tests run in its last")
    md = render(RunRecord(verdict="fail", tests=[TestRecord("t", "crash")], coverage=cov), None)
    assert "`d`: 2 of 4 lines executed" in md and "Partial: the kernel was rebooted 2 times" in md
