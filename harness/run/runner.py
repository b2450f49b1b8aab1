"""One pass of selected selftests over a target: list, run, attribute.

Each selftest binary runs once with ``-r`` for every selected test; its TAP
is parsed as it streams in.  The harness enforces its own per-test wall-clock
limit, and (``stall_s``) watches for a test whose task sleeps in the kernel
without running for that long: such a test is ``timeout``, with the stacks
of its blocked tasks (``sysrq w``, asked for before it is killed) in its log
and where it hangs as its reason; it is killed with its whole process tree
and the binary is started again for the tests after it.  If the kernel dies,
the running test is ``crash`` and the rest ``notrun``.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from harness.parse.splats import Splat
from harness.run.attribute import phase, report_comm
from harness.parse.tap import RE_KSFT_TIMEOUT, TapParser
from harness.reports.results import KERNEL, PHASES, TestRecord, clean
from harness.suites import Selection
from harness.targets.base import Target

MARKER_WAIT = 3.0  # seconds to wait for a test's END marker to reach the kernel log
DUMP_WAIT = 10.0  # ... and for the end of a blocked-task dump (a few dozen lines per task)
KSFT_ALARM_MARGIN = 10  # kselftest's own alarm goes off this long after the harness's limit
STOP_TIMEOUT = 60.0  # hangcheck stop (dump, kill): a target that cannot do it in this long is wedged
_PID_IN_TITLE = re.compile(r":(\d+) blocked")


@dataclass
class Hang:
    """What ``hangcheck stop`` found of a test that overran or stalled: the
    tasks of its tree asleep in the kernel (tid -> comm), the token that
    ends their stack dump in the kernel log, and those SIGKILL did not end."""

    token: str
    blocked: dict[str, str] = field(default_factory=dict)
    unkillable: dict[str, str] = field(default_factory=dict)


def _since(started: dict[str, float], name: str) -> float:
    """Seconds since ``name`` started (0 for a test never seen starting:
    ``now - started.get(name, now)``, with one now)."""
    now = time.monotonic()
    return now - started.get(name, now)


def _marker(kind: str, name: str) -> re.Pattern:
    return re.compile(rf"iommufd-harness: {kind} {re.escape(name)}(?=[ \r\n])")


class Runner:
    def __init__(self, target: Target, per_test_timeout: float, on_result: Callable[[TestRecord], None],
                 on_start: Callable[[str], None] | None = None, on_tap: Callable[[str, str, str], None] | None = None,
                 defer_unrun: bool = False, after_boot: bool = True, since: int = 0, stall_s: float | None = None,
                 first_comm: int = 1, parallel: int = 1):
        self.target = target
        self.per_test_timeout = per_test_timeout
        self.stall_s = stall_s  # a task of the test asleep in the kernel this long without running: a hang
        self.on_result = on_result
        self.on_start = on_start or (lambda name: None)
        self.on_tap = on_tap or (lambda binary, tap, stderr: None)
        self.dead: str | None = None  # why the target went away
        # with defer_unrun, the tests a dead target could not run are kept
        # here (binary, name) for a rebooted target instead of becoming notrun
        self.defer_unrun = defer_unrun
        self.unrun: list[tuple[str, str]] = []
        # kernel log searched up to here for test markers; a later pass on the
        # same target starts where the previous one stopped
        self.log_pos = since
        self.tap_errors: list[str] = []  # TAP that contradicts itself (count, plan, Totals)
        self.splats: list[tuple[str, Splat]] = []  # (test, or a PHASES record outside any test; report)
        self.after_boot = after_boot  # the first pass on a freshly booted target: its boot log is ours
        self.positions: dict[str, int] = {}  # test -> kernel log position of its RUN marker
        self.first_test: int | None = None  # kernel log position of the first RUN marker
        self.last_test_end: int | None = None  # ... and of the last test's END marker
        # tests that hung: (test, where, tids of tasks SIGKILL could not end)
        self.hung: list[tuple[str, str, list[str]]] = []
        # each test's processes carry a name of their own (run-tests' -n):
        # comm -> test, for the reports that name the task, not a marker
        self.comms: dict[str, str] = {}
        self.next_comm = first_comm
        # --parallel: this many run-tests processes at a time, each over its
        # own connection; their tests' kernel reports are attributed when all
        # of them are done (by the task the report names, else by the one
        # test whose markers enclose it), and only then recorded
        self.parallel = max(1, parallel)
        self._lock = threading.Lock()
        self._pass_start = since
        self._later: list[tuple[TestRecord, int | None, int | None]] = []
        self._leftover: list[Splat] = []  # reports of a parallel pass that no single test explains

    def run(self, selection: Selection) -> list[TestRecord]:
        records: list[TestRecord] = []
        for binary, names in selection.tests.items():
            if self.parallel > 1 and len(names) > 1:
                records += self.run_parallel(binary, list(names))
            else:
                records += self.run_binary(binary, list(names))
        self.finish()
        return records

    def run_parallel(self, binary: str, names: list[str]) -> list[TestRecord]:
        """``names`` in ``self.parallel`` lanes at once (round robin), each
        lane a run-tests process of its own; the records, with their kernel
        reports, in the order of ``names``."""
        lanes = [names[i::self.parallel] for i in range(self.parallel) if names[i::self.parallel]]
        outs: list[list[TestRecord]] = [[] for _ in lanes]
        errors: list[BaseException] = []

        def lane(i: int) -> None:
            try:
                outs[i] = self.run_binary(binary, lanes[i])
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                errors.append(e)
                self.dead = self.dead or f"a test lane failed: {e}"

        threads = [threading.Thread(target=lane, args=(i,), name=f"lane-{i}", daemon=True)
                   for i in range(len(lanes))]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        finally:  # also on Ctrl-C: what the lanes recorded is kept
            self._attribute_later(names)
        if errors:
            raise errors[0]
        order = {n: i for i, n in enumerate(names)}
        return sorted((r for out in outs for r in out), key=lambda r: order.get(r.name, len(order)))

    def _attribute_later(self, names: list[str]) -> None:
        """The kernel reports of a parallel pass, each given to the test
        whose task it names (the comm run-tests gave that test), or else to
        the one test whose RUN/END markers enclose it; then the pass's
        records are recorded, in the order their tests were selected."""
        order = {n: i for i, n in enumerate(names)}
        later = sorted(self._later, key=lambda x: order.get(x[0].name, len(order)))
        self._later = []
        if not later:
            return
        for rec, start, end in later:  # the tests whose stretches of the log overlap this one's
            rec.alongside = [r.name for r, s, e in later if r is not rec and start is not None and s is not None
                             and s < (end if end is not None else float("inf"))
                             and start < (e if e is not None else float("inf"))]
        mine: dict[str, list[Splat]] = {}
        for s in self.target.kernel_splats(self._pass_start, None):
            name = self.comms.get(report_comm(s.text) or "")
            if name is None:
                around = [r.name for r, start, end in later
                          if start is not None and start <= s.start and (end is None or s.start < end)]
                name = around[0] if len(around) == 1 else None
            if name is None:
                self._leftover.append(s)
            else:
                mine.setdefault(name, []).append(s)
        for rec, start, end in later:
            self._attach(rec, mine.get(rec.name, []))
            if start is not None:
                self.first_test = start if self.first_test is None else min(self.first_test, start)
            if end is not None:
                self.last_test_end = end if self.last_test_end is None else max(self.last_test_end, end)
                self.log_pos = max(self.log_pos, end)
            self.on_result(rec)

    def _emit(self, rec: TestRecord, out: list[TestRecord], hang: Hang | None = None) -> None:
        """Record a finished test, with the kernel reports logged while it ran:
        a test that passed in userspace but made the kernel WARN has failed.
        The test's part of the kernel log lies between the RUN and END markers
        run-tests wrote to /dev/kmsg around it.  A test that hung gets the
        stacks of its blocked tasks from the dump ``hang`` asked for."""
        start = self.target.kernel_log_find(_marker("RUN", rec.name),
                                            self._pass_start if self.parallel > 1 else self.log_pos)
        if start is not None and hang is not None:
            self._note_hang(rec, hang, start)
        end = None
        if start is not None:
            # only a test that ended normally has an END marker on its way
            deadline = time.monotonic() + (MARKER_WAIT if rec.status in ("pass", "fail", "skip") else 0)
            while end is None:
                end = self.target.kernel_log_find(_marker("END", rec.name), start)
                if end is not None or time.monotonic() >= deadline:
                    break
                time.sleep(0.01)  # the last test's marker is what the verdict waits for
            self.positions[rec.name] = start
        if self.parallel > 1:  # the other lanes' tests ran in the same stretch of the log
            with self._lock:
                self._later.append((rec, start, end))
            out.append(rec)
            return
        if start is not None:
            found = self.target.kernel_splats(start, end)
            self.log_pos = end if end is not None else start
            self.first_test = start if self.first_test is None else self.first_test
            self.last_test_end = end
            self._attach(rec, found)
        out.append(rec)
        self.on_result(rec)

    def _attach(self, rec: TestRecord, found: list[Splat]) -> None:
        """A test's kernel reports: in its log, and a test that passed in
        userspace while the kernel complained has failed."""
        if found:
            self.splats += [(rec.name, s) for s in found]
            rec.log = clean(rec.log + "\n" + "\n".join(
                f"--- kernel {s.kind}: {s.title} ---\n{s.text}" for s in found))
            if rec.status in ("pass", "skip"):
                rec.status = "fail"
                rec.reason = f"kernel {found[0].kind} during the test: {found[0].title}"

    def _note_hang(self, rec: TestRecord, hang: Hang, start: int) -> None:
        """The stacks of the test's blocked tasks, from the dump that ends at
        hang.token's marker: in its log and its kernel reports; where the
        first one waits leads its reason."""
        dump = None
        deadline = time.monotonic() + DUMP_WAIT
        while dump is None and time.monotonic() < deadline:
            dump = self.target.kernel_log_find(_marker("DUMP", hang.token), start)
            if dump is None:
                time.sleep(0.05)
        tasks = self.target.kernel_blocked_tasks(start, dump) if dump is not None else []
        mine = [t for t in tasks if (m := _PID_IN_TITLE.search(t.title)) and m.group(1) in hang.blocked]
        where = mine[0].signature if mine else ""
        if mine:
            self.splats += [(rec.name, t) for t in mine]
            rec.log = clean(rec.log + "\n" + "\n".join(f"--- kernel {t.kind}: {t.title} ---\n{t.text}" for t in mine))
            rec.reason = f"{where}: {rec.reason}"
        elif hang.blocked:
            rec.reason += f" (tasks asleep in the kernel: {', '.join(f'{c}:{t}' for t, c in hang.blocked.items())}; " \
                          "their stacks did not reach the kernel log)"
        if hang.unkillable:
            rec.reason += (f"; SIGKILL did not end {', '.join(f'{c}:{t}' for t, c in hang.unkillable.items())} "
                           "(asleep in the kernel): the tests after it ran in the same boot")
        self.hung.append((rec.name, where, sorted(hang.unkillable)))

    def finish(self) -> list[tuple[str, Splat]]:
        """Every kernel report of the pass with what it is attributed to: a
        test, or (logged outside any test) the phase's own failed record,
        ``kernel.boot``, ``kernel.between_tests`` or ``kernel.after_tests``."""
        left: dict[str, list[Splat]] = {}
        leftover, self._leftover = self._leftover, []
        for s in leftover + self.target.kernel_splats(0, None, final=True):
            where = phase(s.start, self.first_test, self.last_test_end, self.after_boot)
            left.setdefault(where, []).append(s)
        for where, found in left.items():
            name = PHASES[where]
            self.splats += [(name, s) for s in found]
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            self.on_result(TestRecord(
                name, "fail", 0.0, clean("\n".join(f"--- kernel {s.kind}: {s.title} ---\n{s.text}" for s in found)),
                f"kernel {found[0].kind} {where}: {found[0].title}{more}", KERNEL))
        return self.splats

    def run_binary(self, binary: str, names: list[str]) -> list[TestRecord]:
        out: list[TestRecord] = []
        remaining = list(names)
        while remaining:
            if self.dead:
                if self.defer_unrun:
                    self.unrun += [(binary, n) for n in remaining]
                else:
                    for n in remaining:
                        self._emit(TestRecord(n, "notrun", reason=f"not run: {self.dead}", binary=binary), out)
                break
            remaining = self._run_batch(binary, remaining, out)
        return out

    def _run_batch(self, binary: str, names: list[str], out: list[TestRecord]) -> list[str]:
        """Run ``names`` with one run-tests process; returns the names still to run.

        Each test runs in a process of its own.  A test is recorded once both
        its TAP result (stdout) and run-tests' "harness-exit" line (stderr,
        after the test's own stderr) have arrived; a test whose process ends
        without a result died.  The two streams may arrive in any order."""
        parser = TapParser()
        started: dict[str, float] = {}
        state: dict = {"pid": None, "overrun": None, "stall": None}
        wanted = set(names)
        reported: set[str] = set()
        exits: dict[str, int] = {}
        tap_lines: list[str] = []
        err_lines: list[str] = []
        test_err: list[str] = []  # stderr of the test that is running
        dying: set[str] = set()  # died (stdout moved on), waiting for the exit status on stderr

        def record(name: str, died: bool = False) -> None:
            case = parser.cases.get(name)
            dur = _since(started, name)
            reported.add(name)
            if died or case is None or case.status is None:
                rc = exits.get(name)
                why = f"{binary} died (status {rc}) while this test ran" if rc is not None else \
                    f"{binary} ended without reporting this test"
                self._emit(TestRecord(name, "fail", dur, "\n".join(case.log) if case else "", why, binary), out)
            elif case.status == "fail" and any(RE_KSFT_TIMEOUT.match(line) for line in case.log):
                # kselftest's own alarm ended it: it did not finish either
                self._emit(TestRecord(name, "timeout", dur, "\n".join(case.log),
                                      "killed by kselftest's own per-test alarm", binary), out)
            else:
                self._emit(TestRecord(name, case.status, dur, "\n".join(case.log), case.reason, binary), out)

        def ready(name: str) -> None:
            case = parser.cases.get(name)
            if name in wanted and name not in reported and name in exits and case is not None \
                    and case.status is not None:
                record(name)

        def on_line(line: str) -> None:
            tap_lines.append(line)
            for ev in parser.feed(line):
                if ev.kind == "start":
                    # stdout has moved on: a test started before without a result died
                    for name in list(started):
                        case = parser.cases.get(name)
                        if name != ev.name and name not in reported and (case is None or case.status is None):
                            if name in exits:
                                record(name, died=True)
                            else:  # its exit status is still on its way (stderr)
                                dying.add(name)
                    started[ev.name] = time.monotonic()
                    self.on_start(ev.name)
                elif ev.kind == "result":
                    ready(ev.name)

        def on_err(line: str) -> None:
            if line.startswith("harness-pid ") and state["pid"] is None:
                state["pid"] = line.split()[1]
                return
            m = re.fullmatch(r"harness-comm (\S+) (\S+)", line)
            if m:
                self.comms[m.group(2)] = m.group(1)
                return
            m = re.fullmatch(r"harness-stall (\d+) (\S+)", line)
            if m:  # from run-tests' watcher: a task of the running test does not run at all
                if state["stall"] is None and parser.current:
                    state["stall"] = (parser.current, m.group(1), m.group(2))
                return
            m = re.fullmatch(r"harness-exit (\S+) (-?\d+)", line)
            if m:
                name = m.group(1)
                exits[name] = int(m.group(2))
                case = parser.cases.get(name) or parser._case(name)
                case.log[1:1] = test_err  # the test's stderr goes after its RUN line
                test_err.clear()
                if name in dying and name not in reported:
                    record(name, died=True)
                elif case.status is not None or name in reported:
                    ready(name)
                return
            err_lines.append(line)
            test_err.append(line)

        def overrun() -> bool:
            cur = parser.current
            if state["stall"] is not None:
                state["overrun"] = state["stall"][0]
                return True
            if cur and _since(started, cur) > self.per_test_timeout:
                state["overrun"] = cur
                return True
            return False

        layout = self.target.layout
        argv = [layout.run_tests, "-l", str(int(self.per_test_timeout) + KSFT_ALARM_MARGIN)]
        if self.stall_s:
            argv += ["-s", str(max(1, round(self.stall_s)))]
        with self._lock:
            first, self.next_comm = self.next_comm, self.next_comm + len(names)
        argv += ["-n", str(first), f"{layout.selftest_dir}/{binary}", *names]
        budget = self.per_test_timeout * len(names) + 60
        res = self._exec(argv, budget, on_line, on_err, overrun)
        self.on_tap(binary, "\n".join(tap_lines) + "\n", "\n".join(err_lines) + "\n")
        for name in list(started):  # results whose exit line never came
            case = parser.cases.get(name)
            if name in dying and name not in reported:
                record(name, died=True)
            elif name not in reported and case is not None and case.status is not None:
                case.log[1:1] = test_err if name == parser.last_started else []
                record(name)
        left = [n for n in names if n not in reported]
        if res.exit_status is not None and not res.timed_out and not left:
            # a batch that ran to its end: its plans, results and Totals lines must agree
            for problem in parser.consistency_errors():
                self.tap_errors.append(f"{binary}: {problem}")
        cur = parser.current if parser.current in left else None

        failure = self.target.failure()
        if failure:
            self.dead = failure
            cur = cur or (left[0] if left else None)
            if cur is not None:
                case = parser.cases.get(cur)
                log = ("\n".join(case.log) + "\n" if case else "") + "--- console ---\n" + self.target.console_excerpt(80)
                dur = _since(started, cur)
                self._emit(TestRecord(cur, "crash", dur, log, failure, binary), out)
                left.remove(cur)
            return left
        if res.timed_out or res.lost:
            cur = state["overrun"] or cur
            hang = None
            if res.lost and not self.target.reconnect():
                self.dead = "the target stopped answering over SSH"
            elif state["pid"] and state["overrun"]:
                # the stacks of what it waits for, then the test and run-tests go
                hang = self._stop_tree(state["pid"])
            elif state["pid"]:
                # the remote process outlives a closed channel: end it and its children
                self._exec([layout.killtree, state["pid"]], 30, None, None, None)
            if cur in left:
                case = parser.cases.get(cur)
                dur = _since(started, cur)
                if state["stall"]:
                    _, tid, comm = state["stall"]
                    reason = f"no progress for {self.stall_s:.0f} s: {comm}:{tid} asleep in the kernel, not running"
                    status = "timeout"
                elif state["overrun"]:
                    reason = f"killed after the harness's {self.per_test_timeout:.0f} s per-test limit"
                    status = "timeout"
                else:
                    reason = "the SSH connection was lost while the test ran"
                    status = "crash"
                self._emit(TestRecord(cur, status, dur, "\n".join(case.log) if case else "", reason, binary), out,
                           hang=hang)
                left.remove(cur)
            if not state["overrun"] and not res.lost:
                # the whole batch overran its budget without a test to blame
                self.dead = self.dead or f"{binary} exceeded its time budget"
            return left
        if cur is not None:
            record(cur, died=True)
            left.remove(cur)
            return left
        tail = "\n".join(tap_lines[-20:] + res.err_text.splitlines()[-10:])
        for n in left:
            self._emit(TestRecord(n, "notrun", reason=f"run-tests exited with status {res.exit_status} "
                                                      "before running this test", log=tail, binary=binary), out)
        return []

    def _stop_tree(self, pid: str) -> Hang | None:
        """``hangcheck stop``: the stacks of every blocked task into the
        kernel log, the test's tree killed, and what of it SIGKILL could not
        end.  A target that cannot do even that is wedged."""
        hang = Hang(secrets.token_hex(4))
        res = self._exec([self.target.layout.hangcheck, "stop", pid, hang.token], STOP_TIMEOUT, None, None, None)
        if res.exit_status != 0:
            if res.timed_out or res.lost:
                self.dead = f"the kernel is wedged: it did not end a hung test within {STOP_TIMEOUT:.0f} s"
            else:  # no hangcheck on the target: kill as before
                self._exec([self.target.layout.killtree, pid], 30, None, None, None)
            return None
        for line in res.text.splitlines():
            kind, _, rest = line.partition(" ")
            tid, _, comm = rest.partition(" ")
            if kind in ("blocked", "unkillable") and tid.isdigit():
                getattr(hang, kind)[tid] = comm
        return hang

    def _exec(self, argv, timeout, on_line, on_err, check_stop):
        return self.target.run(argv, timeout, on_stdout_line=on_line, on_stderr_line=on_err, check_stop=check_stop)
