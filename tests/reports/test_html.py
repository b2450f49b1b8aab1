"""report.html in a real browser: headless Chromium (Debian's package,
installed by make setup-test) loads the page from disk, runs its script, and the
test reads what it rendered (the DOM after the script ran)."""

from __future__ import annotations

import json
from urllib.parse import quote

from browser import rendered  # tests/browser.py
from golden_cells import cell  # tests/golden_cells.py

from harness.reports import merge


def test_the_matrix_page_shows_each_cell_and_opens_a_failing_tests_log(tmp_path):
    cells = merge.cells([cell(tmp_path, "a", "results-x86_64-vtd-full-pass.json", profile="x86_64-virtio-iommu"),
                         cell(tmp_path, "b", "results-x86_64-vtd-full-fail.json"),
                         cell(tmp_path, "c", "results-arm64-smmuv3-access-build-error.json")])
    out = tmp_path / "merged"
    merge.write(cells, out)
    failing = [t for t in cells[1].run.tests if t.status == "fail"]
    test = failing[0]
    dom = rendered(out / "report.html", f"#t={quote(test.name)}&c=1")
    assert dom.find("body", data_rendered="yes"), "the page's script did not run"
    assert dom.find("h1", id="verdict")[0][2] == "iommufd-harness: ERROR over 3 cells"
    # the cells, with their verdicts, and the build error of the one without a verdict
    rows = [e[2] for e in dom.elements if e[0] == "tr" and e[1].get("id", "").startswith("cell-")]
    assert [r[:len(c.name) + len(c.run.verdict)] for r, c in zip(rows, cells)] == \
        ["x86_64-virtio-iommu fullpass", "x86_64-vtd fullfail", "arm64-smmuv3 accesserror"]
    assert [e[2] for e in dom.find("td", class_="v-fail")] == ["fail"]
    assert any("iommufd selftests build failed" in e[2] for e in dom.find("pre", class_="err"))
    # one row per test, failing ones first, one column per cell
    tests = [e for e in dom.elements if e[0] == "tr" and "data-test" in e[1]]
    assert len(tests) == len({t.name for c in cells for t in c.run.tests})
    assert {e[1]["data-test"] for e in tests[:len(failing)]} == {t.name for t in failing}
    row = next(i for i, e in enumerate(dom.elements) if e[1].get("data-test") == test.name)
    tds = [e for e in dom.elements[row + 1:row + 5] if e[0] == "td" and "data-cell" in e[1]]
    assert [(e[1]["class"], e[2]) for e in tds] == [("r st-pass", "pass"), ("r st-fail open", "fail"),
                                                   ("r st-none", "-")]
    # the result the address names is open: its log
    assert dom.find("h2", id="detail-title")[0][2] == f"{test.name} on x86_64-vtd full: fail"
    log = dom.find("pre", id="detail-log")[0][2]
    assert "FAIL  " + test.name in log and test.log.splitlines()[1].strip() in log


def test_a_single_run_has_its_page_too_and_a_log_cannot_break_out_of_it(tmp_path):
    """Guest output is untrusted: a log holding '</script>' stays text."""
    d = cell(tmp_path, "r", "results-x86_64-vtd-full-fail.json")
    data = json.loads((d / "results.json").read_text())
    bad = next(t for t in data["tests"] if t["status"] == "fail")
    bad["log"] += "\n</script><script>document.body.setAttribute('data-owned','yes')</script><b id=x>"
    (d / "results.json").write_text(json.dumps(data))
    from harness.reports import markdown

    markdown.rerender(d, None)
    dom = rendered(d / "report.html", f"#t={quote(bad['name'])}&c=0")
    assert dom.find("body", data_rendered="yes") and not dom.find("body", data_owned="yes")
    assert not dom.find("b", id="x")
    assert "</script><script>" in dom.find("pre", id="detail-log")[0][2]
