import pytest

from harness import suites
from harness.errors import InputError
from harness.parse.testlist import parse_list


def test_parse_list_golden_6_12(golden):
    names = parse_list((golden / "iommufd-6.12-list.txt").read_text())
    assert len(names) == 190
    assert len(set(names)) == 190
    assert "iommufd.simple_close" in names
    assert "iommufd_ioas.mock_domain_limit.access_rw_unaligned" in names
    # no variant: fixture.test
    assert not any(n.startswith("global") for n in names)
    fail_nth = parse_list((golden / "iommufd_fail_nth-6.12-list.txt").read_text())
    assert fail_nth == ["basic_fail_nth.basic", "basic_fail_nth.map_domain", "basic_fail_nth.map_two_domains",
                        "basic_fail_nth.access_rw", "basic_fail_nth.access_pin", "basic_fail_nth.access_pin_domain",
                        "basic_fail_nth.device"]


def test_parse_list_handles_names_wider_than_the_columns():
    text = (f"{'# FIXTURE':<20} {'VARIANT':<25} TEST\n"
            f"{'a_fixture_name_longer_than_twenty':<20} {'a_variant_name_longer_than_25_chars':<25} t1\n"
            f"{'':<20} {'v2':<25} t2\n")
    assert parse_list(text) == [
        "a_fixture_name_longer_than_twenty.a_variant_name_longer_than_25_chars.t1",
        "a_fixture_name_longer_than_twenty.a_variant_name_longer_than_25_chars.t2",
        "a_fixture_name_longer_than_twenty.v2.t1", "a_fixture_name_longer_than_twenty.v2.t2"]


def test_tests_glob_narrows_and_a_glob_matching_nothing_is_an_error(golden):
    names = parse_list((golden / "iommufd-6.12-list.txt").read_text())
    suite = suites.load("access")
    sel = suites.select(suite, {"iommufd": names}, "iommufd_ioas.no_domain.*")
    assert sel.tests["iommufd"] == tuple(f"iommufd_ioas.no_domain.{t}" for t in (
        "access_domain_destory", "access_pin", "access_pin_unmap", "access_rw", "access_rw_unaligned"))
    with pytest.raises(InputError, match="matches no test"):
        suites.select(suite, {"iommufd": names}, "iommufd_ioas.*.no_such_test")
    # a glob outside the suite selects nothing either
    with pytest.raises(InputError):
        suites.select(suite, {"iommufd": names}, "iommufd.simple_close")


def test_unknown_suite_names_the_available_ones():
    with pytest.raises(InputError, match="unknown suite 'nope'") as e:
        suites.load("nope")
    assert "access" in e.value.hint and "full" in e.value.hint


def test_every_shipped_suite_loads():
    for name in suites.available():
        s = suites.load(name)
        assert s.runs and s.per_test_timeout > 0
