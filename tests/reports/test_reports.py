import copy
import hashlib
import json
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from harness.errors import InputError, ToolMissing
from harness.reports import kcidb
from harness.reports.baseline import compare, from_run, load_baseline, mark_flaky
from harness.reports.markdown import block, code, failure_lines, render, rerender
from harness.reports.results import RunRecord, TestRecord

REPO = Path(__file__).resolve().parents[2]
BASELINES = REPO / "selftests" / "baselines"
try:
    import kcidb_io.schema
except ImportError:  # pragma: no cover - the project installs it; say why if not
    kcidb_io = None
needs_kcidb = pytest.mark.skipif(kcidb_io is None, reason="kcidb-io is not installed (pip install kcidb-io)")

FAIL_LOG = """#  RUN           iommufd_ioas.mock_domain.access_pin ...
# iommufd.c:1234:access_pin:Expected 0 (0) == ioctl(self->fd, IOMMU_TEST_CMD, &cmd) (-1)
# iommufd.c:1240:access_pin:Assertion failed: pages pinned
#          FAIL  iommufd_ioas.mock_domain.access_pin
not ok 7 iommufd_ioas.mock_domain.access_pin"""


def _golden_run(golden, name) -> RunRecord:
    return RunRecord.from_json(json.loads((golden / name).read_text()))


def _run(*tests: TestRecord, errors=()) -> RunRecord:
    run = RunRecord(suite="access", profile="x86_64-vtd", tests=list(tests), errors=list(errors),
                    started="2026-11-24T02:28:14+00:00", results_dir="/r/20261124-022814-x86_64-vtd-access-69f1")
    run.kernel = {"version": "6.12.117", "source": "linux-source-6.12 6.12.117-1~deb12u1", "build_id": "ab" * 20,
                  "config_sha256": "cd" * 32, "rebuilt": True, "arch": "x86_64", "toolchain": "gcc (ccache)"}
    run.patches = [{"name": "0001-selftests-iommu-build.patch", "subject": "selftests/iommu: build on 6.12.y",
                    "sha256": "11" * 32},
                   {"name": "0002-iommufd-fwspec.patch", "subject": "iommufd: Register mock devices with fwspec",
                    "sha256": "22" * 32}]
    run.qemu = {"version": "7.2.22", "accel": "tcg", "accel_reason": "requested", "profile": "x86_64-vtd"}
    run.guest = {"kernel_release": "6.12.117", "build_id": "ab" * 20, "hugepages": 64,
                 "iommus": ["dmar0", "iommufd_selftest_iommu.0"]}
    run.stages = {"source": 1.0, "patches": 0.1, "config": 2.0, "build": 300.0, "image": 1.0, "boot": 9.0, "run": 5.0}
    run.decide()
    return run


def _pass(name):
    return TestRecord(name, "pass", 0.25, log=f"ok 1 {name}", binary="iommufd")


# -- summary.md ------------------------------------------------------------------------


def test_failure_lines_pick_assertions_over_tap_noise():
    t = TestRecord("iommufd_ioas.mock_domain.access_pin", "fail", log=FAIL_LOG)
    assert failure_lines(t) == [
        "iommufd.c:1234:access_pin:Expected 0 (0) == ioctl(self->fd, IOMMU_TEST_CMD, &cmd) (-1)",
        "iommufd.c:1240:access_pin:Assertion failed: pages pinned"]
    t = TestRecord("a.b", "timeout", log="# step 1\n# step 2\n# step 3", reason="killed after 120 s")
    assert failure_lines(t, limit=3) == ["harness: killed after 120 s", "step 2", "step 3"]
    many = TestRecord("a.b", "fail", log="\n".join(f"# x.c:{i}:Expected {i}" for i in range(20)))
    assert failure_lines(many, limit=4)[-1] == "[... 17 more lines]" and len(failure_lines(many, limit=4)) == 4


