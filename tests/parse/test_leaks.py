"""kmemleak's list of unreferenced objects, on the list a real guest gave
(tests/golden/kmemleak/, captured by tests/golden/capture.py): the access
suite on the lockdep+KASAN+kmemleak kernel with the project's
leak-in-access-unpin.patch fixture, which leaks a pin record whenever an
access unpins a range."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from harness.parse import leaks
from harness.parse.splats import KINDS

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "kmemleak" / "x86_64-leak-in-access-unpin.txt"


def test_every_object_of_the_list_is_one_leak_in_the_order_printed():
    text = GOLDEN.read_text()
    found = leaks.parse(text)
    assert len(found) == text.count("unreferenced object 0x") > 1
    assert [f.address for f in found] == [line.split()[2] for line in text.splitlines()
                                          if line.startswith("unreferenced object ")]
    # each object's text is its own block, from its headline to its last frame
    assert all(f.text.startswith(f"unreferenced object {f.address} (size {f.size}):") for f in found)
    assert all(f.text.count("unreferenced object") == 1 for f in found)
    assert all(f.text.splitlines()[-1].strip().startswith(f.frames[-1] + "+0x") for f in found)


def test_a_leak_names_the_task_that_allocated_it_and_where():
    found = leaks.parse(GOLDEN.read_text())
    first = found[0]
    # run-tests names each test's processes after the binary and the test's place in the boot
    assert first.comm.startswith("iommufd#") and first.pid > 1
    assert first.frames[0].startswith("__kmalloc") and "iopt_area_add_access" in first.frames[1]
    # the first frame below the allocator is where: the fixture's leak, in every object
    assert {f.where for f in found} == {"iopt_area_add_access"}
    assert {f.frames[2] for f in found} == {"iommufd_access_pin_pages"}


def test_the_same_leak_in_another_test_has_the_same_signature():
    found = leaks.parse(GOLDEN.read_text())
    by_comm = Counter(f.comm for f in found)
    assert len(by_comm) > 1  # several tests leaked
    splats = [f.splat() for f in found]
    assert {s.signature for s in splats} == {"memory leak in iopt_area_add_access"}
    assert {s.kind for s in splats} == {"leak"} and "leak" in KINDS
    s = splats[0]
    assert s.title == f"memory leak in iopt_area_add_access: unreferenced object of {found[0].size} bytes " \
                      f"(comm {found[0].comm})"
    assert s.text == found[0].text and not s.fatal


def test_an_empty_list_is_no_leak():
    assert leaks.parse("") == []
