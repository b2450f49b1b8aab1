"""results.json as a contract: results.schema.json (shipped with the
package) says what a run writes, every run the tests make is checked
against it (tests/conftest.py), and the reader takes older schemas or
says which it needs."""

from __future__ import annotations

import json

import pytest

from harness.errors import HarnessError, InputError
from harness.reports import markdown
from harness.reports.results import SCHEMA, RunRecord, TestRecord, validate
from harness.reports.resultsdir import ResultsDir


def _record() -> RunRecord:
    run = RunRecord(suite="access", profile="x86_64-vtd", started="2026-12-05T00:00:00+00:00",
                    tests=[TestRecord("iommufd_ioas.no_domain.access_rw", "pass", 0.4, "ok 1", binary="iommufd")],
                    kernel={"version": "6.12.118", "splats": [], "debug": []}, errors=[])
    run.decide()
    return run


def test_a_record_the_harness_writes_holds_to_the_schema(tmp_path):
    ResultsDir(tmp_path).write(_record())  # checking is on in the tests: it would raise
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema"] == SCHEMA == 2 and validate(data) == []


@pytest.mark.parametrize("name", ["results-x86_64-vtd-full-pass.json", "results-x86_64-vtd-full-fail.json",
                                  "results-arm64-smmuv3-access-build-error.json"])
def test_the_golden_results_are_of_this_schema_and_hold_to_it(golden, name):
    # tests/golden/capture_results.py captures them from real runs; a field
    # the harness adds or changes makes them stale, and this says so
    data = json.loads((golden / name).read_text())
    assert data["schema"] == SCHEMA and validate(data) == [], validate(data)


def test_what_breaks_the_contract_is_named_by_its_path(tmp_path):
    data = _record().to_json()
    data["tests"][0]["status"] = "passed"
    del data["verdict"]
    data["qemu"]["deploy"] = {"method": "kexec"}  # a board's deploy belongs in board since schema 2
    problems = validate(data)
    assert any(p.startswith("(top): 'verdict' is a required property") for p in problems), problems
    assert any(p.startswith("tests/0/status: 'passed' is not one of") for p in problems), problems
    assert any(p.startswith("qemu: ") for p in problems), problems


def test_writing_a_record_that_breaks_it_keeps_the_file_and_fails_loudly(tmp_path):
    run = _record()
    run.stages = {"boot": "slow"}  # not a number
    with pytest.raises(HarnessError, match=r"stages/boot: 'slow' is not of type 'number'"):
        ResultsDir(tmp_path).write(run)
    assert json.loads((tmp_path / "results.json").read_text())["stages"] == {"boot": "slow"}


def test_a_schema_1_record_is_read_with_the_boards_data_moved_to_board(tmp_path):
    data = _record().to_json()
    data["schema"] = 1
    data.pop("board")
    data["qemu"] = {"deploy": {"method": "kexec", "wait_s": 9.5}, "return": {"how": "reboot", "ok": True}}
    (tmp_path / "results.json").write_text(json.dumps(data))
    run = markdown.load_run(tmp_path)
    assert run.qemu == {} and run.board == {"deploy": {"method": "kexec", "wait_s": 9.5},
                                            "return": {"how": "reboot", "ok": True}}
    assert validate(run.to_json()) == []


def test_a_newer_schema_is_refused_naming_the_ones_this_harness_reads(tmp_path):
    data = _record().to_json()
    data["schema"] = SCHEMA + 1
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=rf"schema is {SCHEMA + 1}; this iommufd-harness reads schemas 1 to {SCHEMA}"):
        markdown.load_run(tmp_path)