def test_summary_with_regressions_failures_splats_and_provenance(tmp_path):
    base_run = _run(_pass("iommufd_ioas.mock_domain.access_pin"), _pass("iommufd_ioas.no_domain.access_rw"),
                    _pass("iommufd_ioas.no_domain.access_pin"))
    run = _run(TestRecord("iommufd_ioas.mock_domain.access_pin", "fail", 0.5, log=FAIL_LOG, binary="iommufd"),
               TestRecord("iommufd_ioas.no_domain.access_rw", "crash", 2.0, log="# RUN ...",
                          reason="the guest kernel panicked", binary="iommufd"))
    run.kernel["splats"] = [{"kind": "BUG", "title": "BUG: kernel NULL pointer dereference, address: 0000000000000008",
                             "signature": "iommufd_access_rw+0x42", "test": "iommufd_ioas.no_domain.access_rw"}]
    c = compare(run, from_run(base_run, "work/results/prev"))
    md = render(run, c)
    lines = md.splitlines()
    assert lines[0] == "### iommufd-harness: FAIL"
    assert lines[2].startswith("**Gate: FAIL** against `work/results/prev`: 2 regression(s); "
                               "1 test(s) disappeared; 2 tests ran, the baseline expects 3. Run verdict: fail")
    assert "| 0 | 1 | 0 | 0 | 1 | 0 | 2 |" in md
    assert "- `iommufd_ioas.mock_domain.access_pin`: pass -> fail (new failure)" in md
    assert "- `iommufd_ioas.no_domain.access_rw`: pass -> crash (new crash)" in md
    assert "**Disappeared** (in the baseline, not in this run): `iommufd_ioas.no_domain.access_pin`" in md
    assert "**Fewer tests**: 2 ran, the baseline expects 3." in md
    assert "iommufd.c:1234:access_pin:Expected 0 (0) == ioctl(self->fd, IOMMU_TEST_CMD, &cmd) (-1)" in md
    assert "harness: the guest kernel panicked" in md
    assert ("- **BUG**: `BUG: kernel NULL pointer dereference, address: 0000000000000008` during "
            "`iommufd_ioas.no_domain.access_rw`, signature `iommufd_access_rw+0x42`") in md
    assert "iommufd-harness run --profile x86_64-vtd --suite access --tests 'iommufd_ioas.mock_domain.access_pin'" in md
    assert f"build-id `{'ab' * 20}`" in md and "6.12.117 from linux-source-6.12 6.12.117-1\\~deb12u1" in md
    assert "  2. `0002-iommufd-fwspec.patch` iommufd: Register mock devices with fwspec (sha256 `222222222222`)" in md
    assert "QEMU 7.2.22, tcg (requested)" in md and "`dmar0`, `iommufd_selftest_iommu.0`" in md
    assert "\n\n\n" not in md and not re.search(r"[\U0001F300-\U0001FAFF\u2600-\u27BF]", md)  # no emoji
    # splats passed explicitly win over the run's own
    assert "BUG: kernel NULL" not in render(run, c, splats=[])
    text = "\n".join(["WARNING: CPU: 0 PID: 1 at drivers/iommu/iommufd/device.c:10 x+0x1/0x2",
                      *(f"line {i}" for i in range(1, 10))])
    md = render(run, c, splats=[{"kind": "WARN", "title": "WARNING: at iommufd", "text": text}])
    assert "- **WARN**: `WARNING: at iommufd`\n\n  ```text\n  WARNING: CPU: 0 PID: 1 at drivers/iommu" in md
    assert "  line 5\n  [... 4 more lines]\n  ```" in md and "line 6" not in md


