"""A suite on a lifecycle: a crash, the reboot for the tests left, and a
target that cannot be rebooted."""

import json
from collections import Counter
from pathlib import Path

from fakes import LocalLifecycle

from harness import suites
from harness.parse import leaks
from harness.run import session as session_mod
from harness.targets.base import IMAGE_LAYOUT
from harness.pipeline import Options, new_record
from harness.reports.resultsdir import ResultsDir
from harness.run.session import SessionOptions, TestSession
from harness.targets.lifecycle import Lifecycle, State
from harness.ui import Ui

SUITE = suites.Suite("t", "", (suites.SuiteRun("iommufd", ("iommufd_ioas.*",)),), 10.0)
PICK = "*.no_domain.access_pin,*.no_domain.hangs,*.mock_domain.access_pin"
HANGS = "iommufd_ioas.no_domain.hangs"  # the "kernel" dies while it runs


def _session(lifecycle, tmp_path, **kw):
    record = new_record(Options.of(work=tmp_path / "w"))
    return TestSession(lifecycle, SUITE, SessionOptions(tests=PICK, **kw), record, ResultsDir(tmp_path / "r"),
                       Ui(quiet=True)), record


def _statuses(record):
    return [(t.name.rsplit(".", 1)[1], t.status) for t in record.tests]


def test_crash_reboots_and_runs_the_tests_left(fake_selftests, tmp_path):
    lc = LocalLifecycle(fake_selftests, crash_on=HANGS)
    session, record = _session(lc, tmp_path, continue_after_crash=True)
    with lc:
        lc.up()
        session.run()
        assert lc.state is State.VERIFIED and lc.boots == 2
    assert _statuses(record) == [("access_pin", "pass"), ("hangs", "crash"), ("access_pin", "pass")]
    assert [t for t, _ in lc.history] == ["boot", "verify", "crashed", "reboot", "verify", "teardown"]


def test_without_continue_the_rest_is_notrun_and_the_target_crashed(fake_selftests, tmp_path):
    lc = LocalLifecycle(fake_selftests, crash_on=HANGS)
    session, record = _session(lc, tmp_path)
    with lc:
        lc.up()
        session.run()
        assert lc.state is State.CRASHED and lc.boots == 1
    assert _statuses(record) == [("access_pin", "pass"), ("hangs", "crash"), ("access_pin", "notrun")]
    assert record.errors == ["the target died during the run: the guest kernel panicked"]


def test_a_target_that_cannot_reboot_leaves_the_rest_notrun(fake_selftests, tmp_path):
    class Board(LocalLifecycle):
        _reboot = Lifecycle._reboot

    lc = Board(fake_selftests, crash_on=HANGS)
    session, record = _session(lc, tmp_path, continue_after_crash=True)
    with lc:
        lc.up()
        session.run()
    assert _statuses(record) == [("access_pin", "pass"), ("hangs", "crash"), ("access_pin", "notrun")]
    assert "the reboot failed" in record.tests[2].reason
    assert any(e.startswith("reboot after a crash failed: local cannot be rebooted") for e in record.errors)


def test_a_rerun_finds_its_own_kernel_reports(fake_selftests, tmp_path):
    """A test that makes the kernel WARN does so on its rerun too: the rerun's
    report is its own (not the first run's), so the test is not flaky."""
    lc = LocalLifecycle(fake_selftests)
    record = new_record(Options.of(work=tmp_path / "w"))
    session = TestSession(lc, SUITE, SessionOptions(tests="*.no_domain.warns", rerun_failed=1), record,
                          ResultsDir(tmp_path / "r"), Ui(quiet=True))
    with lc:
        lc.up()
        session.run()
    assert [(t.name, t.status) for t in record.tests] == [("iommufd_ioas.no_domain.warns", "fail")]
    assert "failed on 1 rerun(s) too" in record.tests[0].reason
    assert [(s["test"], s["kind"]) for s in record.kernel["splats"]] == [("iommufd_ioas.no_domain.warns", "warning")] * 2


