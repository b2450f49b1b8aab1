"""What the debug kernels are for, shown on the real kernel: bugs of the
kind iommufd really has (a lock-order inversion, an out-of-bounds read,
sleeping under a spinlock, a leaked pin record), each in the access paths
and each invisible to userspace.  Under ``--debug kasan,kmemleak,lockdep``
each one turns the gate red in exactly the tests that hit it, with the
detector's report in that test's log; on the default kernel, which lacks the
detectors, the same bugs pass green.  No false positives either: every other
test of the suite passes on the debug kernel, its boot is clean, and the
leak scan after each suite blames no test that leaked nothing.  One debug
build serves all of them: a fixture changes one file, so switching between
them is an incremental build of that build directory.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from expected import listed_tests  # tests/e2e/expected.py

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("IOMMUFD_HARNESS_WORK", REPO / "work"))
FIXTURES = REPO / "tests" / "fixtures" / "kernel-patches"
BASELINES = REPO / "selftests" / "baselines"
DEBUG = "kasan,kmemleak,lockdep"

pytestmark = pytest.mark.slow

# fixture -> (the first test that hits the bug, the kind of its first report, how that report
# starts, the tests that hit the bug, whether every one of them must fail)
DETECTED = {
    # lockdep reports an inversion once, in the test that closes the cycle
    "lock-inversion-in-access-rw.patch": (
        "iommufd_ioas.no_domain.access_rw", "lockdep", "WARNING: possible circular locking dependency detected",
        "iommufd_ioas.no_domain.access_rw", True),
    # every write through an access reads past the buffer; KASAN reports the first one of a
    # boot, KFENCE (sampling) maybe later ones
    "oob-read-in-access-rw.patch": (
        "iommufd_ioas.no_domain.access_rw", "kasan", "BUG: KASAN: slab-out-of-bounds in iommufd_access_rw",
        "iommufd_ioas.*.access_rw*", False),
    # might_sleep() reports at most once a second: the first test that unmaps a pinned
    # range, and maybe others that do the same
    "sleep-in-atomic-in-notify-unmap.patch": (
        "iommufd_ioas.no_domain.access_pin_unmap", "bug", "BUG: sleeping function called from invalid context",
        "iommufd_ioas.*.access_pin_unmap", False),
}


def _run(results: Path, *extra: str) -> tuple[int, dict]:
    argv = [sys.executable, "-m", "harness", "run", "--work", str(WORK), "--results", str(results),
            "--baseline", str(BASELINES), *extra]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=3600)
    sys.stderr.write(res.stderr[-10000:])
    return res.returncode, json.loads((results / "results.json").read_text())


@pytest.mark.parametrize("fixture", sorted(DETECTED))
def test_the_debug_kernel_catches_the_bug_in_the_test_that_hits_it(tmp_path, fixture):
    first, kind, headline, hit, every = DETECTED[fixture]
    results = tmp_path / fixture.removesuffix(".patch")
    code, data = _run(results, "--debug", DEBUG, "--patches", str(FIXTURES / fixture))
    assert code == 1 and data["verdict"] == "fail"
    names = [t["name"] for t in data["tests"]]
    hitting = set(fnmatch.filter(names, hit))
    bad = [t for t in data["tests"] if t["status"] != "pass"]
    failed = {t["name"] for t in bad}
    assert bad and bad[0]["name"] == first and {t["status"] for t in bad} == {"fail"}, bad
    assert failed <= hitting and (failed == hitting or not every), (failed, hitting)
    rec = bad[0]
    assert rec["reason"].startswith(f"kernel {kind} during the test: {headline}"), rec["reason"]
    assert headline in rec["log"]
    # userspace saw the test pass: only the kernel knew
    assert f"#            OK  {first}" in rec["log"]
    assert (data["kernel"]["splats"][0]["test"], data["kernel"]["splats"][0]["kind"]) == (first, kind)
    assert {s["test"] for s in data["kernel"]["splats"]} == failed
    cmp = json.loads((results / "comparison.json").read_text())
    assert {r["name"] for r in cmp["regressions"]} == failed
    assert first in (results / "summary.md").read_text()
    # the debug kernel has line tables: the report's trace decodes to file and line
    decoded = rec["log"][rec["log"].index(f"--- decoded {kind} ---"):]
    assert re.search(r"\(drivers/iommu/iommufd/device\.c:\d+\)", decoded), decoded[:3000]
    # lockdep stops checking at the first report (its own, or one that tainted the kernel)
    off = data["kernel"]["lockdep_off"]
    assert off["test"] == first and off["unchecked"] == names[names.index(first) + 1:], off
    # KASAN reports only the first bug of a boot: the run names the tests it did not check
    if kind == "kasan":
        assert data["kernel"]["kasan_off"] == {"test": first, "title": rec["reason"].split(": ", 1)[1],
                                               "unchecked": names[names.index(first) + 1:]}
    else:
        assert "kasan_off" not in data["kernel"]
    # the detectors really ran, and saw nothing else: the other tests and the boot are clean
    assert data["kernel"]["debug"] == ["kasan", "kmemleak", "lockdep"] and \
        len(data["tests"]) == len(listed_tests("access"))
    assert data["kernel"]["leaks"]["scanned"] and data["kernel"]["leaks"]["in_tests"] == 0
    console = (results / "console.log").read_text()
    assert "Lock dependency validator" in console and "KernelAddressSanitizer initialized" in console


LEAKING = ("iommufd_ioas.no_domain.access_pin", "iommufd_ioas.no_domain.access_pin_unmap",
           "iommufd_mock_domain.one_domain.user_copy")
NOT_LEAKING = ("iommufd_ioas.no_domain.access_rw_unaligned",)


def test_the_debug_kernel_gives_each_leak_to_the_test_that_leaked_it(tmp_path):
    """leak-in-access-unpin.patch leaks a pin record whenever an access
    unpins a range: kmemleak's scan after the suite finds them, and each
    one fails the test whose process allocated it; a test that pins
    nothing (access_rw_unaligned) passes."""
    results = tmp_path / "leak"
    code, data = _run(results, "--debug", DEBUG, "--patches", str(FIXTURES / "leak-in-access-unpin.patch"),
                      "--tests", ",".join(LEAKING + NOT_LEAKING))
    assert code == 1 and data["verdict"] == "fail"
    status = {t["name"]: t["status"] for t in data["tests"]}
    assert status == {**{n: "fail" for n in LEAKING}, **{n: "pass" for n in NOT_LEAKING}}, status
    for t in data["tests"]:
        if t["name"] in LEAKING:
            assert re.match(r"kernel leak during the test: memory leak in iopt_area_add_access: "
                            r"(unreferenced object of|\d+ unreferenced objects, the first of) \d+ bytes "
                            r"\(comm iommufd#\d+\)$", t["reason"]), t["reason"]
            assert "backtrace" in t["log"] and "iommufd_access_pin_pages" in t["log"]
    # every object kmemleak listed was a test's: none from the boot, sshd or a kernel thread
    leaks = data["kernel"]["leaks"]
    assert leaks["scanned"] and leaks["objects"] == leaks["in_tests"] >= len(LEAKING), leaks
    splats = data["kernel"]["splats"]
    assert {s["test"] for s in splats} == set(LEAKING) and \
        {(s["kind"], s["signature"]) for s in splats} == {("leak", "memory leak in iopt_area_add_access")}
    assert len(splats) == len(LEAKING)  # one report per test and allocating function
    assert (results / "kmemleak.txt").read_text().count("unreferenced object ") == leaks["objects"]
    # the allocation backtrace decodes to file and line
    rec = next(t for t in data["tests"] if t["name"] == LEAKING[0])
    decoded = rec["log"][rec["log"].index("--- decoded leak ---"):]
    assert re.search(r"\niopt_area_add_access \([^)]*\bdrivers/iommu/iommufd/pages\.c:\d+\)", decoded), decoded[:3000]
    assert LEAKING[0] in (results / "summary.md").read_text()


def test_without_the_detectors_the_same_bugs_pass_green(tmp_path):
    """The value of each detector: the default kernel runs all five broken
    access paths, two tests at a time (the race's condition), and the gate
    stays green."""
    blind = [*sorted(DETECTED), "leak-in-access-unpin.patch", "race-in-access-rw.patch"]
    patches = [arg for f in blind for arg in ("--patches", str(FIXTURES / f))]
    code, data = _run(tmp_path / "blind", "--parallel", "2", *patches)
    assert code == 0 and data["verdict"] == "pass", data["errors"]
    assert data["kernel"]["debug"] == []
    assert len(data["patches"]) == len(list((REPO / "kernel-patches" / "default").glob("*.patch"))) + len(blind)
    assert "leaks" not in data["kernel"]  # no kmemleak: no scan
    assert len(data["tests"]) == len(listed_tests("access")) and data["kernel"]["splats"] == []


def test_the_debug_kernel_names_a_self_deadlock_before_the_test_hangs(tmp_path):
    """The self-deadlock of deadlock-in-access-rw.patch (on the default
    kernel: a timeout with the blocked stack and nothing else, see
    test_faults.py): lockdep reports the recursive mutex_lock in the test
    that takes it, before the task goes to sleep for ever; the harness's
    hang window, grown with the debug kernel's slowdown, still ends it."""
    hung, after = "iommufd_ioas.no_domain.access_rw", "iommufd_ioas.mock_domain.access_pin"
    results = tmp_path / "deadlock"
    code, data = _run(results, "--debug", DEBUG, "--patches", str(FIXTURES / "deadlock-in-access-rw.patch"),
                      "--tests", f"{hung},{after}")
    assert code == 1 and data["verdict"] == "fail"
    assert [(t["name"], t["status"]) for t in data["tests"]] == [(hung, "timeout"), (after, "pass")]
    rec = data["tests"][0]
    assert rec["reason"].startswith("hung in iommufd_access_rw <- mutex_lock: no progress for "), rec["reason"]
    assert "WARNING: possible recursive locking detected" in rec["log"]
    kinds = {(s["test"], s["kind"]) for s in data["kernel"]["splats"]}
    assert {(hung, "lockdep"), (hung, "hang")} <= kinds and {t for t, _ in kinds} == {hung}, kinds
    # the access suite's limit, times lockdep's, KASAN's and kmemleak's slowdown
    assert data["kernel"]["limits"]["per_test_s"] == pytest.approx(30 * 3 * 10 * 1.2)
    assert data["kernel"]["lockdep_off"]["test"] == hung


RACING = "iommufd_ioas.*.access_rw*"
RACE = "BUG: KCSAN: data-race in iommufd_access_rw / iommufd_access_rw"


def test_kcsan_sees_two_tests_race_only_when_they_run_at_once(tmp_path):
    """race-in-access-rw.patch updates a global counter without a lock in
    every iommufd_access_rw.  One test at a time never races with itself: on
    the KCSAN kernel the access_rw tests pass one by one.  In two lanes
    (--parallel 2) two processes' access_rw meet on two CPUs and KCSAN
    reports the race, in a test that ran while a test of the other lane did;
    the reproducer runs the two again, in two lanes."""
    patch = ("--patches", str(FIXTURES / "race-in-access-rw.patch"), "--tests", RACING)
    code, serial = _run(tmp_path / "serial", "--debug", "kcsan", *patch)
    assert code == 0 and {t["status"] for t in serial["tests"]} == {"pass"}, serial["kernel"].get("splats")
    assert serial["kernel"]["debug"] == ["kcsan"] and not serial["kernel"].get("splats")

    results = tmp_path / "parallel"
    code, data = _run(results, "--debug", "kcsan", "--parallel", "2", *patch)
    assert code == 1 and data["verdict"] == "fail"
    assert [t["name"] for t in data["tests"]] == [t["name"] for t in serial["tests"]]  # the selection's order
    splats = data["kernel"]["splats"]
    assert splats and {(s["kind"], s["signature"]) for s in splats} == {("kcsan", RACE)}, splats
    failed = [t for t in data["tests"] if t["status"] != "pass"]
    assert {t["name"] for t in failed} == {s["test"] for s in splats}
    rec = failed[0]
    assert rec["reason"] == f"kernel kcsan during the test: {RACE}"
    # the other access: a test of the other lane that ran at the same time
    names = [t["name"] for t in data["tests"]]
    assert rec["alongside"] and all(names.index(o) % 2 != names.index(rec["name"]) % 2 for o in rec["alongside"])
    decoded = rec["log"][rec["log"].index("--- decoded kcsan ---"):]
    assert len(re.findall(r"\niommufd_access_rw \([^)]*drivers/iommu/iommufd/device\.c:\d+\)", decoded)) == 2
    summary = (results / "summary.md").read_text()
    assert f"--tests '{','.join([rec['name'], *rec['alongside']])}'" in summary and "--parallel 2" in summary