def test_summary_known_failures_pass_the_gate(tmp_path):
    p = tmp_path / "x86_64-vtd-access.toml"
    p.write_text('[tests]\n"*" = "pass"\n[[known]]\ntest = "iommufd_ioas.*.access_pin"\n'
                 'reason = "pin accounting bug"\nlink = "https://example.org/b/7"\n')
    run = _run(TestRecord("iommufd_ioas.mock_domain.access_pin", "fail", 0.5, log=FAIL_LOG, binary="iommufd"),
               _pass("iommufd_ioas.no_domain.access_rw"))
    md = render(run, compare(run, load_baseline(p, run.profile, run.suite)))
    assert md.startswith("### iommufd-harness: PASS\n")
    assert f"**Gate: PASS** against `{p}`: no regressions. Run verdict: fail (1 of 2 passed, 1 failed)." in md
    assert ("- `iommufd_ioas.mock_domain.access_pin`: fail -> fail (still failing): pin accounting bug "
            "([link](https://example.org/b/7))") in md
    assert "Regressions" not in md


def test_summary_without_baseline_and_of_an_error_run(golden):
    run = _run(_pass("a.b.c"))
    md = render(run, None)
    assert md.startswith("### iommufd-harness: PASS\n\n**Verdict: PASS** (1 of 1 passed); no baseline given.")
    assert "Failures" not in md and "Reproduce" not in md
    err = _golden_run(golden, "results-arm64-smmuv3-access-build-error.json")
    md = render(err, None)
    assert md.startswith("### iommufd-harness: ERROR\n")
    assert "error [build]: iommufd selftests build failed: iommufd_utils.h:12:10: linux/align.h" in md
    assert "`arm64-smmuv3`, suite `access`; not booted" in md


def test_summary_of_the_real_failing_run(golden):
    run = _golden_run(golden, "results-x86_64-vtd-full-fail.json")
    base = load_baseline(BASELINES, run.profile, run.suite)
    md = render(run, compare(run, base))
    assert f"**Gate: FAIL** against `{BASELINES / 'x86_64-vtd-full.toml'}`: 4 regression(s)." in md
    for variant in ("no_domain", "mock_domain", "two_mock_domain", "mock_domain_limit"):
        name = f"iommufd_ioas.{variant}.area_auto_iova"
        assert f"- `{name}`: pass -> fail (new failure)" in md
        assert re.search(rf"`{name}` \(fail, 0\.\d\d s\)\n\n```text\niommufd.c:739:area_auto_iova:Expected 0", md)
    assert "selftests/iommu: build against the 6.12.y uapi" in md


def _untrusted_tokens(md: str):
    """Every token markdown would render, code and fences excepted."""
    parser = MarkdownIt("commonmark").enable(["table", "strikethrough"]).disable("text_join")
    for tok in parser.parse(md):
        yield tok
        yield from tok.children or []


def test_guest_text_cannot_escape_into_the_comment():
    evil = "x` <img src=x onerror=alert(1)> [click](https://evil.example) @maintainer ~~gone~~ ``` | a |"
    run = _run(TestRecord(f"fix.var.t{evil}", "fail", log=f"# Expected {evil}\n```\n# ````", reason=evil,
                          binary="iommufd"))
    run.patches[0]["subject"] = evil
    run.kernel["splats"] = [{"kind": evil, "title": evil, "signature": evil, "test": evil}]
    md = render(run, compare(run, from_run(_run(_pass("fix.var.t")), "prev")))
    tokens = list(_untrusted_tokens(md))
    assert not {t.type for t in tokens} & {"html_inline", "html_block", "image", "link_open", "s_open", "em_open"}
    # outside code the payload is plain text, its "@" escaped so that it mentions nobody
    assert any(t.type == "text" and "maintainer" in t.content for t in tokens)
    assert not [t.content for t in tokens if t.type == "text" and "@maintainer" in t.content]
    assert any(t.type == "text_special" and t.content == "@" for t in tokens)
    assert code("a`b") == "``a`b``" and code("`a") == "`` `a ``" and block(["```"]).startswith("````text\n")


# -- kcidb.json ------------------------------------------------------------------------


def test_schema_version_is_the_latest_kcidb_io_ships():
    if kcidb_io is None:
        pytest.skip("kcidb-io is not installed (pip install kcidb-io)")
    latest = kcidb_io.schema.LATEST
    assert kcidb.SCHEMA_VERSION == (latest.major, latest.minor)


