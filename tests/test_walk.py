"""walk: steps, what each changed, the first broken one (linear and bisect)."""

from __future__ import annotations

from pathlib import Path

from harness.pipeline import Options
from harness.reports.results import RunRecord, TestRecord
from harness.stages import patches
from harness.walk import Series, Step, first_broken, judge, render, step_options, load_series


def _rec(statuses: dict[str, str], splats=(), errors=()) -> RunRecord:
    r = RunRecord(suite="access", profile="x86_64-vtd",
                  tests=[TestRecord(n, s, 0.1, binary="iommufd") for n, s in statuses.items()])
    r.kernel["splats"] = [{"signature": s, "title": s} for s in splats]
    r.errors = list(errors)
    r.decide()
    return r


def _step(k: int, rec: RunRecord, before: RunRecord | None, against: int | None = None) -> Step:
    s = Step(k, f"{k:04d}-p.patch" if k else "", "subject", Path(f"/r/step-{k:02d}"))
    judge(s, rec, before, against if against is not None else (k - 1 if before is not None else None))
    return s


BASE = {"a.x.t1": "pass", "a.x.t2": "pass", "a.y.t1": "pass"}


def test_each_step_says_what_it_broke_and_fixed():
    base = _rec(BASE)
    s0 = _step(0, base, None)
    assert s0.outcome == "base"
    broken = _rec({**BASE, "a.x.t2": "fail"})
    s1 = _step(1, broken, base)
    assert s1.outcome == "broke" and s1.broke == ["a.x.t2: new failure"] and s1.against == 0
    fixed = _rec(BASE)
    s2 = _step(2, fixed, broken)
    assert s2.outcome == "fixed" and s2.fixed == ["a.x.t2: fixed"]
    same = _step(3, _rec(BASE), fixed)
    assert same.outcome == "same"
    # a kernel report the step before did not have breaks it, even when every test passes
    warned = _step(4, _rec(BASE, splats=["WARNING: at drivers/iommu/iommufd/device.c:1268"]), fixed)
    assert warned.outcome == "broke" and warned.new_reports == ["WARNING: at drivers/iommu/iommufd/device.c:1268"]
    # a vanished test is a breakage too
    gone = _step(5, _rec({"a.x.t1": "pass", "a.y.t1": "pass"}), fixed)
    assert gone.broke == ["a.x.t2: disappeared"]


def test_an_error_step_names_its_stage_and_is_skipped_over():
    bad = _rec({}, errors=["error [build]: make failed\n  log: x"])
    s = _step(2, bad, _rec(BASE))
    assert s.outcome == "error" and (s.stage, s.error) == ("build", "make failed") and s.broke == []


def test_first_broken_linear_and_bisect():
    base, broke = _rec(BASE), _rec({**BASE, "a.y.t1": "crash"})
    linear = {0: _step(0, base, None), 1: _step(1, base, base), 2: _step(2, broke, base), 3: _step(3, broke, broke)}
    assert first_broken(linear, bisect=False).index == 2
    # bisect: steps 0, 4, 2, 3 run (each against the base): 3 is the first broken, as 2 is fine
    b = {0: _step(0, base, None), 4: _step(4, broke, base, 0), 2: _step(2, base, base, 0),
         3: _step(3, broke, base, 0)}
    assert first_broken(b, bisect=True).index == 3
    # without step 2's verdict the patch cannot be named
    b[2] = _step(2, _rec({}, errors=["error [boot]: no"]), base, 0)
    assert first_broken(b, bisect=True) is None
    text = render({"bisect": True, "suite": "access", "profile": "x86_64-vtd", "patches": 4, "first_broken": None,
                   "steps": [s.to_json() for s in b.values()]})
    assert "| 2 | `0002-p.patch` | error (boot: no) |" in text and "no step broke anything" in text


def test_step_options_for_a_quilt_series_hold_the_first_k_patches(tmp_path):
    series_dir = tmp_path / "s"
    series_dir.mkdir()
    for i in (1, 2, 3):
        (series_dir / f"000{i}-p.patch").write_text(
            f"Subject: [PATCH] p{i}\n\n---\n--- a/f{i}\n+++ b/f{i}\n@@ -1 +1 @@\n-a\n+b\n")
    (series_dir / "series").write_text("0001-p.patch\n0002-p.patch\n0003-p.patch\n")
    opts = Options.of(work=tmp_path / "w", patches=[series_dir])
    series = load_series(opts)
    assert [p.subject for p in series.items] == ["p1", "p2", "p3"]
    assert step_options(opts, series, 0, tmp_path / "root").kernel.patches == []
    two = step_options(opts, series, 2, tmp_path / "root")
    assert [p.subject for p in patches.load(two.kernel.patches[0])] == ["p1", "p2"]
    assert two.results == tmp_path / "root" / "step-02" and not two.compare_base


def test_step_options_for_commits_are_prefixes_of_the_range(tmp_path):
    opts = Options.of(work=tmp_path / "w", kernel_src=tmp_path, commits="main..series")
    series = Series((), "b" * 40, ("1" * 40, "2" * 40))
    assert step_options(opts, series, 0, tmp_path).kernel.rev == "b" * 40
    assert step_options(opts, series, 0, tmp_path).kernel.commits is None
    assert step_options(opts, series, 2, tmp_path).kernel.commits == f"{'b' * 40}..{'2' * 40}"


def test_a_steps_series_keeps_what_series_toml_says(tmp_path):
    series_dir = tmp_path / "s"
    series_dir.mkdir()
    for i in (1, 2):
        (series_dir / f"000{i}-p.patch").write_text(
            f"Subject: [PATCH] p{i}\n\n---\n--- a/f{i}\n+++ b/f{i}\n@@ -1 +1 @@\n-a\n+b\n")
    (series_dir / "series").write_text("0001-p.patch\n0002-p.patch\n")
    (series_dir / "series.toml").write_text(
        'kernels = ">=6.2"\n[[patch]]\nname = "0002-p.patch"\nkernels = "<6.12"\nwhy = "fixed in \\"6.12\\""\n'
        'when = [{ file = "a/b.h", lacks = "X" }]\n')
    opts = Options.of(work=tmp_path / "w", patches=[series_dir])
    series = load_series(opts)
    again = patches.load(step_options(opts, series, 2, tmp_path / "root").kernel.patches[0])
    for version in ("6.1.0", "6.6.3", "6.12.117"):
        for before, after in zip(series.items, again):
            assert bool(before.not_for(tmp_path, version)) == bool(after.not_for(tmp_path, version)), version
    assert again[1].not_for(tmp_path, "6.12.117") == 'for kernels >=6.2, <6.12, this is 6.12.117 (fixed in "6.12")'
    assert again[0].not_for(tmp_path, "6.12.117") is None
