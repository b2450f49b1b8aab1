import dataclasses
import re
from pathlib import Path
import subprocess
import time

from fakes import HANGCHECK, RUN_TESTS, LocalLifecycle, LocalTarget

from harness import suites
from harness.parse.testlist import parse_list
from harness.run.listings import list_tests
from harness.run.runner import Runner
from harness.suites import Selection


def _run(bindir, names, limit=5.0, target=None):
    target = target or LocalTarget(bindir)
    seen = []
    r = Runner(target, limit, seen.append)
    records = r.run(Selection({"iommufd": tuple(names)}, ()))
    return r, records, seen, target


def test_lists_tests_from_the_binary(fake_selftests):
    names = list_tests(LocalTarget(fake_selftests), "iommufd")
    tests = ["access_pin", "access_rw", "fails", "hangs", "stalls", "dies", "warns", "flaky"]
    assert names == [f"iommufd_ioas.{v}.{t}" for v in ("no_domain", "mock_domain") for t in tests] + [
        "iommufd.simple_close"]


def test_pass_and_fail_are_reported_with_logs(fake_selftests):
    names = ["iommufd_ioas.no_domain.access_pin", "iommufd_ioas.no_domain.fails", "iommufd.simple_close"]
    r, records, seen, _ = _run(fake_selftests, names)
    assert [(t.name, t.status) for t in records] == [
        (names[0], "pass"), (names[1], "fail"), (names[2], "pass")]
    assert seen == records  # streamed as they finished
    assert "Expected 0 (0) == rc (-22)" in records[1].log
    assert r.dead is None


def test_hanging_test_is_killed_and_the_rest_still_runs(fake_selftests):
    names = ["iommufd_ioas.no_domain.access_pin", "iommufd_ioas.no_domain.hangs", "iommufd_ioas.no_domain.access_rw"]
    r, records, _, target = _run(fake_selftests, names, limit=1.5)
    assert [(t.name, t.status) for t in records] == [
        (names[0], "pass"), (names[1], "timeout"), (names[2], "pass")]
    assert "per-test limit" in records[1].reason
    # the blocked stacks asked for, then the tree killed (hangcheck stop)
    assert any(cmd[:2] == (HANGCHECK, "stop") for cmd in target.commands)
    # the hung process tree is gone
    import subprocess
    left = subprocess.run(["pgrep", "-f", f"{fake_selftests}/iommufd"], capture_output=True, text=True).stdout
    assert left.strip() == ""


def test_a_test_whose_task_stops_running_is_a_timeout_after_the_window_not_the_limit(fake_selftests, tmp_path):
    """run-tests' watcher sees a task of the test that does not run at all
    for the window (here a stopped one: on a guest, one asleep in the kernel,
    state D); the harness asks for the blocked stacks, kills the test, and
    goes on with the next test long before the per-test limit."""
    sysrq = tmp_path / "sysrq-trigger"
    target = LocalTarget(fake_selftests, env={"HARNESS_STALL_STATES": "T", "HARNESS_SYSRQ": str(sysrq)})
    names = ["iommufd_ioas.no_domain.stalls", "iommufd_ioas.no_domain.access_rw"]
    seen = []
    r = Runner(target, 60.0, seen.append, stall_s=1.0)
    t0 = time.monotonic()
    records = r.run(Selection({"iommufd": tuple(names)}, ()))
    assert [(t.name, t.status) for t in records] == [(names[0], "timeout"), (names[1], "pass")]
    assert time.monotonic() - t0 < 10  # two windows and the kill, not the 60 s limit
    # no kernel here to print the stacks: the reason says so, naming the task
    # the test's processes are named after it (comm "iommufd#1"), as the kernel names them
    assert re.fullmatch(r"no progress for 1 s: iommufd#1:(\d+) asleep in the kernel, not running \(tasks asleep in "
                        r"the kernel: iommufd#1:\1; their stacks did not reach the kernel log\)", records[0].reason)
    # ... unique in the boot: the binary started again for the test after the hung one counts on
    assert r.comms == {"iommufd#1": names[0], "iommufd#3": names[1]}
    assert sysrq.read_text() == "w\n"  # the kernel was asked for every blocked task's stack
    stops = [cmd for cmd in target.commands if cmd[0] == HANGCHECK]
    assert len(stops) == 1 and stops[0][1] == "stop"
    assert r.hung == [(names[0], "", [])]  # SIGKILL ended it (a stopped task can die)
    run_tests = [cmd for cmd in target.commands if cmd[0] == RUN_TESTS]
    assert run_tests[0][1:5] == ("-l", "70", "-s", "1")  # kselftest's alarm after the harness's limit


