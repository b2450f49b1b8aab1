"""Stage 8 (results): per-test records, the verdict, and the files a run leaves.

    results.json   everything, machine-readable (schema in docs/results-schema.md)
    junit.xml      one <testcase> per selftest case
    progress.jsonl one line per finished test, appended as it finishes
    tap/<binary>.tap  the raw TAP the guest printed
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.errors import EXIT_ERROR, EXIT_FAIL, EXIT_PASS

STATUSES = ("pass", "fail", "skip", "timeout", "crash", "notrun")
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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ResultsDir:
    """Writes a run's results as they come in; nothing collected is lost."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.progress = path / "progress.jsonl"

    def add(self, test: TestRecord) -> None:
        with open(self.progress, "a") as f:
            f.write(json.dumps(asdict(test)) + "\n")
            f.flush()

    def save_tap(self, binary: str, tap: str, stderr: str = "") -> None:
        """The raw TAP (stdout) and the diagnostics (stderr) of one selftest process."""
        d = self.path / "tap"
        d.mkdir(exist_ok=True)
        with open(d / f"{binary}.tap", "a") as f:
            f.write(tap)
        with open(d / f"{binary}.stderr", "a") as f:
            f.write(stderr)

    def write(self, run: RunRecord) -> None:
        run.results_dir = str(self.path)
        _atomic_write(self.path / "results.json", json.dumps(run.to_json(), indent=2) + "\n")
        _atomic_write(self.path / "junit.xml", junit_xml(run))


def junit_xml(run: RunRecord) -> str:
    c = run.counts()
    suite = ET.Element("testsuite", {
        "name": f"iommufd-harness.{run.suite}.{run.profile}",
        "tests": str(len(run.tests)),
        "failures": str(c["fail"] + c["timeout"]),
        "errors": str(c["crash"] + c["notrun"]),
        "skipped": str(c["skip"]),
        "time": f"{sum(t.duration_s for t in run.tests):.3f}",
    })
    props = ET.SubElement(suite, "properties")
    flat = {
        "verdict": run.verdict, "profile": run.profile, "suite": run.suite,
        "kernel.version": run.kernel.get("version", ""), "kernel.source": run.kernel.get("source", ""),
        "kernel.build_id": run.kernel.get("build_id", ""),
        "qemu.version": run.qemu.get("version", ""), "qemu.accel": run.qemu.get("accel", ""),
    }
    for i, p in enumerate(run.patches):
        flat[f"patch.{i}"] = f"{p.get('name')} {p.get('sha256', '')[:12]} {p.get('subject', '')}"
    for k, v in flat.items():
        ET.SubElement(props, "property", {"name": k, "value": str(v)})
    for t in run.tests:
        classname, _, short = t.name.rpartition(".")
        case = ET.SubElement(suite, "testcase", {"classname": classname or t.binary, "name": short or t.name,
                                                 "time": f"{t.duration_s:.3f}"})
        if t.status in ("fail", "timeout"):
            el = ET.SubElement(case, "failure", {"message": t.reason or t.status, "type": t.status})
            el.text = t.log
        elif t.status in ("crash", "notrun"):
            el = ET.SubElement(case, "error", {"message": t.reason or t.status, "type": t.status})
            el.text = t.log
        elif t.status == "skip":
            ET.SubElement(case, "skipped", {"message": t.reason})
        if t.log and t.status not in BAD:
            ET.SubElement(case, "system-out").text = t.log
    if run.errors:
        ET.SubElement(suite, "system-err").text = clean("\n".join(run.errors))
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def summary_table(run: RunRecord, console=None, show_passed: bool = True) -> None:
    """The terminal summary: one row per test, then counts and the verdict."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(stderr=False)
    colors = {"pass": "green", "fail": "red", "skip": "yellow", "timeout": "red", "crash": "bold red",
              "notrun": "magenta"}
    table = Table(title=f"iommufd-harness: suite {run.suite} on {run.profile} "
                        f"(kernel {run.kernel.get('version', '?')})", show_lines=False)
    table.add_column("test")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("note", overflow="fold")
    for t in run.tests:
        if not show_passed and t.status == "pass":
            continue
        note = t.reason or (first_failure_line(t.log) if t.status in BAD else "")
        table.add_row(escape(t.name), f"[{colors[t.status]}]{t.status}[/]", f"{t.duration_s:.1f}s", escape(note))
    console.print(table)
    c = run.counts()
    counts = ", ".join(f"{c[s]} {s}" for s in STATUSES if c[s])
    color = {"pass": "green", "fail": "red"}.get(run.verdict, "bold red")
    console.print(f"[{color}]verdict: {run.verdict.upper()}[/]  ({counts or 'no tests'})")
    for e in run.errors:
        console.print(f"[bold red]error:[/] {escape(e)}", highlight=False)


def matrix_table(runs: list[RunRecord], console=None) -> None:
    """profile x suite -> counts, for runs over several profiles."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="iommufd-harness matrix")
    for col in ("profile", "suite", "verdict", *STATUSES):
        table.add_column(col, justify="right" if col in STATUSES else "left")
    for r in runs:
        c = r.counts()
        color = {"pass": "green", "fail": "red"}.get(r.verdict, "bold red")
        table.add_row(r.profile, r.suite, f"[{color}]{r.verdict}[/]", *(str(c[s]) for s in STATUSES))
    console.print(table)


def first_failure_line(log: str) -> str:
    for line in log.splitlines():
        if re.search(r"Expected|Assertion|error|ERROR|failed", line):
            return line.lstrip("# ").strip()[:200]
    return ""
