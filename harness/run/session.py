"""A whole suite on a target lifecycle: list the binaries' tests, select the
suite's, run them, and when the kernel dies (with --continue-after-crash)
have the lifecycle reboot the target for the tests that are left; then run
failed tests again (--rerun-failed) to tell flaky from broken.  Every result
goes to the record and the results directory the moment it is known."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace

from harness import suites
from harness.errors import HarnessError
from harness.parse import leaks
from harness.parse.splats import Splat
from harness.reports import baseline
from harness.reports.results import BAD, KERNEL, ONE_SHOT, RunRecord, TestRecord, clean, outside_phase
from harness.reports.resultsdir import ResultsDir
from harness.run import attribute, listings, runner
from harness.run.listings import TestLists
from harness.targets.lifecycle import Lifecycle, State
from harness.ui import Ui

MAX_REBOOTS = 3  # --continue-after-crash: at most this many reboots per run
MAX_RECORDED_SPLATS = 100  # kernel reports listed in results.json
# kmemleak reports an object only once it is this old (its MSECS_MIN_AGE,
# 5 s, and a second of margin for the guest's clock under TCG)
LEAK_MIN_AGE = 6.0
LEAK_SCAN_TIMEOUT = 300.0  # two kmemleak scans of the guest's memory, on a debug kernel under TCG
LOCKDEP_ON = re.compile(r"Lock dependency validator: Copyright")  # lockdep's banner at boot
TAINT_OFF = re.compile(r"Disabling lock debugging due to kernel taint")


@dataclass(frozen=True)
class SessionOptions:
    tests: str | None = None  # --tests GLOB
    per_test_timeout: float | None = None  # None: the suite's, times the kernel's slowdown
    continue_after_crash: bool = False
    rerun_failed: int = 0
    repeat: int = 1  # run the selection this many times in the same boot (repro --repeat)
    until_fail: bool = False  # ... stopping after the first attempt in which a test did not pass
    slowdown: float = 1.0  # how much slower this kernel runs the tests than the default one (debug kernels)
    leak_scan: bool = False  # the kernel has kmemleak: scan after the suite and give each leak to its test
    parallel: int = 1  # tests at a time (--parallel)


def limits(suite: suites.Suite, opts: SessionOptions) -> tuple[float, float]:
    """The per-test limit and the hang window of a run: the suite's (for
    the default kernel under TCG), grown by the kernel's measured slowdown;
    the window by its square root (a blocked task waits for whoever holds
    what it needs, slowed down less than the whole test), and never more
    than half the limit.  --per-test-timeout sets the limit as it is."""
    limit = opts.per_test_timeout or suite.per_test_timeout * opts.slowdown
    return limit, min(suite.stall_s * opts.slowdown ** 0.5, limit / 2)


def lockdep_stop(r: runner.Runner) -> tuple[str, str, int] | None:
    """(test, why, log position) where lockdep stopped checking during the
    pass ``r``: at its own first report, or at a report that tainted the
    kernel (KASAN, BUG, Oops: "Disabling lock debugging due to kernel
    taint"), whichever came first.  The taint only counts on a kernel that
    has lockdep (its banner is in the log)."""
    stops = [(s.start, name, s.title) for name, s in r.splats if s.kind == "lockdep"][:1]
    target = r.target
    taint = target.kernel_log_find(TAINT_OFF, 0)
    if taint is not None and target.kernel_log_find(LOCKDEP_ON, 0) is not None:
        before = [(s.start, name, s.title) for name, s in r.splats if s.start <= taint]
        if before:
            _, name, title = max(before)
            stops.append((taint, name, f"{title} (it tainted the kernel)"))
    if not stops:
        return None
    pos, name, why = min(stops)
    return name, why, pos


def kasan_stop(r: runner.Runner) -> tuple[str, str, int] | None:
    """(test, why, log position) of KASAN's first report in the pass ``r``:
    KASAN reports only the first bug of a boot (without kasan_multi_shot,
    which would flood a console with one report per faulting access), so
    the tests after it run with KASAN's reports off (KFENCE still samples)."""
    first = next(((s.start, name, s.title) for name, s in r.splats if s.kind == "kasan"), None)
    if first is None:
        return None
    pos, name, why = first
    return name, why, pos


# where each one-shot detector (reports.results.ONE_SHOT) stopped in a pass
STOPS = {"lockdep_off": lockdep_stop, "kasan_off": kasan_stop}


class TestSession:
    __test__ = False  # not a pytest class

    def __init__(self, lifecycle: Lifecycle, suite: suites.Suite, opts: SessionOptions, record: RunRecord,
                 sink: ResultsDir, ui: Ui, lists: TestLists | None = None):
        self.lifecycle = lifecycle
        self.lists = lists  # the binaries' test lists, known from earlier runs
        self.suite = suite
        self.opts = opts
        self.record = record
        self.sink = sink
        self.ui = ui
        self.splats: list[tuple[str, Splat]] = []  # (test, or kernel.<phase> outside any test; report)
        self._total = 0
        self._log_pos = 0  # where the last pass stopped in the target's kernel log
        self._ran: dict[int, dict[str, int]] = {}  # boot -> test -> RUN marker position in that boot's log
        # STOPS key -> (boot, test, why, log position): where that detector stopped reporting
        self._stopped: dict[str, tuple[int, str, str, int]] = {}
        self._stall: float | None = None  # the hang window (limits)
        self._comms: dict[str, str] = {}  # the name (comm) each test's processes had -> the test
        self._next_comm = 1
        self._ended = time.monotonic()  # when the last pass ended

    def run(self) -> None:
        target = self.lifecycle.target
        suite = self.suite
        available = {r.binary: self.lists.get(target, r.binary) if self.lists else listings.list_tests(target, r.binary)
                     for r in suite.runs}
        selection = suites.select(suite, available, self.opts.tests)
        for miss in selection.unmatched:
            self.ui.warn(f"suite {suite.name}: no test matches {miss}")
        total = selection.count
        self.ui.info(f"running {total} tests of suite {suite.name}")
        limit, self._stall = limits(suite, self.opts)
        self.record.kernel["limits"] = {"per_test_s": limit, "stall_s": round(self._stall, 1)}
        self._total = total
        todo = selection
        reboots = 0
        while True:
            r = runner.Runner(target, limit, self._add, on_tap=self.sink.save_tap,
                              defer_unrun=self.opts.continue_after_crash and reboots < MAX_REBOOTS,
                              stall_s=self._stall, first_comm=self._next_comm, parallel=self.opts.parallel)
            try:
                r.run(todo)
            finally:
                self._note_pass(r)
            for problem in r.tap_errors:
                self.record.errors.append(f"inconsistent TAP from the guest: {problem}")
            if not r.unrun:
                break
            # --continue-after-crash: boot again and run what is left
            reboots += 1
            self.ui.warn(f"{r.dead}: rebooting ({reboots} of {MAX_REBOOTS}) for {len(r.unrun)} test(s) left")
            todo = suites.Selection({b: tuple(n for bb, n in r.unrun if bb == b)
                                     for b in dict.fromkeys(b for b, _ in r.unrun)}, ())
            self.lifecycle.crashed(r.dead)
            try:
                target = self.lifecycle.reboot()
            except HarnessError as e:
                self.record.errors.append(f"reboot after a crash failed: {e.message}")
                for b, n in r.unrun:
                    self._add(TestRecord(n, "notrun", reason=f"not run: {r.dead}; the reboot failed", binary=b))
                r.dead = r.dead or "reboot failed"
                break
        self._log_pos = r.log_pos
        if r.dead:
            if self.lifecycle.state is State.VERIFIED:
                self.lifecycle.crashed(r.dead)
            self.record.errors.append(f"the target died during the run: {r.dead}")
        elif self.opts.repeat > 1:
            self.repeat(selection, limit)
        elif self.opts.rerun_failed:
            self.rerun_failed(selection, limit)
        if self.opts.leak_scan and not r.dead:
            self.scan_leaks()
        for name, s in self.splats:
            self.ui.warn(f"kernel {s.kind} {outside_phase(name) or 'during ' + name}: {s.title}")
        for h in self.record.kernel.get("hung", []):
            if h["unkillable"]:
                self.ui.warn(f"{h['test']} left {len(h['unkillable'])} task(s) asleep in the kernel that SIGKILL "
                             "could not end; the tests after it ran in the same boot")
        for key, (said, without) in ONE_SHOT.items():
            off = self.record.kernel.get(key)
            if off and off["unchecked"]:
                self.ui.warn(f"{said}: after the report in {off['test']}, {len(off['unchecked'])} later test(s) "
                             f"ran without {without}")

    def _add(self, rec: TestRecord) -> None:
        self.record.tests.append(rec)
        self.sink.add(rec)
        self.ui.test_result(rec, len(self.record.tests), max(self._total, len(self.record.tests)))

    def _note_pass(self, r: runner.Runner) -> None:
        """What a pass leaves for the record: its kernel reports, and where a
        one-shot detector (lockdep, KASAN) stopped reporting for the rest of
        that boot, with the tests that ran after it unchecked."""
        boot = self.lifecycle.boots
        self._ran.setdefault(boot, {}).update(r.positions)
        self._comms.update(r.comms)
        self._next_comm = r.next_comm
        self._ended = time.monotonic()
        for key, stop_of in STOPS.items():
            if key not in self._stopped:  # the run's first; a reboot turns the detector on again
                stop = stop_of(r)
                if stop is not None:
                    self._stopped[key] = (boot, *stop)
            if key in self._stopped:
                b, name, why, pos = self._stopped[key]
                unchecked = attribute.unchecked_after(pos, self._ran.get(b, {}))
                self.record.kernel[key] = {"test": name, "title": why, "unchecked": unchecked}
        self._note_splats(r.splats)
        for name, where, unkillable in r.hung:
            self.record.kernel.setdefault("hung", []).append(
                {"test": name, "boot": boot, "where": where, "unkillable": unkillable})

    def scan_leaks(self) -> None:
        """kmemleak's scan after the suite: each unreferenced object goes to
        the test whose process allocated it (by the task name run-tests gave
        that test), failing it like any kernel report.  Objects other tasks
        allocated (at boot, sshd, kernel threads) are counted, not blamed:
        no test's process asked for them.  Only objects of this boot are
        seen: a reboot (--continue-after-crash) starts kmemleak afresh."""
        target = self.lifecycle.target
        wait = max(0.0, LEAK_MIN_AGE - (time.monotonic() - self._ended))
        self.ui.info(f"scanning for leaks (kmemleak){f', after {wait:.0f} s' if wait >= 1 else ''}")
        res = target.run([target.layout.leakcheck, f"{wait:.1f}"], LEAK_SCAN_TIMEOUT + wait)
        if res.exit_status != 0:
            why = (f"the scan took longer than {LEAK_SCAN_TIMEOUT:.0f} s" if res.timed_out else
                   "the connection was lost" if res.lost else
                   (res.err_text.strip().splitlines() or [f"status {res.exit_status}"])[-1])
            self.record.kernel["leaks"] = {"scanned": False, "why": why}
            self.record.errors.append(f"no leak scan: {why}")
            return
        (self.sink.path / "kmemleak.txt").write_text(res.text)  # as kmemleak listed them, every one
        found = leaks.parse(res.text)
        by_test: dict[str, list[leaks.Leak]] = {}
        for leak in found:
            if leak.comm in self._comms:
                by_test.setdefault(self._comms[leak.comm], []).append(leak)
        self.record.kernel["leaks"] = {"scanned": True, "objects": len(found),
                                       "in_tests": sum(map(len, by_test.values()))}
        records = {t.name: i for i, t in enumerate(self.record.tests)}
        splats = []
        for name, mine in by_test.items():
            reports = leaks.group(mine)
            splats += [(name, s) for s, _ in reports]
            if name not in records:
                continue
            rec = self.record.tests[records[name]]
            first = reports[0][0].title
            more = f" (and {len(reports) - 1} more)" if len(reports) > 1 else ""
            log = clean(rec.log + "\n" + "\n".join(f"--- kernel leak: {s.title} ---\n" + "\n".join(o.text for o in objs)
                                                    for s, objs in reports))
            if rec.status in ("pass", "skip"):
                rec = replace(rec, status="fail", reason=f"kernel leak during the test: {first}{more}", log=log)
            else:
                # it failed anyway: its own reason first
                rec = replace(rec, reason="; ".join(filter(None, (rec.reason, f"kernel leak: {first}{more}"))), log=log)
            self.record.tests[records[name]] = rec
            self.sink.add(rec)
        self._note_splats(splats)
        if by_test:
            self.ui.warn(f"kmemleak: {sum(map(len, by_test.values()))} unreferenced object(s) allocated by "
                         f"{len(by_test)} test(s)")

    def _note_splats(self, found: list) -> None:
        """The run's kernel reports for results.json: the first
        MAX_RECORDED_SPLATS (a kernel can print thousands; console.log has
        them all) and how many more there were."""
        self.splats += found
        self.record.kernel["splats"] = [
            {"test": name, "kind": s.kind, "title": s.title, "signature": s.signature, "fatal": s.fatal}
            for name, s in self.splats[:MAX_RECORDED_SPLATS]]
        omitted = len(self.splats) - MAX_RECORDED_SPLATS
        if omitted > 0:
            self.record.kernel["splats_omitted"] = omitted

    def _again(self, selection: suites.Selection, limit: float, into: dict[str, list[TestRecord]]) -> str | None:
        """One more pass over ``selection`` in the same boot, after the last
        one's kernel log: its test records go to ``into`` (by name), a kernel
        report outside any test is recorded as usual.  Returns why the target
        died, or None."""
        rr = runner.Runner(self.lifecycle.target, limit, lambda rec: (
            self._add(rec) if rec.binary == KERNEL else into.setdefault(rec.name, []).append(rec)),
            after_boot=False, since=self._log_pos, stall_s=self._stall, first_comm=self._next_comm,
            parallel=self.opts.parallel)
        try:
            rr.run(selection)
        finally:
            self._note_pass(rr)
            self._log_pos = rr.log_pos
        return rr.dead

    def repeat(self, selection: suites.Selection, limit: float) -> None:
        """Attempts 2..N of the selection in the same boot (``--repeat``); with
        ``until_fail`` they stop after the first attempt in which a test did
        not pass.  Each test keeps one record: its worst attempt, with how
        many attempts failed and every attempt's log."""
        attempts: dict[str, list[TestRecord]] = {t.name: [t] for t in self.record.tests if t.binary != KERNEL}
        try:
            for attempt in range(2, self.opts.repeat + 1):
                if self.opts.until_fail and any(a[-1].status in BAD for a in attempts.values()):
                    break
                self.ui.info(f"attempt {attempt} of {self.opts.repeat}")
                dead = self._again(selection, limit, attempts)
                if dead:
                    self.record.errors.append(f"the target died in attempt {attempt}: {dead}")
                    break
        finally:  # also on Ctrl-C: the attempts made so far count
            for i, t in enumerate(self.record.tests):
                if t.name in attempts and len(attempts[t.name]) > 1:
                    self.record.tests[i] = fold_attempts(attempts[t.name])

    def rerun_failed(self, selection: suites.Selection, limit: float) -> None:
        """Run failed and timed-out tests again, up to --rerun-failed times: one
        that passes on a rerun is recorded as flaky (listed, never silently
        green); a kernel crash is never rerun away."""
        reruns: dict[str, list[TestRecord]] = {}
        for attempt in range(1, self.opts.rerun_failed + 1):
            todo = {t.name for t in self.record.tests if t.status in ("fail", "timeout") and t.binary != KERNEL
                    and not any(r.status == "pass" for r in reruns.get(t.name, []))}
            if not todo:
                break
            self.ui.info(f"rerun {attempt} of {self.opts.rerun_failed}: {len(todo)} test(s)")
            again = suites.Selection({b: tuple(n for n in names if n in todo)
                                      for b, names in selection.tests.items() if todo & set(names)}, ())
            dead = self._again(again, limit, reruns)
            if dead:
                self.record.errors.append(f"the target died while rerunning failed tests: {dead}")
                break
        for i, t in enumerate(self.record.tests):
            if t.name in reruns:
                self.record.tests[i] = baseline.mark_flaky(t, reruns[t.name])
                if baseline.is_flaky(self.record.tests[i]):
                    self.ui.warn(f"flaky: {t.name} ({self.record.tests[i].reason})")


def fold_attempts(attempts: list[TestRecord]) -> TestRecord:
    """One record for a test run several times: the first of its worst
    attempts that failed, timed out or crashed (the one to look at), else the
    first attempt (a pass, or a skip); its reason counts the bad attempts,
    its log holds them all."""
    bad = [i for i, a in enumerate(attempts) if a.status in BAD]
    worst = max((baseline.SEVERITY[attempts[i].status] for i in bad), default=None)
    first_worst = next((i for i in bad if baseline.SEVERITY[attempts[i].status] == worst), None)
    pick = attempts[first_worst] if first_worst is not None else attempts[0]
    statuses = [a.status for a in attempts]
    note = (f"{len(bad)} of {len(attempts)} attempts did not pass, first at attempt {bad[0] + 1} "
            f"({', '.join(statuses)})" if bad else
            f"{sum(a.status == 'pass' for a in attempts)} of {len(attempts)} attempts passed"
            + (f" ({', '.join(statuses)})" if any(a.status != "pass" for a in attempts) else ""))
    log = "\n".join(f"# --- attempt {i}: {a.status} ---\n{a.log}" for i, a in enumerate(attempts, 1))
    return replace(pick, reason=f"{note}; {pick.reason}" if pick.reason else note, log=clean(log),
                   duration_s=sum(a.duration_s for a in attempts))