def test_a_target_that_cannot_end_a_hung_test_is_wedged(fake_selftests, tmp_path, monkeypatch):
    """When even the dump-and-kill command does not come back, the kernel is
    wedged: the target is dead (with --continue-after-crash: rebooted) and
    the rest is not run on it."""
    from harness.run import runner

    stuck = tmp_path / "hangcheck"
    stuck.write_text("#!/bin/sh\nexec sleep 30\n")
    stuck.chmod(0o755)
    monkeypatch.setattr(runner, "STOP_TIMEOUT", 1.0)
    target = LocalTarget(fake_selftests)
    target.layout = dataclasses.replace(target.layout, hangcheck=str(stuck))
    names = ["iommufd_ioas.no_domain.hangs", "iommufd_ioas.no_domain.access_rw"]
    r, records, _, _ = _run(fake_selftests, names, limit=1.0, target=target)
    assert [(t.name, t.status) for t in records] == [(names[0], "timeout"), (names[1], "notrun")]
    assert r.dead == "the kernel is wedged: it did not end a hung test within 1 s"
    assert records[1].reason == f"not run: {r.dead}"
    subprocess.run(["pkill", "-f", f"{fake_selftests}/iommufd"])


def test_kselftest_own_timeout_is_a_timeout(tmp_path):
    """A test kselftest_harness's own alarm ended ("Test terminated by
    timeout") did not finish: timeout, not fail."""
    fake = tmp_path / "iommufd"
    fake.write_text("#!/bin/sh\n"
                    "echo 'TAP version 13'; echo '1..1'; echo \"#  RUN           $2 ...\"\n"
                    "echo \"# $2: Test terminated by timeout\" >&2\n"
                    "echo \"#          FAIL  $2\"; echo \"not ok 1 $2\"; exit 1\n")
    fake.chmod(0o755)
    _, records, _, _ = _run(tmp_path, ["iommufd_ioas.no_domain.access_rw"])
    assert [(t.status, t.reason) for t in records] == [("timeout", "killed by kselftest's own per-test alarm")]


def test_selftest_process_dying_blames_the_running_test(fake_selftests):
    names = ["iommufd_ioas.no_domain.dies", "iommufd_ioas.no_domain.access_rw"]
    _, records, _, _ = _run(fake_selftests, names)
    assert [(t.name, t.status) for t in records] == [(names[0], "fail"), (names[1], "pass")]
    assert "died" in records[0].reason


def test_dead_machine_marks_crash_then_notrun(fake_selftests):
    target = LocalTarget(fake_selftests)
    names = ["iommufd_ioas.no_domain.hangs", "iommufd_ioas.no_domain.access_rw", "iommufd.simple_close"]

    def on_start_kill(name):
        target.panic()  # a real panic report on the console: the detector must find it

    r = Runner(target, 30.0, lambda rec: None, on_start=on_start_kill)
    records = r.run(Selection({"iommufd": tuple(names)}, ()))
    assert [t.status for t in records] == ["crash", "notrun", "notrun"]
    assert records[0].name == names[0]
    assert "fake console" in records[0].log
    assert r.dead == "the guest kernel panicked"


def test_access_suite_selects_the_24_access_tests(golden):
    names = parse_list((golden / "iommufd-6.12-list.txt").read_text())
    sel = suites.select(suites.load("access"), {"iommufd": names})
    chosen = sel.tests["iommufd"]
    assert len(chosen) == 24
    assert sum(n.endswith(".access_pin_unmap") for n in chosen) == 4
    assert sum(n.endswith(".user_copy") for n in chosen) == 4
    assert sel.unmatched == ()
    assert all(type(n) is str for n in chosen)


