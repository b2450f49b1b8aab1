"""A streaming parser for the TAP that kselftest_harness.h prints.

    TAP version 13
    1..2
    # Starting 2 tests from 1 test cases.
    #  RUN           iommufd_ioas.no_domain.access_rw ...
    #            OK  iommufd_ioas.no_domain.access_rw
    ok 1 iommufd_ioas.no_domain.access_rw
    #  RUN           iommufd_ioas.mock_domain.access_pin ...
    # iommufd.c:1234:access_pin:Expected 0 (0) == ...
    #          FAIL  iommufd_ioas.mock_domain.access_pin
    not ok 2 iommufd_ioas.mock_domain.access_pin
    # FAILED: 1 / 2 tests passed.
    # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0

Lines are fed one at a time as they arrive; the parser knows at any moment
which test is running, so a caller can enforce per-test time limits and
attribute a crash to the test that was running.  A stream may hold several
TAP documents one after the other (one per selftest process): their plans
and Totals lines add up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

RE_VERSION = re.compile(r"^TAP version (\d+)")
RE_PLAN = re.compile(r"^1\.\.(\d+)")
RE_RESULT = re.compile(r"^(not )?ok (\d+)(?: -)? (\S+)(?:\s+#\s*(SKIP|XFAIL|XPASS|TODO)\b\s*(.*))?\s*$", re.I)
RE_RUN = re.compile(r"^#\s+RUN\s+(\S+) \.\.\.")
RE_END = re.compile(r"^#\s+(OK|FAIL)\s+(\S+)\s*$")
# kselftest_harness's own per-test alarm ended the test (it says so on stderr)
RE_KSFT_TIMEOUT = re.compile(r"^# \S+: Test terminated by timeout\s*$")
RE_TOTALS = re.compile(r"^# Totals: pass:(\d+) fail:(\d+) xfail:(\d+) xpass:(\d+) skip:(\d+) error:(\d+)")

MAX_LOG_LINES = 2000


@dataclass
class TapCase:
    name: str
    number: int | None = None
    status: str | None = None  # pass | fail | skip ; None while running
    reason: str = ""
    log: list[str] = field(default_factory=list)


@dataclass
class TapEvent:
    kind: str  # "start" | "result" | "plan" | "totals"
    name: str = ""
    case: TapCase | None = None


class TapParser:
    def __init__(self) -> None:
        self.version: int | None = None
        self.plans: list[int] = []  # one per TAP document
        self.totals: dict[str, int] | None = None  # summed over the documents
        self.cases: dict[str, TapCase] = {}
        self.documents = 0
        self.current: str | None = None
        self.last_started: str | None = None
        self.preamble: list[str] = []
        self.lines: list[str] = []

    def _case(self, name: str) -> TapCase:
        case = self.cases.get(name)
        if case is None:
            case = self.cases[name] = TapCase(name)
        return case

    def feed(self, line: str) -> list[TapEvent]:
        line = line.rstrip("\r\n")
        self.lines.append(line)
        m = RE_RUN.match(line)
        if m:
            self.current = self.last_started = m.group(1)
            case = self._case(self.current)
            case.log.append(line)
            return [TapEvent("start", self.current, case)]
        m = RE_RESULT.match(line)
        if m:
            name = m.group(3)
            case = self._case(name)
            case.number = int(m.group(2))
            directive = (m.group(4) or "").upper()
            if directive == "SKIP":
                case.status = "skip"
            elif directive == "XFAIL":
                case.status = "pass"
            elif directive == "XPASS":
                case.status = "fail"
            else:
                case.status = "fail" if m.group(1) else "pass"
            case.reason = (f"{directive.lower()}: " if directive and directive != "SKIP" else "") + (m.group(5) or "").strip()
            case.log.append(line)
            if self.current == name:
                self.current = None
            return [TapEvent("result", name, case)]
        m = RE_PLAN.match(line)
        if m and len(self.plans) < max(self.documents, 1):
            self.plans.append(int(m.group(1)))
            return [TapEvent("plan")]
        m = RE_TOTALS.match(line)
        if m:
            keys = ("pass", "fail", "xfail", "xpass", "skip", "error")
            totals = self.totals or dict.fromkeys(keys, 0)
            self.totals = {k: totals[k] + int(v) for k, v in zip(keys, m.groups())}
            return [TapEvent("totals")]
        m = RE_VERSION.match(line)
        if m:
            self.version = int(m.group(1))
            self.documents += 1
            return []
        target = self.cases.get(self.current) if self.current else None
        if target is not None:
            if len(target.log) < MAX_LOG_LINES:
                target.log.append(line)
        else:
            self.preamble.append(line)
        return []

    def note(self, line: str) -> None:
        """A line from another stream (the selftests print their assertion
        messages on stderr): attach it to the running test, or the one that
        ran last (its result may have overtaken it on the other stream)."""
        line = line.rstrip("\r\n")
        name = self.current or self.last_started
        target = self.cases.get(name) if name else None
        if target is not None:
            if len(target.log) < MAX_LOG_LINES:
                target.log.append(line)
        else:
            self.preamble.append(line)

    def feed_text(self, text: str) -> list[TapEvent]:
        events = []
        for line in text.splitlines():
            events += self.feed(line)
        return events

    @property
    def plan(self) -> int | None:
        """Tests announced by the plan lines (None before any)."""
        return sum(self.plans) if self.plans else None

    def finished(self) -> list[TapCase]:
        return [c for c in self.cases.values() if c.status is not None]

    def consistency_errors(self) -> list[str]:
        """Disagreements between the results, the plan and the totals line."""
        done = self.finished()
        errors = []
        if self.plans and len(done) != self.plan:
            errors.append(f"the plan announced {self.plan} tests but {len(done)} reported a result")
        if self.totals is not None:
            counted = {
                "pass": sum(c.status == "pass" and not c.reason.startswith("xfail") for c in done),
                "fail": sum(c.status == "fail" and not c.reason.startswith("xpass") for c in done),
                "skip": sum(c.status == "skip" for c in done),
            }
            for key, n in counted.items():
                if self.totals[key] != n:
                    errors.append(f"the Totals line says {key}:{self.totals[key]} but {n} were parsed")
        return errors


RE_RUNNER_TEST = re.compile(r"^# selftests: (\S+): (\S+)$")
RE_RUNNER_RESULT = re.compile(r"^(not )?ok \d+ selftests: (\S+): (\S+)")


def parse(text: str) -> TapParser:
    p = TapParser()
    p.feed_text(text)
    return p


def parse_runner(text: str) -> tuple[TapParser, dict[str, str]]:
    """TAP as kselftest's run_kselftest.sh nests it: each binary's own TAP
    indented by one "# " under "# selftests: COLLECTION: BINARY", and the
    runner's verdict per binary ("ok 1 selftests: iommu: iommufd").

    Returns the parser fed with the binaries' own TAP (one document each,
    so their plans and Totals add up) and {binary: "pass"|"fail"|"skip"} from
    the runner's lines, which also reveal a binary that died or timed out
    without finishing its own TAP."""
    inner = TapParser()
    outer: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        line = line.rstrip("\r")
        if RE_RUNNER_TEST.match(line):
            inside = True
            continue
        m = RE_RUNNER_RESULT.match(line)
        if m:
            inside = False
            skip = re.search(r"#\s*SKIP", line, re.I)
            outer[m.group(3)] = "skip" if skip else ("fail" if m.group(1) else "pass")
            continue
        if inside and line.startswith("# "):
            inner.feed(line[2:])
        elif inside and line == "#":
            inner.feed("")
    return inner, outer
