import json
import xml.etree.ElementTree as ET

import pytest

from harness import errors as E
from harness.reports.results import RunRecord, TestRecord, clean, no_verdict_cause
from harness.reports.resultsdir import ResultsDir


def _record(*statuses, errors=()):
    tests = [TestRecord(f"fix.var.t{i}", s, 0.5, log=f"log {i}") for i, s in enumerate(statuses)]
    return RunRecord(suite="access", profile="x86_64-vtd", tests=tests, errors=list(errors))


def test_verdicts_and_exit_codes():
    cases = [
        (("pass", "pass", "skip"), (), "pass", 0),
        (("pass", "fail"), (), "fail", 1),
        (("pass", "timeout"), (), "fail", 1),
        (("crash", "notrun"), ("the guest kernel panicked",), "fail", 1),
        (("pass", "notrun"), ("interrupted",), "error", 2),
        ((), ("boot failed",), "error", 2),
        ((), (), "error", 2),
        (("pass",), ("verification failed",), "error", 2),
    ]
    for statuses, errors, verdict, code in cases:
        r = _record(*statuses, errors=errors)
        assert r.decide() == verdict, (statuses, errors)
        assert r.exit_code() == code


@pytest.mark.parametrize("error, cause", [
    (E.PatchError("0002-x.patch does not apply"), "the series does not apply"),
    (E.ConfigError("CONFIG_IOMMUFD_TEST would not stick"), "the kernel config"),
    (E.BuildError("iommufd selftests build failed: x.h: No such file", log="logs/build.log"), "the build failed"),
    (E.BootError("the guest kernel panicked during boot"), "the kernel did not come up"),
    (E.InputError("no such profile"), "the run's inputs"),
    (E.ImageError("debootstrap failed"), "infrastructure, not the kernel"),
    (E.TargetError("QEMU did not start"), "infrastructure, not the kernel"),
    (E.LabError("board locked by ci@host"), "infrastructure, not the kernel"),
    (E.ToolMissing("qemu-system-x86_64 is missing"), "infrastructure, not the kernel"),
])
def test_a_run_without_a_verdict_says_whether_the_kernel_or_the_infrastructure_stopped_it(error, cause):
    # as results.json keeps them: the rendered error, with its log and hint lines
    assert no_verdict_cause([error.render(), "error [host]: later"]) == cause


def test_results_json_and_junit_agree(tmp_path):
    r = _record("pass", "fail", "skip", "crash")
    r.tests[2].reason = "no hugepages"
    r.kernel = {"version": "6.12.117", "source": "linux-source-6.12", "build_id": "ab" * 20}
    r.patches = [{"name": "0001-x.patch", "subject": "x", "sha256": "0" * 64, "status": "applied"}]
    r.decide()
    d = ResultsDir(tmp_path / "res")
    for t in r.tests:
        d.add(t)
    d.write(r)
    data = json.loads((tmp_path / "res/results.json").read_text())
    assert data["verdict"] == "fail"
    assert [t["status"] for t in data["tests"]] == ["pass", "fail", "skip", "crash"]
    assert data["counts"]["fail"] == 1 and data["kernel"]["version"] == "6.12.117"
    assert RunRecord.from_json(data).tests == r.tests
    progress = [json.loads(line) for line in (tmp_path / "res/progress.jsonl").read_text().splitlines()]
    assert [p["name"] for p in progress] == [t.name for t in r.tests]
    suite = ET.parse(tmp_path / "res/junit.xml").getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "1" and suite.get("errors") == "1"
    assert suite.get("skipped") == "1"
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases][0] == ("fix.var", "t0")
    assert cases[1].find("failure") is not None and cases[3].find("error") is not None
    assert cases[2].find("skipped").get("message") == "no hugepages"
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["kernel.build_id"] == "ab" * 20 and props["patch.0"].startswith("0001-x.patch")


def test_guest_text_is_sanitised():
    t = TestRecord("a.b", "fail", log="ok\x1b[31mred\x00\x07 and\ttab\n" + "x" * 200000)
    assert "\x1b" not in t.log and "\x00" not in t.log and "\t" in t.log
    assert len(t.log) < 70000 and "characters cut" in t.log
    assert clean("a\r\nb") == "a\nb"