def test_kernel_warning_during_a_passing_test_fails_it(fake_selftests):
    names = ["iommufd_ioas.no_domain.access_pin", "iommufd_ioas.no_domain.warns", "iommufd_ioas.no_domain.access_rw"]
    r, records, seen, _ = _run(fake_selftests, names)
    assert [(t.name, t.status) for t in records] == [
        (names[0], "pass"), (names[1], "fail"), (names[2], "pass")]
    warned = records[1]
    assert warned.reason.startswith("kernel warning during the test: WARNING: CPU: 1 PID:")
    assert "iommufd_access_rw+0x4a/0x2d0" in warned.log and "end trace" in warned.log
    assert seen[1].status == "fail"  # streamed with the splat already attributed
    assert [(name, s.kind) for name, s in r.splats] == [(names[1], "warning")]


def test_tap_that_contradicts_itself_is_an_error(tmp_path):
    """A binary whose Totals line disagrees with its results is not trusted."""
    liar = tmp_path / "iommufd"
    liar.write_text("#!/bin/sh\n"
                    "echo 'TAP version 13'; echo '1..1'\n"
                    "echo '#  RUN           f.v.t ...'; echo '#            OK  f.v.t'; echo 'ok 1 f.v.t'\n"
                    "echo '# Totals: pass:2 fail:0 xfail:0 xpass:0 skip:0 error:0'\n")
    liar.chmod(0o755)
    r, records, _, _ = _run(tmp_path, ["f.v.t"])
    assert [t.status for t in records] == ["pass"]
    assert r.tap_errors == ["iommufd: the Totals line says pass:2 but 1 were parsed"]


def test_rerun_failed_marks_flaky_and_keeps_real_failures(fake_selftests, tmp_path):
    from harness.pipeline import Options, new_record
    from harness.reports.resultsdir import ResultsDir
    from harness.run.session import SessionOptions, TestSession
    from harness.ui import Ui

    lifecycle = LocalLifecycle(fake_selftests)
    target = lifecycle.up()
    record = new_record(Options.of(work=tmp_path / "w"))
    suite = suites.load("access")
    session = TestSession(lifecycle, suite, SessionOptions(rerun_failed=2), record, ResultsDir(tmp_path / "r"),
                          Ui(quiet=True))
    names = ("iommufd_ioas.no_domain.flaky", "iommufd_ioas.no_domain.fails", "iommufd.simple_close")
    selection = Selection({"iommufd": names}, ())
    Runner(target, 5.0, record.tests.append).run(selection)
    assert [t.status for t in record.tests] == ["fail", "fail", "pass"]
    session.rerun_failed(selection, 5.0)
    flaky, fails, simple = record.tests
    assert flaky.status == "pass" and flaky.reason.startswith("flaky:")
    assert "rerun 1: pass" in flaky.log
    assert fails.status == "fail" and "failed on 2 rerun(s) too" in fails.reason
    assert simple.status == "pass" and simple.reason == ""
    # simple_close passed the first time: it was not run again
    runs = [c for c in target.commands if c[0] == RUN_TESTS]
    assert len(runs) == 3  # the first pass, then two reruns (fails fails on both)
    assert "iommufd.simple_close" in runs[0] and all("iommufd.simple_close" not in c for c in runs[1:])


def _warn_outside_any_test(target, bindir):
    """The fake kernel's WARN, logged with no test's markers around it."""
    import os
    import subprocess

    subprocess.run([str(bindir / "iommufd"), "-r", "iommufd_ioas.no_domain.warns"], capture_output=True,
                   env={**os.environ, "FAKE_CONSOLE": str(target.console)}, check=False)


def test_kernel_report_outside_any_test_is_a_failure_of_its_own(fake_selftests):
    from harness.reports.results import PHASES

    target = LocalTarget(fake_selftests)
    _warn_outside_any_test(target, fake_selftests)  # "at boot": before the first test
    names = ["iommufd_ioas.no_domain.access_pin", "iommufd.simple_close"]
    r, records, seen, _ = _run(fake_selftests, names, target=target)
    assert [(t.name, t.status) for t in records] == [(names[0], "pass"), (names[1], "pass")]
    boot = seen[-1]
    assert (boot.name, boot.status, boot.binary) == (PHASES["boot"], "fail", "kernel")
    assert boot.reason.startswith("kernel warning boot: WARNING: CPU: 1 PID:")
    assert "iommufd_access_rw+0x4a/0x2d0" in boot.log
    assert [(name, s.kind) for name, s in r.splats] == [("kernel.boot", "warning")]
    # a later pass on the same target: a report before its first test is between tests
    _warn_outside_any_test(target, fake_selftests)
    seen2 = []
    r2 = Runner(target, 5.0, seen2.append, after_boot=False, since=r.log_pos)
    r2.run(Selection({"iommufd": ("iommufd.simple_close",)}, ()))
    assert [(t.name, t.status) for t in seen2] == [("iommufd.simple_close", "pass"),
                                                   ("kernel.between_tests", "fail")]


