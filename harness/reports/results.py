"""The records of a run: one ``TestRecord`` per test, the ``RunRecord`` with
its provenance, and the verdict (schema of results.json in docs/results.md)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from harness.errors import EXIT_ERROR, EXIT_FAIL, EXIT_PASS

STATUSES = ("pass", "fail", "skip", "timeout", "crash", "notrun")
# Kernel reports logged outside any test are failed records of their own,
# one per phase of the run, with this binary.
KERNEL = "kernel"
PHASES = {"boot": "kernel.boot", "between tests": "kernel.between_tests", "after tests": "kernel.after_tests"}
# detectors that stop reporting after their first report in a boot, by their
# results.json key (kernel.<key>): what the run says, what later tests ran without
ONE_SHOT = {"lockdep_off": ("lockdep turned itself off", "lock checking"),
            "kasan_off": ("KASAN reports only its first bug of a boot", "KASAN's reports")}


def outside_phase(name: str | None) -> str | None:
    """"boot", "between tests" or "after tests" for such a record's name, else None."""
    return next((phase for phase, record in PHASES.items() if record == name), None)
BAD = {"fail", "timeout", "crash", "notrun"}
MAX_LOG = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: str, limit: int = MAX_LOG) -> str:
    """Guest output is untrusted: no control characters, bounded size."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n"))
    if len(text) > limit:
        text = text[: limit // 2] + f"\n[... {len(text) - limit} characters cut ...]\n" + text[-limit // 2:]
    return text


@dataclass
class TestRecord:
    __test__ = False  # not a pytest class

    name: str
    status: str
    duration_s: float = 0.0
    log: str = ""
    reason: str = ""
    binary: str = ""
    # with --parallel: the tests of the other lanes that ran while this one did
    alongside: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"bad status {self.status!r}")
        self.log = clean(self.log)
        self.reason = clean(self.reason, 1000)


@dataclass
class RunRecord:
    verdict: str = "error"  # pass | fail | error
    suite: str = ""
    profile: str = ""
    tests: list[TestRecord] = field(default_factory=list)
    kernel: dict = field(default_factory=dict)
    patches: list[dict] = field(default_factory=list)
    qemu: dict = field(default_factory=dict)
    image: dict = field(default_factory=dict)
    guest: dict = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    harness: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)  # what defines the kernel and the machine (for reproducers)
    base: dict = field(default_factory=dict)  # --compare-base: results (dir), cached (bool), key
    coverage: dict = field(default_factory=dict)  # --coverage (harness.coverage.after_suite)
    started: str = ""
    results_dir: str = ""

    def counts(self) -> dict[str, int]:
        c = {s: 0 for s in STATUSES}
        for t in self.tests:
            c[t.status] += 1
        return c

    def decide(self) -> str:
        """fail: a test failed, timed out or crashed the kernel; error: no
        verdict (infrastructure error, nothing ran, tests left unrun); else pass."""
        seen = {t.status for t in self.tests}
        if seen & {"fail", "timeout", "crash"}:
            self.verdict = "fail"
        elif self.errors or not self.tests or "notrun" in seen:
            self.verdict = "error"
        else:
            self.verdict = "pass"
        return self.verdict

    def exit_code(self) -> int:
        return {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(self.verdict, EXIT_ERROR)

    def to_json(self) -> dict:
        data = asdict(self)
        data["counts"] = self.counts()
        data["schema"] = 1
        return data

    @classmethod
    def from_json(cls, data: dict) -> "RunRecord":
        data = dict(data)
        data.pop("counts", None)
        data.pop("schema", None)
        tests = [TestRecord(**t) for t in data.pop("tests", [])]
        return cls(tests=tests, **data)