def test_tests_after_lockdeps_or_kasans_first_report_ran_unchecked(fake_selftests, tmp_path):
    """lockdep turns itself off after its first report, and KASAN reports
    only the first bug of a boot: the run says which later tests ran
    unchecked by which.  (The fake kernel's WARN stands in for a lockdep or
    a KASAN report here.)"""
    import dataclasses

    from fakes import LocalTarget

    from harness.run.attribute import unchecked_after

    assert unchecked_after(150, {"a": 100, "b": 200, "c": 300}) == ["b", "c"]
    assert unchecked_after(400, {"a": 100}) == []

    class LockdepTarget(LocalTarget):
        def kernel_splats(self, since, until=None, final=False):
            return [dataclasses.replace(s, kind=kind) for s in super().kernel_splats(since, until, final)]

    class Lc(LocalLifecycle):
        def _boot(self):
            return LockdepTarget(self.bindir)

    for kind, key, without in (("lockdep", "lockdep_off", "lock checking"), ("kasan", "kasan_off", "KASAN's reports")):
        lc = Lc(fake_selftests)
        record = new_record(Options.of(work=tmp_path / kind))
        pick = "*.no_domain.access_pin,*.no_domain.warns,*.mock_domain.access_pin"
        session = TestSession(lc, SUITE, SessionOptions(tests=pick), record, ResultsDir(tmp_path / kind / "r"),
                              Ui(quiet=True))
        with lc:
            lc.up()
            session.run()
        off = record.kernel[key]
        assert off["test"] == "iommufd_ioas.no_domain.warns"
        assert off["unchecked"] == ["iommufd_ioas.mock_domain.access_pin"]
        assert set(record.kernel) & {"lockdep_off", "kasan_off"} == {key}  # each detector for itself
        from harness.reports.markdown import render

        assert f"1 later test(s) ran without {without}: `iommufd_ioas.mock_domain.access_pin`" in render(record, None)


class _Log:
    """A target that is only its kernel log: a captured console."""

    def __init__(self, text):
        self.text = text

    def kernel_log_find(self, pattern, since=0):
        m = pattern.search(self.text, since)
        return m.start() if m else None


def _pass_over(text):
    """A finished pass over a captured console: its reports, each with the
    test whose RUN/END markers enclose it (as the runner attributes them)."""
    import re
    import types

    from harness.parse.splats import scan

    found = []
    for s in scan(text):
        name = None
        for m in re.finditer(r"iommufd-harness: (RUN|END) (\S+)", text[:s.start]):
            name = m.group(2) if m.group(1) == "RUN" else None
        found.append((name, s))
    return types.SimpleNamespace(target=_Log(text), splats=found)


def _golden(name):
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "golden" / "console" / name).read_bytes().decode()


def test_lockdep_stops_at_its_own_first_report():
    from harness.run.session import lockdep_stop

    text = _golden("x86_64-lock-inversion.log")
    name, why, pos = lockdep_stop(_pass_over(text))
    assert (name, why) == ("iommufd_ioas.no_domain.access_rw", "WARNING: possible circular locking dependency detected")
    assert text[pos:].startswith("[") and "=====" in text[pos:pos + 80]


def test_a_report_that_taints_the_kernel_turns_lockdep_off_too():
    """KASAN taints the kernel and the kernel stops lock debugging: the tests
    after it ran without lock checking, though lockdep itself said nothing."""
    from harness.run.session import lockdep_stop

    text = _golden("x86_64-kasan-oob.log")
    r = _pass_over(text)
    assert not any(s.kind == "lockdep" for _, s in r.splats)
    name, why, pos = lockdep_stop(r)
    assert name == "iommufd_ioas.no_domain.access_rw"
    assert why.startswith("BUG: KASAN: slab-out-of-bounds in iommufd_access_rw") and why.endswith(
        "(it tainted the kernel)")
    assert text[pos:].startswith("Disabling lock debugging due to kernel taint")
    # a kernel without lockdep prints the same taint line: nothing was turned off there
    no_lockdep = text.replace("Lock dependency validator", "Lock validator")
    assert lockdep_stop(_pass_over(no_lockdep)) is None