def test_where_a_report_outside_the_tests_happened():
    from harness.run.attribute import phase

    assert phase(10, None, None, after_boot=True) == "boot"  # no test ran
    assert phase(10, 100, 500, after_boot=True) == "boot"
    assert phase(10, 100, 500, after_boot=False) == "between tests"  # a rerun pass
    assert phase(200, 100, 500, after_boot=True) == "between tests"
    assert phase(500, 100, 500, after_boot=True) == "after tests"
    assert phase(200, 100, None, after_boot=True) == "between tests"  # the last test crashed


def test_parallel_lanes_run_at_once_and_each_report_goes_to_the_task_it_names(fake_selftests):
    """--parallel 2: two run-tests processes, round robin; a kernel report
    goes to the test whose task (comm) it names, not to a test whose
    markers merely enclose it; the records come in the selection's order."""
    target = LocalTarget(fake_selftests)
    names = ["iommufd_ioas.no_domain.access_pin", "iommufd_ioas.mock_domain.access_rw",
             "iommufd_ioas.mock_domain.warns", "iommufd_ioas.mock_domain.fails"]
    seen = []
    r = Runner(target, 30.0, seen.append, parallel=2)
    records = r.run(Selection({"iommufd": tuple(names)}, ()))
    assert [t.name for t in records] == names == [t.name for t in seen]
    assert [t.status for t in records] == ["pass", "pass", "fail", "fail"]
    assert records[2].reason.startswith("kernel warning during the test: WARNING: CPU: 1 PID: ")
    assert [(n, s.kind) for n, s in r.splats] == [(names[2], "warning")]
    lanes = [cmd for cmd in target.commands if cmd[0] == RUN_TESTS]
    assert sorted(tuple(c[-2:]) for c in lanes) == sorted([(names[0], names[2]), (names[1], names[3])])
    # every test's processes have a name of their own
    assert sorted(r.comms.values()) == sorted(names) and len(set(r.comms)) == 4
    assert r.comms[re.search(r"Comm: (\S+)", records[2].log).group(1)] == names[2]
    # what ran alongside a test is the other lane's, never its own lane's, and goes both ways
    lane = {n: i % 2 for i, n in enumerate(names)}
    for t in records:
        assert all(lane[o] != lane[t.name] and t.name in records[names.index(o)].alongside for o in t.alongside)


def test_a_report_names_its_task_by_the_comm_of_its_header_or_kasans_by_task():
    """The task a captured kernel report is about: the dump_stack header's
    Comm (WARN, BUG, KASAN, lockdep), or KASAN's "by task" line alone."""
    from harness.parse.splats import scan
    from harness.run.attribute import report_comm

    golden = Path(__file__).resolve().parents[1] / "golden" / "console"
    [kasan] = [s for s in scan((golden / "x86_64-kasan-oob.log").read_text()) if s.kind == "kasan"][:1]
    assert report_comm(kasan.text) == "iommufd"
    header = re.compile(r"^CPU: \d+ UID: \d+ PID: \d+ Comm: \S+.*$", re.M)
    assert report_comm(header.sub("", kasan.text)) == "iommufd"  # from "by task iommufd/108"
    assert report_comm("WARNING: no task named here") is None


def test_a_test_never_seen_starting_lasted_zero_seconds_not_a_hair_below():
    """The machine dying as a test begins: its duration is 0, which
    results.schema.json requires (now - started.get(name, now) read the
    clock twice and came out negative)."""
    from harness.run.runner import _since

    assert all(_since({}, "t") == 0.0 for _ in range(1000))
    assert _since({"t": time.monotonic() - 5}, "t") >= 5