@needs_kcidb
@pytest.mark.parametrize("name", ["results-x86_64-vtd-full-pass.json", "results-x86_64-vtd-full-fail.json",
                                  "results-arm64-smmuv3-access-build-error.json"])
def test_real_runs_are_valid_kcidb(golden, name):
    run = _golden_run(golden, name)
    for url in (None, "https://ci.example.org/jobs/1/artifacts/"):
        data = kcidb.to_kcidb(run, artifacts_url=url)
        kcidb.validate(data)
        assert json.loads(json.dumps(data)) == data
    assert len(data["tests"]) == len(run.tests) + (1 if run.guest else 0)


def test_status_mapping_ids_and_paths():
    tests = [TestRecord(f"fx.v.{s}", s, 1.5, log=f"# {s} log", reason=f"why {s}" if s != "pass" else "",
                        binary="iommufd") for s in ("pass", "fail", "skip", "timeout", "crash", "notrun")]
    run = _run(*tests)
    data = kcidb.to_kcidb(run)
    rid = "20261124-022814-x86_64-vtd-access-69f1"
    by_name = {t.get("comment"): t for t in data["tests"]}
    assert {n: t["status"] for n, t in by_name.items() if n} == {
        "fx.v.pass": "PASS", "fx.v.fail": "FAIL", "fx.v.skip": "SKIP", "fx.v.timeout": "ERROR",
        "fx.v.crash": "FAIL", "fx.v.notrun": "MISS"}
    crash = by_name["fx.v.crash"]
    assert crash["misc"]["harness_status"] == "crash" and crash["log_excerpt"] == "# harness: why crash\n# crash log"
    assert "log_excerpt" not in by_name["fx.v.pass"]
    assert crash["id"] == f"iommufd_harness:{rid}/iommufd/fx.v.crash"
    assert crash["path"] == "kselftest.iommu.iommufd.fx.v.crash" and crash["duration"] == 1.5
    assert crash["build_id"] == f"iommufd_harness:build-{'ab' * 20}" == data["builds"][0]["id"]
    boot = data["tests"][0]
    assert (boot["path"], boot["status"], boot["duration"]) == ("boot", "PASS", 9.0)
    build, checkout = data["builds"][0], data["checkouts"][0]
    assert build["checkout_id"] == checkout["id"] and checkout["id"].startswith("iommufd_harness:checkout-")
    assert (build["status"], build["architecture"], build["compiler"]) == ("PASS", "x86_64", "gcc (ccache)")
    assert checkout["valid"] is True
    want = hashlib.sha256(("11" * 32 + "\n" + "22" * 32 + "\n").encode()).hexdigest()
    assert checkout["patchset_hash"] == want
    for obj in (*data["checkouts"], *data["builds"], *data["tests"]):
        assert obj["origin"] == "iommufd_harness" and obj["id"].startswith("iommufd_harness:")
    assert kcidb.kcidb_path("iommufd", "fix.var-1.we ird/name") == "kselftest.iommu.iommufd.fix.var-1.we_ird_name"
    with pytest.raises(ValueError, match="origin"):
        kcidb.to_kcidb(run, origin="Not-Valid")
    if kcidb_io is not None:
        kcidb.validate(data)


def test_same_sources_are_the_same_checkout_and_build_ids_follow_the_kernel():
    a, b = _run(_pass("a.b")), _run(_pass("a.b"))
    b.results_dir, b.started = "/r/another-run", "2026-11-25T00:00:00+00:00"
    da, db = kcidb.to_kcidb(a), kcidb.to_kcidb(b)
    assert da["checkouts"][0]["id"] == db["checkouts"][0]["id"] and da["builds"][0]["id"] == db["builds"][0]["id"]
    assert da["tests"][1]["id"] != db["tests"][1]["id"]
    b.patches = b.patches[:1]
    assert kcidb.to_kcidb(b)["checkouts"][0]["id"] != da["checkouts"][0]["id"]
    b.patches = []
    assert kcidb.to_kcidb(b)["checkouts"][0]["patchset_hash"] == ""
    b.patches = [{"name": "x.patch", "subject": "x"}]  # hash unknown: claim none
    assert "patchset_hash" not in kcidb.to_kcidb(b)["checkouts"][0]


