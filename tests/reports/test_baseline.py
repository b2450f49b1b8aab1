import json
from pathlib import Path

import pytest

from harness import suites
from harness.parse.testlist import parse_list
from harness.reports.baseline import (
    Baseline,
    Expectation,
    compare,
    from_run,
    is_flaky,
    load_baseline,
    mark_flaky,
)
from harness.errors import InputError
from harness.reports.results import RunRecord, TestRecord

REPO = Path(__file__).resolve().parents[2]
BASELINES = REPO / "selftests" / "baselines"


def _run(statuses: dict[str, str], suite="access", profile="x86_64-vtd") -> RunRecord:
    tests = [TestRecord(name, s, 0.1, log=f"# {name}: {s}", binary="iommufd") for name, s in statuses.items()]
    run = RunRecord(suite=suite, profile=profile, tests=tests)
    run.decide()
    return run


BASE = {"f.a.t1": "pass", "f.a.t2": "pass", "f.b.t1": "pass", "f.b.t2": "skip"}


def _vs_previous(now: dict[str, str]):
    run = _run(now)
    return run, compare(run, from_run(_run(BASE), "prev"))


def _toml(tmp_path, text: str, name="x86_64-vtd-access.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# -- regressions against a previous run ------------------------------------------------


def test_identical_run_is_unchanged_and_passes():
    run, c = _vs_previous(dict(BASE))
    assert (c.regressions, c.improvements, c.known_failures, c.disappeared, c.new_tests) == ((),) * 5
    assert c.unchanged == 4 and c.count == c.expected_count == 4
    assert c.gate_verdict(run.verdict) == "pass"


@pytest.mark.parametrize("status, kind", [("fail", "new failure"), ("crash", "new crash"),
                                          ("timeout", "new timeout"), ("notrun", "not run")])
def test_new_bad_status_is_a_regression(status, kind):
    run, c = _vs_previous({**BASE, "f.a.t2": status})
    assert [(ch.name, ch.before, ch.after, ch.kind) for ch in c.regressions] == [("f.a.t2", "pass", status, kind)]
    assert c.unchanged == 3
    assert c.gate_verdict(run.verdict) == ("error" if status == "notrun" else "fail")
    assert c.gate_verdict("fail") == "fail"


def test_disappeared_test_fails_a_green_run():
    now = {k: v for k, v in BASE.items() if k != "f.b.t1"}
    run, c = _vs_previous(now)
    assert run.verdict == "pass"
    assert c.disappeared == ("f.b.t1",) and c.count_dropped and not c.regressions
    assert c.gate_verdict(run.verdict) == "fail"
    assert "1 test(s) disappeared" in c.reasons()


def test_a_run_of_some_tests_misses_only_what_it_selected():
    """--tests narrows the comparison: the baseline's other tests and the
    suite's count were not asked for; a selected test that did not run has
    still disappeared."""
    run = _run({"f.a.t1": "pass"})
    run.inputs = {"tests": "f.a.*"}
    c = compare(run, from_run(_run(BASE), "prev"))
    assert c.disappeared == ("f.a.t2",) and not c.count_dropped
    run = _run({"f.a.t1": "pass", "f.a.t2": "pass"})
    run.inputs = {"tests": "f.a.*, f.x.*"}
    c = compare(run, from_run(_run(BASE), "prev"))
    assert (c.disappeared, c.count_dropped, c.gate_verdict(run.verdict)) == ((), False, "pass")


def test_more_skips_is_a_regression():
    run, c = _vs_previous({**BASE, "f.a.t1": "skip"})
    assert run.verdict == "pass"
    assert [(ch.name, ch.kind) for ch in c.regressions] == [("f.a.t1", "now skipped")]
    assert c.gate_verdict(run.verdict) == "fail"


def test_test_that_starts_passing_is_an_improvement():
    base = _run({**BASE, "f.a.t1": "fail"})
    run = _run({**BASE, "f.b.t2": "pass"})
    c = compare(run, from_run(base, "prev"))
    assert {(ch.name, ch.before, ch.kind) for ch in c.improvements} == {("f.a.t1", "fail", "fixed"),
                                                                        ("f.b.t2", "skip", "now passes")}
    assert not c.regressions and c.gate_verdict(run.verdict) == "pass"


def test_failure_already_in_the_baseline_is_known_not_a_regression():
    base = _run({**BASE, "f.a.t1": "fail"})
    run = _run({**BASE, "f.a.t1": "fail"})
    c = compare(run, from_run(base, "prev"))
    assert run.verdict == "fail"
    assert [(ch.name, ch.kind) for ch in c.known_failures] == [("f.a.t1", "still failing")]
    assert not c.regressions and c.gate_verdict(run.verdict) == "pass"


def test_known_failure_that_gets_worse_is_a_regression():
    base = _run({**BASE, "f.a.t1": "fail"})
    c = compare(_run({**BASE, "f.a.t1": "crash"}), from_run(base, "prev"))
    assert [(ch.before, ch.after, ch.kind) for ch in c.regressions] == [("fail", "crash", "worse")]
    # a milder failure than the known one is still the known failure
    base = _run({**BASE, "f.a.t1": "crash"})
    c = compare(_run({**BASE, "f.a.t1": "fail"}), from_run(base, "prev"))
    assert not c.regressions and [ch.kind for ch in c.known_failures] == ["still failing"]


def test_new_tests_are_listed_and_gate_only_when_they_fail():
    run, c = _vs_previous({**BASE, "f.c.new": "pass"})
    assert c.new_tests == ("f.c.new",) and c.gate_verdict(run.verdict) == "pass"
    run, c = _vs_previous({**BASE, "f.c.new": "fail"})
    assert [(ch.name, ch.kind) for ch in c.regressions] == [("f.c.new", "new test fails")]
    assert c.gate_verdict(run.verdict) == "fail"


def test_error_stays_error_even_without_regressions():
    _, c = _vs_previous(dict(BASE))
    assert c.gate_verdict("error") == "error"
    with pytest.raises(ValueError):
        c.gate_verdict("maybe")


# -- expectations files -------------------------------------------------------------


def test_toml_known_failure_still_failing_passes_the_gate(tmp_path):
    p = _toml(tmp_path, """
profile = "x86_64-vtd"
suite = "access"
count = 4
[tests]
"*" = "pass"
"f.b.t2" = ["pass", "skip"]
[[known]]
test = "f.a.*"
status = ["fail", "timeout"]
reason = "area alignment bug in 6.12"
link = "https://example.org/bug/1"
""")
    base = load_baseline(p, "x86_64-vtd", "access")
    run = _run({"f.a.t1": "fail", "f.a.t2": "timeout", "f.b.t1": "pass", "f.b.t2": "skip"})
    c = compare(run, base)
    assert run.verdict == "fail"
    assert [(ch.name, ch.reason, ch.link) for ch in c.known_failures] == [
        ("f.a.t1", "area alignment bug in 6.12", "https://example.org/bug/1"),
        ("f.a.t2", "area alignment bug in 6.12", "https://example.org/bug/1")]
    assert not c.regressions and c.unchanged == 2 and c.gate_verdict(run.verdict) == "pass"
    # the known failure crashing instead is worse: a regression
    c = compare(_run({"f.a.t1": "crash", "f.a.t2": "fail", "f.b.t1": "pass", "f.b.t2": "pass"}), base)
    assert [(ch.name, ch.kind) for ch in c.regressions] == [("f.a.t1", "worse")]
    # and when it passes, that is an improvement, with the entry's reason to clean it up
    c = compare(_run({"f.a.t1": "pass", "f.a.t2": "pass", "f.b.t1": "pass", "f.b.t2": "pass"}), base)
    assert [ch.kind for ch in c.improvements] == ["fixed", "fixed"] and c.gate_verdict("pass") == "pass"


def test_toml_lower_count_is_a_regression(tmp_path):
    base = load_baseline(_toml(tmp_path, 'count = 5\n[tests]\n"*" = "pass"\n'), "x86_64-vtd", "access")
    run = _run(dict.fromkeys(["a.x", "a.y", "a.z", "a.w"], "pass"))
    c = compare(run, base)
    assert run.verdict == "pass" and not c.regressions and not c.disappeared
    assert c.count_dropped and c.gate_verdict(run.verdict) == "fail"
    assert c.reasons() == ["4 tests ran, the baseline expects 5"]


def test_toml_pattern_that_matches_nothing_has_disappeared(tmp_path):
    base = load_baseline(_toml(tmp_path, '[tests]\n"a.*" = "pass"\n"b.gone" = "pass"\n"c.*.t" = "pass"\n'), "", "")
    c = compare(_run({"a.x": "pass"}), base)
    assert c.disappeared == ("b.gone", "c.*.t") and c.gate_verdict("pass") == "fail"


def test_most_specific_expectation_wins():
    base = Baseline("t", tests=(Expectation("*", frozenset({"pass"})),
                                Expectation("f.*.t1", frozenset({"skip"})),
                                Expectation("f.a.t1", frozenset({"pass", "skip"}))),
                    known=(Expectation("f.b.*", frozenset({"fail"}), "bug"),))
    assert base.expectation("f.a.t1").pattern == "f.a.t1"  # exact beats globs
    assert base.expectation("f.c.t1").pattern == "f.*.t1"  # longest glob beats "*"
    assert base.expectation("f.b.t1").pattern == "f.b.*"  # known failures first
    assert base.expectation("other").pattern == "*"
    assert Baseline("t", tests=(Expectation("f.a", frozenset({"pass"})),)).expectation("f.b") is None


BAD_TOML = [
    ("[tests\n", "not valid TOML"),
    ('colour = "red"\n[tests]\n"*" = "pass"\n', "unknown key 'colour'"),
    ('format = 2\n[tests]\n"*" = "pass"\n', "format 2 is not supported"),
    ('[tests]\n"a.b" = "fail"\n', "status 'fail' is not one of pass, skip"),
    ('[tests]\n"a.b" = []\n', "must be a status name or a list"),
    ('[[known]]\ntest = "a.b"\n', "'reason' is required"),
    ('[[known]]\ntest = "a.b"\nreason = "x"\nstatus = "pass"\n', "status 'pass' is not one of"),
    ('[[known]]\nreason = "x"\n', "'test' (a name or glob) is required"),
    ('[[known]]\ntest = "a.b"\nreason = "x"\nowner = "me"\n', "unknown key 'owner'"),
    ('count = 0\n[tests]\n"*" = "pass"\n', "count must be a positive integer"),
    ('count = "190"\n[tests]\n"*" = "pass"\n', "count must be a positive integer"),
    ("tests = 3\n", "[tests] must be a table"),
    ('profile = "x86_64-vtd"\n', "no expectations"),
]


@pytest.mark.parametrize("text, message", BAD_TOML)
def test_bad_expectations_file_is_a_clear_input_error(tmp_path, text, message):
    p = _toml(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_baseline(p, "x86_64-vtd", "access")
    assert message in e.value.message and str(p) in e.value.message


def test_bad_baseline_paths_and_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_baseline(tmp_path / "nope.toml", "x86_64-vtd", "access")
    with pytest.raises(InputError, match="holds neither results.json nor x86_64-vtd-access.toml"):
        load_baseline(tmp_path, "x86_64-vtd", "access")
    (tmp_path / "base.txt").write_text("pass\n")
    with pytest.raises(InputError, match="unknown kind of file"):
        load_baseline(tmp_path / "base.txt", "x86_64-vtd", "access")
    (tmp_path / "r.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable results.json"):
        load_baseline(tmp_path / "r.json", "x86_64-vtd", "access")
    (tmp_path / "r.json").write_text(json.dumps({"verdict": "pass"}))
    with pytest.raises(InputError, match="no 'tests' list"):
        load_baseline(tmp_path / "r.json", "x86_64-vtd", "access")
    (tmp_path / "r.json").write_text(json.dumps({"tests": [{"name": "a", "status": "weird"}]}))
    with pytest.raises(InputError, match="bad status 'weird'"):
        load_baseline(tmp_path / "r.json", "x86_64-vtd", "access")
    (tmp_path / "r.json").write_text(json.dumps(RunRecord(suite="access", profile="x86_64-vtd").to_json()))
    with pytest.raises(InputError, match="has no test results"):
        load_baseline(tmp_path / "r.json", "x86_64-vtd", "access")


def test_baseline_for_another_profile_or_suite_is_refused(tmp_path, golden):
    with pytest.raises(InputError, match="is for suite 'full', this run is suite 'access'"):
        load_baseline(golden / "results-x86_64-vtd-full-pass.json", "x86_64-vtd", "access")
    with pytest.raises(InputError, match="is for profile 'x86_64-vtd', this run is profile 'x86_64-none'"):
        load_baseline(BASELINES / "x86_64-vtd-full.toml", "x86_64-none", "full")


# -- previous runs as baselines, from disk -------------------------------------------------


def test_results_dir_and_results_json_are_baselines(tmp_path, golden):
    d = tmp_path / "prev"
    d.mkdir()
    (d / "results.json").write_text((golden / "results-x86_64-vtd-full-pass.json").read_text())
    for path in (d, d / "results.json"):
        base = load_baseline(path, "x86_64-vtd", "full")
        assert base.count == 190 and len(base.tests) == 190 and base.source == str(d)
    fail_run = RunRecord.from_json(json.loads((golden / "results-x86_64-vtd-full-fail.json").read_text()))
    c = compare(fail_run, load_baseline(d, "x86_64-vtd", "full"))
    assert {ch.name for ch in c.regressions} == {f"iommufd_ioas.{v}.area_auto_iova" for v in
                                                 ("no_domain", "mock_domain", "two_mock_domain", "mock_domain_limit")}
    assert c.unchanged == 186 and c.gate_verdict(fail_run.verdict) == "fail"
    # the other way round: the failing run as baseline, the fixed run improves on it
    passing = RunRecord.from_json(json.loads((golden / "results-x86_64-vtd-full-pass.json").read_text()))
    c = compare(passing, load_baseline(golden / "results-x86_64-vtd-full-fail.json", "x86_64-vtd", "full"))
    assert len(c.improvements) == 4 and not c.regressions and c.gate_verdict(passing.verdict) == "pass"


# -- the shipped expectations ----------------------------------------------------------------


def test_shipped_baselines_load_and_match_the_suites(golden):
    listed = {"iommufd": parse_list((golden / "iommufd-6.12-list.txt").read_text()),
              "iommufd_fail_nth": parse_list((golden / "iommufd_fail_nth-6.12-list.txt").read_text())}
    want = {("x86_64-vtd", "access"): 24, ("x86_64-none", "access"): 24,
            ("x86_64-vtd", "fail_nth"): 7, ("x86_64-vtd", "full"): 190}
    assert sorted(p.stem for p in BASELINES.glob("*.toml")) == sorted(f"{p}-{s}" for p, s in want)
    for (profile, suite), count in want.items():
        base = load_baseline(BASELINES, profile, suite)
        assert (base.profile, base.suite, base.count) == (profile, suite, count)
        selected = [n for names in suites.select(suites.load(suite), listed).tests.values() for n in names]
        assert len(selected) == count
        run = _run(dict.fromkeys(selected, "pass"), suite=suite, profile=profile)
        c = compare(run, base)
        assert c.unchanged == count and not c.new_tests and not c.disappeared
        assert c.gate_verdict(run.verdict) == "pass"
        if suite != "full":  # explicit names: one per selected test, nothing else
            assert sorted(e.pattern for e in base.tests) == sorted(selected)


def test_shipped_full_baseline_against_the_real_runs(golden):
    base = load_baseline(BASELINES / "x86_64-vtd-full.toml", "x86_64-vtd", "full")
    good = RunRecord.from_json(json.loads((golden / "results-x86_64-vtd-full-pass.json").read_text()))
    bad = RunRecord.from_json(json.loads((golden / "results-x86_64-vtd-full-fail.json").read_text()))
    assert compare(good, base).gate_verdict(good.verdict) == "pass"
    c = compare(bad, base)
    assert len(c.regressions) == 4 and c.gate_verdict(bad.verdict) == "fail"
    shorter = RunRecord(verdict="pass", suite="full", profile="x86_64-vtd", tests=good.tests[:-1])
    assert compare(shorter, base).reasons() == ["189 tests ran, the baseline expects 190"]


# -- flaky ---------------------------------------------------------------------------------


def _t(status, log="", reason="", d=1.0):
    return TestRecord("f.a.t1", status, d, log=log or f"# {status}", reason=reason, binary="iommufd")


def test_failed_then_passed_is_flaky_and_does_not_gate():
    rec = mark_flaky(_t("fail", "# Expected 1 == 2"), [_t("fail"), _t("pass")])
    assert rec.status == "pass" and is_flaky(rec)
    assert rec.reason.startswith("flaky: fail, then pass on rerun 2 of 2 (fail, fail, pass)")
    assert "Expected 1 == 2" in rec.log and "# --- rerun 2: pass ---" in rec.log and rec.duration_s == 3.0
    run = _run(BASE)
    assert run.tests[0].name == rec.name
    run.tests[0] = rec
    c = compare(run, from_run(_run(BASE), "prev"))
    assert [(ch.name, ch.kind) for ch in c.flaky] == [("f.a.t1", "flaky")]
    assert not c.regressions and not c.improvements and c.gate_verdict(run.decide()) == "pass"


def test_what_is_not_flaky():
    assert not is_flaky(_t("pass"))
    first = _t("timeout", reason="killed after 120 s")
    rec = mark_flaky(first, [_t("fail"), _t("timeout")])
    assert rec.status == "timeout" and not is_flaky(rec)
    assert rec.reason == "killed after 120 s; failed on 2 rerun(s) too (timeout, fail, timeout)"
    crash = _t("crash", reason="kernel panic")
    assert mark_flaky(crash, [_t("pass")]) is crash  # a crash is a finding even if it does not reproduce
    assert mark_flaky(_t("fail"), []).status == "fail"
    assert mark_flaky(_t("pass"), [_t("fail")]).status == "pass"
    # a flaky test in a previous run is a passing expectation
    base = from_run(RunRecord(tests=[mark_flaky(_t("fail"), [_t("pass")])]), "prev")
    assert base.tests[0].statuses == frozenset({"pass"})


def test_a_baseline_recorded_on_another_kernel_is_said_not_hidden(tmp_path):
    """The checked-in expectations name their kernel; a run on another one
    compares as usual and says so (JSON, summary.md), without failing on it."""
    from harness.reports.markdown import render

    base = load_baseline(BASELINES, "x86_64-vtd", "access")
    assert base.kernel.startswith("6.12.117")
    names = [e.pattern for e in base.tests]
    run = _run({n: "pass" for n in names})
    run.kernel = {"version": "6.15.0-rc3", "git": {"describe": "v6.15-rc3-42-g0123456789ab"}}
    cmp_ = compare(run, base)
    assert cmp_.kernel_differs and not cmp_.regressed
    assert cmp_.notes() == ["the baseline was recorded on kernel 6.12.117 + kernel-patches/default; this run's "
                            "kernel is 6.15.0-rc3 (v6.15-rc3-42-g0123456789ab)"]
    assert cmp_.to_json()["kernel"]["differs"] is True
    assert "Note: the baseline was recorded on kernel 6.12.117" in render(run, cmp_)
    # the same release: nothing to say
    run.kernel = {"version": "6.12.117"}
    assert compare(run, base).notes() == [] and not compare(run, base).kernel_differs
    # a previous run as the baseline names its kernel the same way
    prev = _run({n: "pass" for n in names})
    prev.kernel = {"version": "6.12.117", "git": {"describe": "v6.12.117"}}
    assert from_run(prev, "prev").kernel == "6.12.117 (v6.12.117)"
    run.kernel = {"version": "6.13.2"}
    assert compare(run, from_run(prev, "prev")).kernel_differs
