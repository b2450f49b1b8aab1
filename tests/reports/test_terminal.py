"""The terminal summary leads with what did not pass."""

from __future__ import annotations

import io
import json
import re

from rich.console import Console

from harness.reports.results import RunRecord
from harness.reports.terminal import summary_table


def _render(run: RunRecord, **kw) -> str:
    buf = io.StringIO()
    summary_table(run, Console(file=buf, width=200, force_terminal=False, color_system=None), **kw)
    return buf.getvalue()


def _golden(golden, name: str) -> RunRecord:
    return RunRecord.from_json(json.loads((golden / name).read_text()))


def test_failures_first_passing_tests_only_when_verbose(golden):
    run = _golden(golden, "results-x86_64-vtd-full-fail.json")
    failing = [t.name for t in run.tests if t.status != "pass"]
    passing = [t.name for t in run.tests if t.status == "pass"]
    out = _render(run)
    assert all(name in out for name in failing)
    assert not any(re.search(rf"{re.escape(name)}\s", out) for name in passing)
    assert "verdict: FAIL" in out and "186 pass, 4 fail" in out
    verbose = _render(run, verbose=True)
    assert all(name in verbose for name in passing + failing)
    # failures first, also when every test is listed
    at = {name: re.search(rf"{re.escape(name)}\s", verbose).start() for name in passing + failing}
    assert max(at[n] for n in failing) < min(at[n] for n in passing)


def test_a_green_run_is_one_line_and_the_verdict(golden):
    run = _golden(golden, "results-x86_64-vtd-full-pass.json")
    out = _render(run)
    assert out.count("\n") == 2 and "verdict: PASS" in out and "190 pass" in out


def test_kernel_reports_are_listed_after_the_failures(golden):
    run = _golden(golden, "results-x86_64-vtd-full-fail.json")
    run.kernel["splats"] = [{"kind": "warning", "test": run.tests[0].name,
                             "title": f"WARNING: CPU: 1 PID: {n} at drivers/iommu/iommufd/device.c:1268"}
                            for n in range(7)]
    out = _render(run)
    assert "kernel reports: 7" in out and f"warning in {run.tests[0].name}: WARNING: CPU: 1 PID: 4" in out
    assert "PID: 5" not in out and "... and 2 more" in out
    failing = [t.name for t in run.tests if t.status != "pass"]
    assert out.index("kernel reports: 7") > max(out.index(name) for name in failing)
