"""report --merge: results dirs of many cells (a matrix on one machine, CI
jobs on many) as one verdict and one set of reports.  The cells are real
runs' results.json (tests/golden, captured by tests/golden/capture.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from golden_cells import BUILD_ERROR, FAIL, GOLDEN, PASS, cell  # tests/golden_cells.py

from harness.reports import kcidb, merge

REPO = Path(__file__).resolve().parents[2]


def harness(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_a_failing_cell_fails_the_merge_and_every_report_names_it(tmp_path):
    a = cell(tmp_path / "jobs", "job-1", PASS, profile="x86_64-virtio-iommu")
    b = cell(tmp_path / "jobs", "job-2", FAIL)
    out = tmp_path / "merged"
    res = harness("report", "--merge", str(a), str(b), "--out", str(out))
    assert res.returncode == 1, res.stderr
    assert "verdict: FAIL over 2 results dirs" in res.stdout
    m = json.loads((out / "merged.json").read_text())
    assert m["verdict"] == "fail" and m["counts"]["pass"] == 190 + 186 and m["counts"]["fail"] == 4
    assert [(c["name"], c["verdict"]) for c in m["cells"]] == [("x86_64-virtio-iommu full", "pass"),
                                                               ("x86_64-vtd full", "fail")]
    failed = json.loads((b / "results.json").read_text())
    names = [t["name"] for t in failed["tests"] if t["status"] == "fail"]
    assert m["cells"][1]["failed"] == names
    md = (out / "summary.md").read_text()
    assert md.startswith("### iommufd-harness: FAIL") and "1 passed, 1 failed" in md
    assert "| x86\\_64-vtd full | fail | 186 | 4 |" in md and "#### x86\\_64-vtd full: fail" in md
    for name in names:
        assert f"`{name}`: fail" in md
    suites = ET.fromstring((out / "junit.xml").read_text())
    assert suites.tag == "testsuites" and suites.get("tests") == str(190 + 190) and suites.get("failures") == "4"
    assert [s.get("name") for s in suites] == ["iommufd-harness.x86_64-virtio-iommu.full", "iommufd-harness.x86_64-vtd.full"]
    data = json.loads((out / "kcidb.json").read_text())
    kcidb.validate(data)
    assert len(data["tests"]) == sum(len(kcidb.to_kcidb(c.run)["tests"]) for c in merge.cells([a, b]))
    assert len(data["checkouts"]) == 2  # the failing run carried a series of its own


def test_a_checkout_and_build_two_cells_share_are_submitted_once(tmp_path):
    a = cell(tmp_path, "a", PASS)
    b = cell(tmp_path, "b", PASS, profile="x86_64-none")  # the same kernel on another machine
    cs = merge.cells([a, b])
    data = merge.kcidb_data(cs)
    kcidb.validate(data)
    assert (len(data["checkouts"]), len(data["builds"])) == (1, 1)
    assert len(data["tests"]) == 2 * len(kcidb.to_kcidb(cs[0].run)["tests"])


def test_a_cell_without_a_verdict_says_why_and_is_never_a_regression(tmp_path):
    a = cell(tmp_path, "x86", PASS)
    e = cell(tmp_path, "arm", BUILD_ERROR)
    res = harness("report", "--merge", str(tmp_path), "--out", str(tmp_path / "m"))
    assert res.returncode == 2
    m = json.loads((tmp_path / "m" / "merged.json").read_text())
    assert m["verdict"] == "error" and {c["name"]: c["failed"] for c in m["cells"]} == \
        {"arm64-smmuv3 access": [], "x86_64-vtd full": []}
    md = (tmp_path / "m" / "summary.md").read_text()
    assert "1 passed, 1 without a verdict" in md and "the build failed: no verdict" in md
    assert "iommufd selftests build failed" in md
    assert a.exists() and e.exists()


def test_cells_are_found_at_any_depth_and_the_same_cell_twice_is_told_apart(tmp_path):
    cell(tmp_path / "artifacts" / "shard-1" / "results", "20261201-x", PASS)
    cell(tmp_path / "artifacts" / "shard-2", "20261201-y", PASS)
    cs = merge.cells([tmp_path / "artifacts"])
    assert [c.name for c in cs] == ["x86_64-vtd full (20261201-x)", "x86_64-vtd full (20261201-y)"]
    assert merge.write(cs, tmp_path / "artifacts") == "pass"  # default --out: the one dir given
    res = harness("report", "--merge", str(tmp_path / "artifacts"))
    assert res.returncode == 0 and "verdict: PASS over 2 results dirs" in res.stdout
    assert "2 cells: all passed" in (tmp_path / "artifacts" / "summary.md").read_text()


def test_a_board_cell_is_named_by_its_board(tmp_path):
    data = json.loads((GOLDEN / PASS).read_text())
    b = cell(tmp_path, "b", PASS, profile="board-arm64",
             guest={**data["guest"], "kind": "board", "board": "odroid-m1", "host": "10.0.0.5"},
             inputs={"debug": ["lockdep", "kasan"]})
    assert merge.cells([b])[0].name == "board odroid-m1 full lockdep+kasan"


def test_a_board_cell_that_failed_before_its_target_was_up_keeps_its_name(tmp_path):
    """A deploy that failed: the run knew its board, not yet what it is
    (guest holds only the board's name); the night's cell, and its history,
    are still the board's."""
    b = cell(tmp_path, "b", PASS, profile="board-arm64", guest={"board": "qemu-board"}, tests=[],
             verdict="error", errors=["error [deploy]: deploy failed: ..."])
    assert merge.cells([b])[0].name == "board qemu-board full"


@pytest.mark.parametrize("argv, message", [
    (["--merge", "A", "B"], "--merge of several dirs needs --out DIR"),
    (["A", "B"], "report re-renders one results dir"),
    (["--merge", "A", "--baseline", "A"], "--merge takes no --baseline"),
    (["--merge", "EMPTY"], "holds no results.json, at any depth"),
    (["--merge", "MISSING", "--out", "O"], "MISSING does not exist"),
])
def test_bad_merges_are_refused_with_a_message(argv, message, tmp_path):
    a = cell(tmp_path, "a", PASS)
    (tmp_path / "empty").mkdir()
    subst = {"A": str(a), "B": str(a), "EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "MISSING"),
             "O": str(tmp_path / "o")}
    res = harness("report", *[subst.get(x, x) for x in argv])
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_a_matrix_top_directory_merges_to_what_the_matrix_said(tmp_path):
    """The top dir of 'run --profiles' holds one results dir per profile;
    merging it again gives the same files."""
    top = tmp_path / "matrix"
    cell(top, "x86_64-vtd", FAIL)
    cell(top, "arm64-smmuv3", BUILD_ERROR)
    merge.write(merge.cells([top]), top)
    first = {f: (top / f).read_text() for f in ("merged.json", "summary.md", "junit.xml")}
    shutil.copytree(top, tmp_path / "copy")
    assert harness("report", "--merge", str(top)).returncode == 2
    assert {f: (top / f).read_text() for f in first} == first