def test_a_flood_of_kernel_reports_is_counted_not_listed(tmp_path):
    """A WARN in a hot loop prints thousands of reports: results.json lists
    the first 100 and counts the rest, and summary.md counts them all."""
    from harness.parse.splats import scan
    from harness.reports.markdown import render
    from harness.run.session import MAX_RECORDED_SPLATS

    [s] = scan(_golden("x86_64-warn-in-access-rw.log"))
    session, record = _session(LocalLifecycle(None), tmp_path)
    session._note_splats([("iommufd_ioas.no_domain.access_rw", s)] * 250)
    assert len(record.kernel["splats"]) == MAX_RECORDED_SPLATS == 100
    assert record.kernel["splats_omitted"] == 150
    assert "#### Kernel splats (250)" in render(record, None)


def _repeat(fake_selftests, tmp_path, tests, **kw):
    lc = LocalLifecycle(fake_selftests)
    record = new_record(Options.of(work=tmp_path / "w"))
    session = TestSession(lc, SUITE, SessionOptions(tests=tests, **kw), record, ResultsDir(tmp_path / "r"),
                          Ui(quiet=True))
    with lc:
        lc.up()
        session.run()
    return record


def test_repeat_keeps_one_record_per_test_with_its_first_bad_attempt(fake_selftests, tmp_path):
    record = _repeat(fake_selftests, tmp_path, "*.no_domain.flaky,*.no_domain.access_pin", repeat=3)
    by = {t.name.rsplit(".", 1)[1]: t for t in record.tests}
    assert sorted(by) == ["access_pin", "flaky"]
    assert by["flaky"].status == "fail"
    assert by["flaky"].reason.startswith("1 of 3 attempts did not pass, first at attempt 1 (fail, pass, pass)")
    assert by["flaky"].log.count("# --- attempt ") == 3
    assert (by["access_pin"].status, by["access_pin"].reason) == ("pass", "3 of 3 attempts passed")


def test_until_fail_stops_at_the_first_attempt_that_fails(fake_selftests, tmp_path):
    record = _repeat(fake_selftests, tmp_path, "*.no_domain.flaky", repeat=5, until_fail=True)
    assert [(t.status, t.log.count("--- attempt")) for t in record.tests] == [("fail", 0)]
    record = _repeat(fake_selftests, tmp_path / "2", "*.no_domain.access_pin", repeat=4, until_fail=True)
    assert [(t.status, t.reason) for t in record.tests] == [("pass", "4 of 4 attempts passed")]


def test_every_attempt_finds_its_own_kernel_reports(fake_selftests, tmp_path):
    record = _repeat(fake_selftests, tmp_path, "*.no_domain.warns", repeat=3)
    assert [(s["test"], s["kind"]) for s in record.kernel["splats"]] == [("iommufd_ioas.no_domain.warns",
                                                                          "warning")] * 3
    assert record.tests[0].status == "fail" and record.tests[0].reason.startswith("3 of 3 attempts did not pass")


def test_folded_attempts_keep_the_worst_and_a_skip_is_not_a_failure():
    from harness.reports.results import TestRecord
    from harness.run.session import fold_attempts

    def t(status, n):
        return TestRecord("f.v.t", status, 1.0, log=f"attempt {n}", binary="iommufd")

    got = fold_attempts([t("skip", 1), t("pass", 2), t("fail", 3)])
    assert (got.status, got.log.split("\n")[-1]) == ("fail", "attempt 3")
    assert got.reason.startswith("1 of 3 attempts did not pass, first at attempt 3 (skip, pass, fail)")
    assert fold_attempts([t("fail", 1), t("crash", 2), t("fail", 3)]).status == "crash"
    skipped = fold_attempts([t("skip", 1), t("pass", 2)])
    assert (skipped.status, skipped.reason) == ("skip", "1 of 2 attempts passed (skip, pass)")
    assert fold_attempts([t("pass", 1), t("pass", 2)]).duration_s == 2.0


# -- leaks (kmemleak) -------------------------------------------------------------

KMEMLEAK = Path(__file__).resolve().parents[1] / "golden" / "kmemleak" / "x86_64-leak-in-access-unpin.txt"
THREE = "*.no_domain.access_pin,*.mock_domain.access_rw,*.mock_domain.fails"


