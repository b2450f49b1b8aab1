"""Nights under one results root read back: what changed since the previous
night, since when a test fails, how flaky it is; and the night's reports
(summary.md leads with the changes, report.html shows a strip per result,
in a real browser).  The cells are real runs' results.json (tests/golden)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from browser import rendered  # tests/browser.py
from golden_cells import BUILD_ERROR, FAIL, GOLDEN, PASS, cell  # tests/golden_cells.py

from harness import nightly
from harness.errors import InputError
from harness.reports import history

ERROR = BUILD_ERROR
FAILING = sorted(t["name"] for t in json.loads((GOLDEN / FAIL).read_text())["tests"] if t["status"] == "fail")


def three_nights(root: Path) -> list[Path]:
    """x86 passes, fails four tests, passes again; arm64 passes, then its
    build breaks (no verdict), then it passes."""
    arm = {"profile": "arm64-smmuv3"}
    plan = [(PASS, PASS, arm), (FAIL, ERROR, {**arm, "suite": "full"}), (PASS, PASS, arm)]
    nights = []
    for i, (x86, arm64, changes) in enumerate(plan, 1):
        n = root / f"2026120{i}-0300"
        started = f"2026-12-0{i}T03:0{i}:00+00:00"  # as each night ran
        cell(n, "x86_64-vtd-full", x86, started=started)
        cell(n, "arm64-smmuv3-full", arm64, **changes, started=started)
        nightly.write_reports(n, root, 14)
        nights.append(n)
    return nights


def test_a_test_that_breaks_is_named_with_the_night_it_started_and_its_fix_the_night_after(tmp_path):
    n1, n2, n3 = three_nights(tmp_path)
    h2 = history.build(tmp_path, n2)
    assert [n.name for n in h2.nights] == [n1.name, n2.name]  # a night sees only the nights before it
    assert sorted(x["test"] for x in h2.changes["broke"]) == FAILING
    assert {(x["cell"], x["was"], x["is"], x["since"]) for x in h2.changes["broke"]} == \
        {("x86_64-vtd full", "pass", "fail", n1.name)}
    # the arm64 cell's broken build: no verdict, said to be the build, and none of its tests broke
    assert [x["cell"] for x in h2.changes["no_verdict"]] == ["arm64-smmuv3 full"]
    assert "iommufd selftests build failed" in h2.changes["no_verdict"][0]["error"]
    failing = {t["test"]: t for t in h2.tests if t["first_failing"]}
    assert sorted(failing) == FAILING and {t["first_failing"] for t in failing.values()} == {n2.name}
    arm = [t for t in h2.tests if t["cell"] == "arm64-smmuv3 full"]
    assert arm and all(t["statuses"] == ["pass", "error"] and t["first_failing"] is None for t in arm)

    h3 = history.build(tmp_path, n3)
    assert sorted(x["test"] for x in h3.changes["fixed"]) == FAILING and h3.changes["broke"] == []
    assert h3.changes["verdict_again"] == ["arm64-smmuv3 full"] and h3.changes["no_verdict"] == []
    t = next(t for t in h3.tests if t["test"] == FAILING[0] and t["cell"] == "x86_64-vtd full")
    assert t["statuses"] == ["pass", "fail", "pass"] and t["first_failing"] is None and t["flaky_rate"] == 1.0
    steady = next(t for t in h3.tests if t["test"] == "iommufd.cmd_fail" and t["cell"] == "x86_64-vtd full")
    assert steady["statuses"] == ["pass"] * 3 and steady["flaky_rate"] == 0.0

    # the night's own reports
    md = (n2 / "summary.md").read_text()
    assert md.startswith("### iommufd-harness: ERROR\n\n#### Since the previous night (`20261201-0300`)")
    assert md.index("Since the previous night") < md.index("| cell | verdict")
    for name in FAILING:
        assert f"- **broke**: `{name}` on x86\\_64-vtd full (pass -> fail)" in md
        assert f"| x86\\_64-vtd full | `{name}` | `{n2.name}` | pass fail |" in md
    assert "- **no verdict** on arm64-smmuv3 full (the build failed): error \\[build\\]: iommufd selftests build failed" in md
    assert json.loads((n2 / "history.json").read_text())["nights"] == [n1.name, n2.name]
    assert "#### Since the previous night (none: the first night)" in (n1 / "summary.md").read_text()
    assert "- **fixed**: `" in (n3 / "summary.md").read_text()


def test_a_streak_goes_on_through_a_night_without_a_verdict(tmp_path):
    for i, (x86, changes) in enumerate([(PASS, {}), (FAIL, {}), (ERROR, {"profile": "x86_64-vtd", "suite": "full"}),
                                        (FAIL, {})], 1):
        n = tmp_path / f"n{i}"
        cell(n, "x86", x86, **changes, started=f"2026-12-0{i}T03:00:00+00:00")
        nightly.write_reports(n, tmp_path, 14)
    h = history.build(tmp_path, tmp_path / "n4")
    t = next(t for t in h.tests if t["test"] == FAILING[0])
    assert t["statuses"] == ["pass", "fail", "error", "fail"] and t["first_failing"] == "n2"
    assert t["flaky_rate"] == 0.5  # known results pass, fail, fail: one change in two steps
    # the previous night it ran gave no verdict: nothing is said to have broken tonight
    assert h.changes["broke"] == [] and h.changes["verdict_again"] == ["x86_64-vtd full"]
    assert [n.name for n in history.nights(tmp_path, 2, tmp_path / "n4")] == ["n3", "n4"]


def test_nights_are_in_the_order_they_ran_whatever_their_names(tmp_path):
    for name, day in (("n10", 3), ("n9", 2), ("first", 1)):
        cell(tmp_path / name, "x86", PASS, started=f"2026-12-0{day}T03:00:00+00:00")
        nightly.write_reports(tmp_path / name, tmp_path, 14)
    assert [n.name for n in history.nights(tmp_path, 14)] == ["first", "n9", "n10"]
    assert history.build(tmp_path, tmp_path / "n9").changes["previous"] == "first"


def test_the_nights_page_shows_the_changes_and_a_strip_per_result(tmp_path):
    _, n2, _ = three_nights(tmp_path)
    dom = rendered(n2 / "report.html", f"#t={quote(FAILING[0])}&c=1")
    assert dom.find("body", data_rendered="yes")
    changed = [e[2] for e in dom.find("li", class_="broke")]
    assert sorted(x.split()[1] for x in changed) == FAILING
    assert all(x.endswith("on x86_64-vtd full (pass -> fail)") for x in changed)
    assert [e[2] for e in dom.find("li", class_="no-verdict")][0].startswith(
        "no verdict on arm64-smmuv3 full (the build failed): error [build]: iommufd selftests build failed")
    # the failing result: today's status, then one box per night, oldest first
    row = next(i for i, e in enumerate(dom.elements) if e[1].get("data-test") == FAILING[0])
    td = next(e for e in dom.elements[row:] if e[0] == "td" and e[1].get("data-cell") == "1")
    assert td[1]["class"] == "r st-fail open"
    strip = next(e for e in dom.elements[dom.elements.index(td):] if e[0] == "span" and e[1].get("class") == "strip")
    assert strip[1]["title"] == f"failing since {n2.name}; flaky rate 1"
    boxes = [e[1] for e in dom.elements[dom.elements.index(strip) + 1:][:2]]
    assert boxes == [{"class": "h st-pass", "title": "20261201-0300: pass"},
                     {"class": "h st-fail", "title": f"{n2.name}: fail"}]


def test_a_test_broken_on_several_cells_is_one_line_naming_them(tmp_path):
    """The same regression on two cells: summary.md and the page say it once
    per test, with both cells, not once per test and cell."""
    for i, result in enumerate((PASS, FAIL), 1):
        n = tmp_path / f"n{i}"
        started = f"2026-12-0{i}T03:00:00+00:00"
        cell(n, "x86", result, started=started)
        cell(n, "arm", result, profile="arm64-smmuv3", started=started)
        nightly.write_reports(n, tmp_path, 14)
    md = (tmp_path / "n2" / "summary.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("- **broke**")]
    assert len(lines) == len(FAILING)
    for name in FAILING:
        assert f"- **broke**: `{name}` on arm64-smmuv3 full, x86\\_64-vtd full (pass -> fail)" in lines
    dom = rendered(tmp_path / "n2" / "report.html")
    changed = sorted(e[2] for e in dom.find("li", class_="broke"))
    assert changed == [f"broke: {name} on arm64-smmuv3 full, x86_64-vtd full (pass -> fail)" for name in FAILING]


PLAN = '''suites = ["access"]
profiles = ["x86_64-vtd", "arm64-smmuv3"]
history = 7
'''


@pytest.mark.parametrize("text, message", [
    (PLAN + 'colour = "red"\n', "unknown key colour"),
    ('suites = ["nope"]\nprofiles = ["x86_64-vtd"]\n', "unknown suite 'nope'"),
    ('profiles = ["nope"]\n', "unknown profile 'nope'"),
    ('suites = ["access"]\n', "names no profile and no board"),
    (PLAN + 'patches = ["missing.patch"]\n', "missing.patch does not exist"),
    (PLAN + '[[boards]]\nlab = "lab.toml"\n', "boards[0] must have exactly lab and board"),
    ('profiles = "x86_64-vtd"\n', "profiles must be a list of strings"),
])
def test_a_bad_plan_is_refused_before_anything_runs(tmp_path, text, message):
    (tmp_path / "plan.toml").write_text(text)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        nightly.load(tmp_path / "plan.toml")


def test_a_plan_names_its_cells(tmp_path):
    (tmp_path / "s.patch").write_text("")
    (tmp_path / "plan.toml").write_text(PLAN + 'patches = ["s.patch"]\nroot = "nights"\n')
    plan = nightly.load(tmp_path / "plan.toml")
    assert plan.root == tmp_path / "nights" and plan.patches == (tmp_path / "s.patch",) and plan.history == 7
    from harness.pipeline import Options

    cells = nightly.cells(plan, Options.of(work=tmp_path))
    assert [(d, o.machine.profile, o.testing.suite) for d, o in cells] == [("x86_64-vtd-access", "x86_64-vtd", "access"),
                                                            ("arm64-smmuv3-access", "arm64-smmuv3", "access")]
