from harness.parse.tap import TapParser, parse

SAMPLE = """TAP version 13
1..4
# Starting 4 tests from 2 test cases.
#  RUN           iommufd_ioas.no_domain.access_rw ...
#            OK  iommufd_ioas.no_domain.access_rw
ok 1 iommufd_ioas.no_domain.access_rw
#  RUN           iommufd_ioas.mock_domain.access_pin ...
# iommufd.c:1520:access_pin:Expected 0 (0) == _test_cmd_mock_domain(self->fd, ioas_id, &stdev_id, &hwpt_id, NULL) (22)
# access_pin: Test terminated by assertion
#          FAIL  iommufd_ioas.mock_domain.access_pin
not ok 2 iommufd_ioas.mock_domain.access_pin
#  RUN           iommufd_dirty_tracking.domain_dirty128k.set_dirty_tracking ...
#      SKIP      hugepages not available
#            OK  iommufd_dirty_tracking.domain_dirty128k.set_dirty_tracking
ok 3 iommufd_dirty_tracking.domain_dirty128k.set_dirty_tracking # SKIP hugepages not available
#  RUN           iommufd.simple_close ...
#            OK  iommufd.simple_close
ok 4 iommufd.simple_close # XFAIL known bug
# FAILED: 3 / 4 tests passed.
# Totals: pass:1 fail:1 xfail:1 xpass:0 skip:1 error:0
"""


def test_statuses_reasons_and_logs():
    p = parse(SAMPLE)
    got = {c.name: c.status for c in p.finished()}
    assert got == {
        "iommufd_ioas.no_domain.access_rw": "pass",
        "iommufd_ioas.mock_domain.access_pin": "fail",
        "iommufd_dirty_tracking.domain_dirty128k.set_dirty_tracking": "skip",
        "iommufd.simple_close": "pass",
    }
    fail = p.cases["iommufd_ioas.mock_domain.access_pin"]
    assert fail.number == 2
    assert any("Expected 0 (0)" in line for line in fail.log)
    assert p.cases["iommufd_dirty_tracking.domain_dirty128k.set_dirty_tracking"].reason == "hugepages not available"
    assert p.cases["iommufd.simple_close"].reason.startswith("xfail")
    assert p.plan == 4 and p.version == 13
    assert p.totals == {"pass": 1, "fail": 1, "xfail": 1, "xpass": 0, "skip": 1, "error": 0}
    assert p.consistency_errors() == []
    assert p.current is None


def test_streaming_knows_the_running_test():
    p = TapParser()
    kinds = []
    for line in SAMPLE.splitlines()[:8]:
        kinds += [(e.kind, e.name) for e in p.feed(line)]
    assert p.current == "iommufd_ioas.mock_domain.access_pin"
    assert ("start", "iommufd_ioas.no_domain.access_rw") in kinds
    assert ("result", "iommufd_ioas.no_domain.access_rw") in kinds


def test_truncated_output_is_inconsistent():
    text = "\n".join(SAMPLE.splitlines()[:9])  # cut inside test 2
    p = parse(text)
    assert p.current == "iommufd_ioas.mock_domain.access_pin"
    assert [c.name for c in p.finished()] == ["iommufd_ioas.no_domain.access_rw"]
    assert any("plan announced 4" in e for e in p.consistency_errors())


def test_totals_mismatch_is_reported():
    text = SAMPLE.replace("pass:1 fail:1", "pass:2 fail:0")
    errors = parse(text).consistency_errors()
    assert any("pass:2" in e for e in errors) and any("fail:0" in e for e in errors)


def test_console_noise_before_the_plan_is_kept_out_of_tests():
    p = parse("[    1.234] random: crng init done\nTAP version 13\n1..0\n")
    assert p.plan == 0 and p.finished() == []
    assert p.preamble == ["[    1.234] random: crng init done"]


def test_one_document_per_process_adds_up():
    one = ("TAP version 13\n1..1\n#  RUN           {n} ...\n#            OK  {n}\nok 1 {n}\n"
           "# PASSED: 1 / 1 tests passed.\n# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0\n")
    p = parse(one.format(n="a.b.c") + one.format(n="a.b.d") + one.format(n="a.b.e"))
    assert [c.name for c in p.finished()] == ["a.b.c", "a.b.d", "a.b.e"]
    assert p.plan == 3 and p.totals["pass"] == 3
    assert p.consistency_errors() == []
    cut = parse(one.format(n="a.b.c") + "TAP version 13\n1..1\n#  RUN           a.b.d ...\n")
    assert cut.current == "a.b.d" and any("announced 2" in e for e in cut.consistency_errors())


RUNNER = """TAP version 13
1..2
# timeout set to 45
# selftests: iommu: iommufd
# TAP version 13
# 1..2
# # Starting 2 tests from 1 test cases.
# #  RUN           iommufd.simple_close ...
# #            OK  iommufd.simple_close
# ok 1 iommufd.simple_close
# #  RUN           iommufd_ioas.no_domain.access_rw ...
# # iommufd.c:1090:access_rw:Expected 0 (0) == ioctl(...) (-1)
# #          FAIL  iommufd_ioas.no_domain.access_rw
# not ok 2 iommufd_ioas.no_domain.access_rw
# # FAILED: 1 / 2 tests passed.
# # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0
not ok 1 selftests: iommu: iommufd # exit=1
# timeout set to 45
# selftests: iommu: iommufd_fail_nth
# TAP version 13
# 1..7
# # Starting 7 tests from 1 test cases.
# #  RUN           basic_fail_nth.basic ...
#
not ok 2 selftests: iommu: iommufd_fail_nth # TIMEOUT 45 seconds
"""


def test_nested_ktap_from_the_kselftest_runner():
    from harness.parse.tap import parse_runner

    inner, outer = parse_runner(RUNNER)
    assert outer == {"iommufd": "fail", "iommufd_fail_nth": "fail"}
    got = {c.name: c.status for c in inner.finished()}
    assert got == {"iommufd.simple_close": "pass", "iommufd_ioas.no_domain.access_rw": "fail"}
    assert any("Expected 0 (0)" in line for line in inner.cases["iommufd_ioas.no_domain.access_rw"].log)
    # the timed-out binary left a test running and its plan unfulfilled
    assert inner.current == "basic_fail_nth.basic"
    assert any("announced 9" in e for e in inner.consistency_errors())
