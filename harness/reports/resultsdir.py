"""The results directory, written as the run goes so nothing collected is lost:

    results.json      everything, machine-readable (docs/results.md)
    junit.xml         one <testcase> per selftest case
    progress.jsonl    one line per finished test, appended as it finishes
    tap/<binary>.tap  the raw TAP the guest printed (.stderr: its diagnostics)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from harness.reports.junit import junit_xml
from harness.errors import HarnessError
from harness.reports.results import RunRecord, TestRecord, checking, validate


def atomic_write(path: Path, text: str) -> None:
    """A reader never sees half a file."""
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
        data = run.to_json()
        atomic_write(self.path / "results.json", json.dumps(data, indent=2) + "\n")
        if checking():  # written first: a record that breaks the contract is still kept
            problems = validate(data)
            if problems:
                raise HarnessError(f"{self.path / 'results.json'} breaks results.schema.json:\n  "
                                   + "\n  ".join(problems),
                                   "fix the writer, or change the schema (and its number) and docs/results.md")
        atomic_write(self.path / "junit.xml", junit_xml(run))