def test_failed_stages_show_in_kcidb():
    run = _run(errors=["error [patches]: 0002-x.patch does not apply: hunk #1 FAILED at 10"])
    run.kernel = {"version": "6.12.117", "source": "linux-source-6.12"}
    run.guest, run.qemu = {}, {}
    run.stages = {"source": 1.0, "patches": 0.1}
    data = kcidb.to_kcidb(run)
    assert data["checkouts"][0]["valid"] is False and "hunk #1 FAILED" in data["checkouts"][0]["log_excerpt"]
    assert "status" not in data["builds"][0] and data["tests"] == []  # never built, never booted
    run.errors = ["the run was interrupted"]  # stopped while patching: whether the series applies is unknown
    assert "valid" not in kcidb.to_kcidb(run)["checkouts"][0]
    run.stages["config"] = 1.0
    assert kcidb.to_kcidb(run)["checkouts"][0]["valid"] is True
    run = _run(errors=["error [boot]: the guest did not bring up sshd within 300 s\n  log: console.log"])
    run.guest = {}
    run.kernel["splats"] = [{"kind": "panic", "title": "Kernel panic - not syncing", "signature": "", "test": ""}]
    data = kcidb.to_kcidb(run)
    boot = data["tests"][0]
    assert (boot["path"], boot["status"]) == ("boot", "FAIL") and "sshd within 300 s" in boot["log_excerpt"]
    assert boot["misc"]["splats"][0]["title"] == "Kernel panic - not syncing"
    assert data["builds"][0]["status"] == "PASS"
    if kcidb_io is not None:
        kcidb.validate(data)


def test_flaky_and_splats_reach_test_misc():
    flaky = mark_flaky(TestRecord("a.b.c", "fail", log="# Expected 1", binary="iommufd"),
                       [TestRecord("a.b.c", "pass", binary="iommufd")])
    run = _run(flaky)
    run.kernel["splats"] = [{"kind": "WARNING", "title": "WARNING: at x", "signature": "s", "test": "a.b.c"}]
    t = kcidb.to_kcidb(run)["tests"][1]
    assert t["status"] == "PASS" and t["misc"]["flaky"] is True and "Expected 1" in t["log_excerpt"]
    assert t["misc"]["splats"] == [{"kind": "WARNING", "title": "WARNING: at x", "signature": "s"}]


@needs_kcidb
def test_validate_rejects_bad_data_with_a_clear_message():
    data = kcidb.to_kcidb(_run(_pass("a.b")))
    bad = copy.deepcopy(data)
    bad["tests"][1]["status"] = "BROKEN"
    with pytest.raises(kcidb.KcidbError, match=r"not valid KCIDB v5\.3 data at tests/1/status: 'BROKEN' is not one of"):
        kcidb.validate(bad)
    bad = copy.deepcopy(data)
    bad["tests"][1]["build_id"] = "iommufd_harness:build-elsewhere"
    with pytest.raises(kcidb.KcidbError, match="names build iommufd_harness:build-elsewhere, which is not in"):
        kcidb.validate(bad)
    bad = copy.deepcopy(data)
    bad["builds"][0]["checkout_id"] = "iommufd_harness:nope"
    with pytest.raises(kcidb.KcidbError, match="names checkout iommufd_harness:nope"):
        kcidb.validate(bad)
    bad = copy.deepcopy(data)
    bad["checkouts"][0]["origin"] = "Bad Origin"
    with pytest.raises(kcidb.KcidbError, match="checkouts/0/origin"):
        kcidb.validate(bad)


