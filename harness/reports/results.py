"""The records of a run: one ``TestRecord`` per test, the ``RunRecord`` with
its provenance, and the verdict (schema of results.json in docs/results.md)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import errors
from harness.errors import EXIT_ERROR, EXIT_FAIL, EXIT_PASS

STATUSES = ("pass", "fail", "skip", "timeout", "crash", "notrun")
# results.json's version: bumped on every incompatible change (a field removed, renamed, moved or
# retyped); results.schema.json next to this file is its contract, docs/results.md says what it means
SCHEMA = 2
SCHEMA_FILE = Path(__file__).with_name("results.schema.json")
CHECK_ENV = "IOMMUFD_HARNESS_CHECK_RESULTS"  # set (the tests set it): every results.json written is validated
BOARD_KEYS = ("deploy", "return")  # schema 1 kept a lab board's under qemu
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
    qemu: dict = field(default_factory=dict)  # the VM (empty for a board)
    board: dict = field(default_factory=dict)  # a lab board's deploy and return (empty for a VM)
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
        data["schema"] = SCHEMA
        return data

    @classmethod
    def from_json(cls, data: dict) -> "RunRecord":
        """A results.json of this schema or an older one (read as this one)."""
        data = dict(data)
        data.pop("counts", None)
        version = data.pop("schema", 1)
        if not isinstance(version, int) or version > SCHEMA:
            raise ValueError(f"its schema is {version!r}; this iommufd-harness reads schemas 1 to {SCHEMA} "
                             "(a newer iommufd-harness wrote it: read it with that one)")
        if version < 2:  # a lab board's deploy and return were under qemu
            qemu = dict(data.get("qemu") or {})
            data["board"] = {k: qemu.pop(k) for k in BOARD_KEYS if k in qemu}
            data["qemu"] = qemu
        tests = [TestRecord(**t) for t in data.pop("tests", [])]
        return cls(tests=tests, **data)


# why a run gave no verdict, by the stage its first error names (HarnessError.render: "error [build]: ...")
NO_VERDICT_CAUSES = {
    errors.InputError.stage: "the run's inputs",
    errors.PatchError.stage: "the series does not apply",
    errors.ConfigError.stage: "the kernel config",
    errors.BuildError.stage: "the build failed",
    errors.BootError.stage: "the kernel did not come up",
}


def no_verdict_cause(errs: list[str]) -> str:
    """What a run without a verdict points at: the kernel's own stages
    (its series, config, build, boot) by name, everything else (the host,
    the image, a board or lab, the harness) as infrastructure."""
    if not errs:
        return "tests left unrun"
    m = re.match(r"error \[(\w+)\]", errs[0])
    return NO_VERDICT_CAUSES.get(m.group(1) if m else "", "infrastructure, not the kernel")


def validate(data: dict) -> list[str]:
    """What in ``data`` (a results.json) breaks results.schema.json: one
    line per problem, the first 20; none when it holds."""
    import jsonschema  # a dependency of kcidb-io

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    problems = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}" for e in problems[:20]]


def checking() -> bool:
    return bool(os.environ.get(CHECK_ENV))


@dataclass
class Cell:
    """A run as one cell of a merge, a matrix or a night: its name, its
    results dir, its record."""

    name: str  # profile or board, suite, debug kernel: unique in the merge
    path: Path
    run: RunRecord

    @property
    def where(self) -> str:
        """What it ran on: the board for a board run, else the profile."""
        g = self.run.guest
        # a run that failed before its board was up knows only the board's name
        if g.get("kind") == "board" or g.get("board"):
            return f"board {g.get('board') or g.get('host') or '?'}"
        return self.run.profile or "?"

    @property
    def debug(self) -> str:
        return "+".join((self.run.inputs or {}).get("debug") or [])

    def default_name(self) -> str:
        return " ".join(x for x in (self.where, self.run.suite or "?", self.debug) if x)