def _leak_session(tmp_path, fake_selftests, kmemleak: Path):
    ctl = tmp_path / "kmemleak-ctl"
    lc = LocalLifecycle(fake_selftests, env={"HARNESS_KMEMLEAK": str(kmemleak), "HARNESS_KMEMLEAK_CTL": str(ctl)})
    record = new_record(Options.of(work=tmp_path / "w"))
    sink = ResultsDir(tmp_path / "r")
    session = TestSession(lc, SUITE, SessionOptions(tests=THREE, leak_scan=True), record, sink, Ui(quiet=True))
    with lc:
        lc.up()
        session.run()
    return session, record, ctl, lc


def test_each_leak_goes_to_the_test_whose_process_allocated_it(fake_selftests, tmp_path, monkeypatch):
    """The three tests' processes are iommufd#1..3 (run-tests names them),
    as were the first three tests' of the captured run: their objects are
    theirs; those of the captured run's later tests are no test's here."""
    monkeypatch.setattr(session_mod, "LEAK_MIN_AGE", 0.0)
    found = leaks.parse(KMEMLEAK.read_text())
    per_comm = Counter(f.comm for f in found)
    session, record, ctl, lc = _leak_session(tmp_path, fake_selftests, KMEMLEAK)
    assert ctl.read_text() == "scan\nscan\n"  # kmemleak reports an object at its second scan
    mine = [per_comm[f"iommufd#{i}"] for i in (1, 2, 3)]
    assert all(mine) and sum(mine) < len(found)
    assert [(t.name.rsplit(".", 1)[1], t.status) for t in record.tests] == [
        ("access_pin", "fail"), ("access_rw", "fail"), ("fails", "fail")]
    pin, rw, fails = record.tests
    # one report per test and allocating function, counting its objects; the log has every object
    per_test = {t.name: [f for f in found if f.comm == c] for t, c in zip(record.tests, ("iommufd#1", "iommufd#2",
                                                                                          "iommufd#3"))}
    for t in record.tests:
        objs = per_test[t.name]
        title = objs[0].splat().title if len(objs) == 1 else \
            f"memory leak in iopt_area_add_access: {len(objs)} unreferenced objects, the first of {objs[0].size} " \
            f"bytes (comm {objs[0].comm})"
        assert t.log.count("unreferenced object 0x") == len(objs)
        assert f"--- kernel leak: {title} ---" in t.log
        # a test that failed anyway (here without a reason of its own) is not said to fail by the leak
        assert t.reason == (f"kernel leak: {title}" if t is fails else f"kernel leak during the test: {title}")
    assert record.kernel["leaks"] == {"scanned": True, "objects": len(found), "in_tests": sum(mine)}
    assert [(n, s.kind, s.signature) for n, s in session.splats] == \
        [(t.name, "leak", "memory leak in iopt_area_add_access") for t in record.tests]
    # the whole list is kept, and the changed records reach progress.jsonl after the first ones
    assert (tmp_path / "r" / "kmemleak.txt").read_text() == KMEMLEAK.read_text()
    progress = [json.loads(line) for line in (tmp_path / "r" / "progress.jsonl").read_text().splitlines()]
    assert [p["status"] for p in progress] == ["pass", "pass", "fail", "fail", "fail", "fail"]


def test_no_kmemleak_on_the_target_is_said_not_a_pass(fake_selftests, tmp_path, monkeypatch):
    monkeypatch.setattr(session_mod, "LEAK_MIN_AGE", 0.0)
    session, record, ctl, lc = _leak_session(tmp_path, fake_selftests, tmp_path / "missing")
    assert record.kernel["leaks"] == {"scanned": False, "why": f"no kmemleak: {tmp_path / 'missing'} is missing"}
    assert record.errors == [f"no leak scan: no kmemleak: {tmp_path / 'missing'} is missing"]
    assert [t.status for t in record.tests] == ["pass", "pass", "fail"]


def test_a_kernel_without_kmemleak_is_not_scanned(fake_selftests, tmp_path):
    lc = LocalLifecycle(fake_selftests)
    session, record = _session(lc, tmp_path)
    with lc:
        lc.up()
        session.run()
        commands = lc.target.commands
    assert not [c for c in commands if c[0] == IMAGE_LAYOUT.leakcheck] and "leaks" not in record.kernel