def test_validate_without_kcidb_io_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "kcidb_io", None)
    monkeypatch.setitem(sys.modules, "kcidb_io.schema", None)
    with pytest.raises(ToolMissing, match="kcidb-io is not installed") as e:
        kcidb.validate({"version": {"major": 5}})
    assert e.value.hint == "pip install kcidb-io"


# -- rerender ------------------------------------------------------------------------------


def test_rerender_writes_every_report(tmp_path, golden):
    d = tmp_path / "20261124-023635-x86_64-vtd-full-c562"
    d.mkdir()
    shutil.copy(golden / "results-x86_64-vtd-full-fail.json", d / "results.json")
    comparison, md = rerender(d, BASELINES)
    assert comparison is not None and comparison.gate_verdict("fail") == "fail" and len(comparison.regressions) == 4
    assert (d / "summary.md").read_text() == md and md.startswith("### iommufd-harness: FAIL\n")
    data = json.loads((d / "kcidb.json").read_text())
    assert len(data["tests"]) == 191
    if kcidb_io is not None:
        kcidb.validate(data)
    cmp = json.loads((d / "comparison.json").read_text())
    assert cmp["regressed"] is True and len(cmp["regressions"]) == 4 and cmp["expected_count"] == 190
    suite = ET.parse(d / "junit.xml").getroot()
    assert suite.get("tests") == "190" and suite.get("failures") == "4"
    # without a baseline: no comparison, no comparison.json from this call
    (d / "comparison.json").unlink()
    comparison, md = rerender(d, None)
    assert comparison is None and "no baseline given" in md and not (d / "comparison.json").exists()


def test_rerender_bad_input(tmp_path, golden):
    with pytest.raises(InputError, match="does not exist"):
        rerender(tmp_path, None)
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a readable results.json"):
        rerender(tmp_path, None)
    shutil.copy(golden / "results-x86_64-vtd-full-pass.json", tmp_path / "results.json")
    (tmp_path / "baselines").mkdir()
    with pytest.raises(InputError, match="holds neither results.json nor x86_64-vtd-full.toml"):
        rerender(tmp_path, tmp_path / "baselines")
    assert not (tmp_path / "summary.md").exists()  # nothing half-written on bad input


def test_no_expectations_for_this_profile_is_a_note_not_an_error(tmp_path, golden):
    """The README's board command gates with selftests/baselines/, which has
    no expectations for board-arm64: the verdict is the tests', and every
    report is still written."""
    d = tmp_path / "board"
    d.mkdir()
    data = json.loads((golden / "results-x86_64-vtd-full-pass.json").read_text())
    data["profile"] = "board-arm64"
    (d / "results.json").write_text(json.dumps(data))
    warnings = []
    comparison, md = rerender(d, BASELINES, warn=warnings.append)
    assert comparison is None
    assert warnings == [f"{BASELINES} has no expectations for profile board-arm64, suite full "
                        "(board-arm64-full.toml): the verdict is the tests' own"]
    assert md.startswith("### iommufd-harness: PASS\n") and "Note:" in md and "board-arm64-full.toml" in md
    assert (d / "summary.md").is_file() and (d / "kcidb.json").is_file() and (d / "junit.xml").is_file()
    assert not (d / "comparison.json").exists()


def test_a_kcidb_problem_never_costs_the_verdict_or_the_other_reports(tmp_path, golden, monkeypatch):
    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(golden / "results-x86_64-vtd-full-fail.json", d / "results.json")
    (d / "kcidb.json").write_text("{}")  # from an earlier rendering

    def broken(data):
        raise kcidb.KcidbError("not valid KCIDB v5.3 data at tests/0/path: too long")

    monkeypatch.setattr(kcidb, "validate", broken)
    warnings = []
    comparison, md = rerender(d, BASELINES, warn=warnings.append)
    assert comparison is not None and comparison.gate_verdict("fail") == "fail"
    assert warnings == ["kcidb.json not written: not valid KCIDB v5.3 data at tests/0/path: too long"]
    assert "kcidb.json not written" in (d / "summary.md").read_text()
    assert (d / "comparison.json").is_file() and (d / "junit.xml").is_file()
    assert not (d / "kcidb.json").exists()


