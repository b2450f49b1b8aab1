"""Test lists remembered by the binary's content: a run whose binaries were
listed before asks the target nothing, a binary that changed is asked."""

import shutil

from fakes import LocalTarget

from harness.run.listings import TestLists
from harness.run.listings import list_tests


def test_a_binary_listed_before_is_not_asked_again(fake_selftests, tmp_path):
    binaries = {"iommufd": fake_selftests / "iommufd"}
    first = LocalTarget(fake_selftests)
    names = TestLists(tmp_path, binaries).get(first, "iommufd")
    assert names == list_tests(LocalTarget(fake_selftests), "iommufd")
    assert len(first.commands) == 1
    again = LocalTarget(fake_selftests)
    assert TestLists(tmp_path, binaries).get(again, "iommufd") == names  # the next run
    assert again.commands == []


def test_a_changed_binary_is_asked(fake_selftests, tmp_path):
    bindir = tmp_path / "bin"
    shutil.copytree(fake_selftests, bindir)
    binaries = {"iommufd": bindir / "iommufd"}
    TestLists(tmp_path / "cache", binaries).get(LocalTarget(bindir), "iommufd")
    with open(bindir / "iommufd", "ab") as f:
        f.write(b"\0")  # another build of it
    t = LocalTarget(bindir)
    assert TestLists(tmp_path / "cache", binaries).get(t, "iommufd") and len(t.commands) == 1


def test_an_unreadable_entry_is_asked_and_replaced(fake_selftests, tmp_path):
    binaries = {"iommufd": fake_selftests / "iommufd"}
    names = TestLists(tmp_path, binaries).get(LocalTarget(fake_selftests), "iommufd")
    for entry in (tmp_path / "test-lists").iterdir():
        entry.write_text('["iommufd_ioas.no_domain.access_pin", ')  # cut short
    t = LocalTarget(fake_selftests)
    assert TestLists(tmp_path, binaries).get(t, "iommufd") == names and len(t.commands) == 1
    t = LocalTarget(fake_selftests)
    assert TestLists(tmp_path, binaries).get(t, "iommufd") == names and t.commands == []


def test_a_binary_the_harness_did_not_build_is_asked_every_time(fake_selftests, tmp_path):
    for _ in range(2):
        t = LocalTarget(fake_selftests)
        assert TestLists(tmp_path, {}).get(t, "iommufd") and len(t.commands) == 1