def test_a_kernel_report_outside_any_test_shows_in_every_report(tmp_path):
    """kernel.boot (and the other phases) is a failed record of its own: it
    fails the verdict and the gate, and is a test case in JUnit and KCIDB."""
    from harness.reports.junit import junit_xml

    run = RunRecord(suite="access", profile="x86_64-vtd", tests=[
        TestRecord("iommufd_ioas.no_domain.access_rw", "pass", 0.2, "", "", "iommufd"),
        TestRecord("kernel.boot", "fail", 0.0, "--- kernel warning: WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2 ---\n...",
                   "kernel warning boot: WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2", "kernel")],
        kernel={"splats": [{"test": "kernel.boot", "kind": "warning", "title": "WARNING: CPU: 0 PID: 1 at x.c:1",
                            "signature": "WARNING: CPU: N PID: N at x.c:1", "fatal": False}]})
    assert run.decide() == "fail"
    case = [c for c in ET.fromstring(junit_xml(run).split("\n", 1)[1]).iter("testcase") if c.get("name") == "boot"]
    assert case[0].get("classname") == "kernel" and case[0].find("failure") is not None
    data = kcidb.to_kcidb(run)
    [boot] = [t for t in data["tests"] if t["path"].endswith(".boot")]
    assert boot["path"] == "kselftest.iommu.kernel.boot" and boot["status"] == "FAIL"
    md = render(run, None)
    assert "**warning**: `WARNING: CPU: 0 PID: 1 at x.c:1` boot (`kernel.boot`)" in md
    assert "iommufd-harness run --profile x86_64-vtd --suite access\n" in md  # the suite reproduces it
    base = from_run(RunRecord(suite="access", profile="x86_64-vtd", tests=run.tests[:1], verdict="pass"), "before")
    cmp = compare(run, base)
    assert cmp.gate_verdict("fail") == "fail" and [c.name for c in cmp.regressions] == ["kernel.boot"]


def test_a_failure_by_a_kernel_report_shows_what_the_report_says():
    """A lockdep report's head names both locks and where the other order was
    taken: that is what a reviewer needs in summary.md (log from a real run)."""
    from harness.parse.splats import scan

    text = (Path(__file__).resolve().parents[1] / "golden/console/x86_64-lock-inversion.log").read_bytes().decode()
    [s] = scan(text)
    t = TestRecord("iommufd_ioas.no_domain.access_rw", "fail", 5.5,
                   log=f"ok 1 iommufd_ioas.no_domain.access_rw\n--- kernel {s.kind}: {s.title} ---\n{s.text}",
                   reason=f"kernel {s.kind} during the test: {s.title}")
    lines = failure_lines(t)
    assert lines[:2] == [f"harness: {t.reason}", "WARNING: possible circular locking dependency detected"]
    assert re.match(r"iommufd/\d+ is trying to acquire lock:", lines[2])
    assert "(&access->ioas_lock)" in lines[3] and lines[4] == "but task is already holding lock:"
    assert "(&iopt->iova_rwsem)" in lines[5]
    assert len(lines) == 1 + 10 and not any(set(ln) <= set("=-") or "Not tainted" in ln for ln in lines)


def test_a_patch_the_tree_already_had_says_so_in_the_summary():
    run = RunRecord(verdict="pass", suite="access", profile="x86_64-vtd", tests=[_pass("a.b.c")],
                    patches=[{"name": "0002-fix.patch", "subject": "iommufd: fix", "sha256": "ab" * 32,
                              "status": "already in tree"},
                             {"name": "0003-new.patch", "subject": "new", "sha256": "cd" * 32, "status": "applied"}])
    text = render(run, None)
    assert "`0002-fix.patch` iommufd: fix (sha256 `abababababab`) - already in the tree, skipped" in text
    assert "`0003-new.patch` new (sha256 `cdcdcdcdcdcd`)\n" in text
