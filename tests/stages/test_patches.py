import subprocess
from pathlib import Path

import pytest

from harness.errors import PatchError
from harness.stages import patches
from harness.stages import source

MAIN_C = "drivers/iommu/iommufd/main.c"
HDR = "drivers/iommu/iommufd/iommufd.h"


def _make_patch(tree: Path, rel: str, old: str, new: str, subject: str, tmp: Path, name: str) -> Path:
    """A format-patch style patch replacing ``old`` by ``new`` in ``rel``."""
    a, b = tmp / "a", tmp / "b"
    for d in (a, b):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
    text = (tree / rel).read_text()
    (a / rel).write_text(text)
    (b / rel).write_text(text.replace(old, new))
    diff = subprocess.run(["diff", "-u", f"a/{rel}", f"b/{rel}"], cwd=tmp, capture_output=True, text=True).stdout
    p = tmp / name
    p.write_text(f"From 0123456789abcdef Mon Sep 17 00:00:00 2001\nFrom: Dev <dev@example.org>\n"
                 f"Subject: [PATCH] {subject}\n\nBecause.\n---\n{diff}-- \n2.39.5\n")
    return p


@pytest.fixture
def trees(fake_kernel, tmp_path):
    origin = source.user_origin(fake_kernel)
    work = tmp_path / "copy"
    source.sync(origin, work)
    return origin, work


def test_quilt_series_applies_and_records(trees, tmp_path):
    origin, work = trees
    qdir = tmp_path / "series-dir"
    qdir.mkdir()
    _make_patch(origin.path, MAIN_C, "return 0;", "return 1;", "iommufd: return one", qdir, "0001-one.patch")
    (qdir / "series").write_text("# comment\n0001-one.patch\n")
    series = patches.load(qdir)
    assert [(p.name, p.subject) for p in series] == [("0001-one.patch", "iommufd: return one")]
    assert series[0].files == (MAIN_C,)
    res = patches.apply_series(origin.path, work, series, set(), tmp_path / "p.log")
    assert "return 1;" in (work / MAIN_C).read_text()
    assert res.changed == (MAIN_C,)
    # same series again, file protected by the sync: nothing to do
    prot = patches.protected_files(origin.path, work)
    assert prot == {MAIN_C}
    again = patches.apply_series(origin.path, work, series, prot, tmp_path / "p.log")
    assert again.changed == ()
    # the origin itself is never touched
    assert "return 0;" in (origin.path / MAIN_C).read_text()


def test_switching_series_reverts_the_old_one(trees, tmp_path):
    origin, work = trees
    one = patches.load(_make_patch(origin.path, MAIN_C, "return 0;", "return 1;", "one", tmp_path, "one.patch"))
    two = patches.load(_make_patch(origin.path, MAIN_C, "int main", "int  main", "two", tmp_path, "two.patch"))
    patches.apply_series(origin.path, work, one, set(), tmp_path / "p.log")
    patches.apply_series(origin.path, work, two, patches.protected_files(origin.path, work), tmp_path / "p.log")
    text = (work / MAIN_C).read_text()
    assert "return 0;" in text and "int  main" in text
    import os
    import time
    old = time.time() - 3600
    os.utime(origin.path / MAIN_C, (old, old))  # an origin file older than the last build
    build_time = time.time()
    patches.apply_series(origin.path, work, [], patches.protected_files(origin.path, work), tmp_path / "p.log")
    assert (work / MAIN_C).read_text() == (origin.path / MAIN_C).read_text()
    # restored files look newer than any build made before, or make would not rebuild them
    assert os.stat(work / MAIN_C).st_mtime >= build_time - 1
    # and the next sync leaves them alone: nothing changed, nothing to rebuild
    prot = patches.protected_files(origin.path, work)
    assert MAIN_C in prot
    assert source.sync(origin, work, frozenset(prot)) == ()
    assert os.stat(work / MAIN_C).st_mtime >= build_time - 1


def test_a_series_that_changed_in_one_patch_leaves_the_others_files_as_built(trees, tmp_path):
    """A developer edits the last patch of a series: the files of the other
    patches come out with the same text, and keep their modification time,
    or make would rebuild everything that includes them (a header: most of
    iommufd)."""
    import os

    origin, work = trees
    hdr = _make_patch(origin.path, HDR, "UAPI 1", "UAPI 2", "header", tmp_path / "h", "0001-header.patch")
    first = _make_patch(origin.path, MAIN_C, "return 0;", "return 1;", "main", tmp_path / "m1", "0002-main.patch")
    second = _make_patch(origin.path, MAIN_C, "return 0;", "return 2;", "main", tmp_path / "m2", "0002-main.patch")
    patches.apply_series(origin.path, work, patches.load(hdr) + patches.load(first), set(), tmp_path / "p.log")
    built = 1_000_000_000  # as if make had run long after the series was applied
    os.utime(work / HDR, (built, built))
    res = patches.apply_series(origin.path, work, patches.load(hdr) + patches.load(second),
                               patches.protected_files(origin.path, work), tmp_path / "p.log")
    assert "return 2;" in (work / MAIN_C).read_text() and "UAPI 2" in (work / HDR).read_text()
    assert res.changed == (MAIN_C,)
    assert os.stat(work / HDR).st_mtime == built
    assert os.stat(work / MAIN_C).st_mtime > built


def test_patch_that_does_not_apply_names_patch_file_and_hunk_and_leaves_tree_clean(trees, tmp_path):
    origin, work = trees
    good = _make_patch(origin.path, MAIN_C, "return 0;", "return 1;", "good", tmp_path, "good.patch")
    (tmp_path / "x").mkdir()
    bad = _make_patch(origin.path, MAIN_C, "return 0;", "return 2;", "bad", tmp_path / "x", "bad.patch")
    series = patches.load(good) + patches.load(bad)  # bad conflicts with good
    with pytest.raises(PatchError) as e:
        patches.apply_series(origin.path, work, series, set(), tmp_path / "p.log")
    msg = e.value.message
    assert "bad.patch" in msg and "(bad)" in msg
    assert f"{MAIN_C}: hunk #1" in msg
    assert (work / MAIN_C).read_text() == (origin.path / MAIN_C).read_text()


def test_a_patch_the_tree_already_has_is_skipped_and_reported(trees, tmp_path):
    """A tree that carries a fix already (a newer kernel, a branch with it
    committed): the patch applies in reverse, so it is skipped, not an error,
    and the run says so, also when nothing had to be done the second time."""
    origin, work = trees
    fix = _make_patch(origin.path, MAIN_C, "return 0;", "return 1;", "iommufd: the fix", tmp_path, "fix.patch")
    subprocess.run(["patch", "-p1", "-s", "-d", str(origin.path), "-i", str(fix)], check=True)  # the tree has it
    (tmp_path / "x").mkdir()
    other = _make_patch(origin.path, MAIN_C, "int main", "int  main", "other", tmp_path / "x", "other.patch")
    source.sync(origin, work)
    series = patches.load(fix) + patches.load(other)
    res = patches.apply_series(origin.path, work, series, set(), tmp_path / "p.log")
    assert [p.name for p in res.applied] == ["fix.patch", "other.patch"]
    assert res.already == (0,)
    assert res.changed == (MAIN_C,)  # by the other patch only
    text = (work / MAIN_C).read_text()
    assert "return 1;" in text and "int  main" in text and "return 0;" not in text
    again = patches.apply_series(origin.path, work, series, patches.protected_files(origin.path, work),
                                 tmp_path / "p.log")
    assert again.changed == () and again.already == (0,)
    # the same patch twice in a series: the second one is the one the tree already has
    twice = patches.load(other) + patches.load(other)
    res = patches.apply_series(origin.path, work, twice, patches.protected_files(origin.path, work),
                               tmp_path / "p.log")
    assert res.already == (1,) and "int  main" in (work / MAIN_C).read_text()


def test_a_patch_that_applies_neither_way_names_the_switch_for_the_default_series(trees, tmp_path):
    origin, work = trees
    bad = _make_patch(origin.path, MAIN_C, "return 0;", "return 2;", "bad", tmp_path, "bad.patch")
    (origin.path / MAIN_C).write_text((origin.path / MAIN_C).read_text().replace("return 0;", "return 3;"))
    source.sync(origin, work)
    with pytest.raises(PatchError) as e:
        patches.apply_series(origin.path, work, patches.load(bad), set(), tmp_path / "p.log")
    assert "--no-default-patches" in e.value.hint


def test_mbox_with_cover_letter(trees, tmp_path):
    origin, _ = trees
    p1 = _make_patch(origin.path, MAIN_C, "return 0;", "return 1;", "iommufd: first", tmp_path, "1.patch")
    mbox = tmp_path / "series.mbox"
    cover = ("From 0000000000000000 Mon Sep 17 00:00:00 2001\nFrom: Dev <dev@example.org>\n"
             "Subject: [PATCH 0/1] cover\n\nJust words.\n\n")
    mbox.write_text(cover + p1.read_text().replace("[PATCH]", "[PATCH v2 1/1]"))
    series = patches.load(mbox)
    assert [p.subject for p in series] == ["iommufd: first"]
    assert series[0].files == (MAIN_C,)


def test_bad_inputs(tmp_path):
    with pytest.raises(PatchError, match="does not exist"):
        patches.load(tmp_path / "missing.patch")
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(PatchError, match="not a patch"):
        patches.load(tmp_path / "notes.txt")
    (tmp_path / "q").mkdir()
    with pytest.raises(PatchError, match="no 'series' file"):
        patches.load(tmp_path / "q")
    (tmp_path / "q" / "series").write_text("missing.patch\n")
    with pytest.raises(PatchError, match="series:1: patch missing.patch does not exist"):
        patches.load(tmp_path / "q")


def test_default_series_is_well_formed():
    series = patches.load(Path(__file__).resolve().parents[2] / "kernel-patches" / "default")
    assert series, "the default series must carry the selftest build fix"
    for p in series:
        assert p.subject and p.files
        assert "Signed-off-by:" in p.text


def _rules_series(origin: Path, tmp: Path, toml: str) -> list:
    qdir = tmp / "rules"
    qdir.mkdir()
    _make_patch(origin, MAIN_C, "return 0;", "return 1;", "one", qdir, "0001-one.patch")
    (tmp / "b").mkdir()
    _make_patch(origin, HDR, "UAPI 1", "UAPI 2", "two", tmp / "b", "0002-two.patch")
    (tmp / "b" / "0002-two.patch").rename(qdir / "0002-two.patch")
    (qdir / "series").write_text("0001-one.patch\n0002-two.patch\n")
    (qdir / "series.toml").write_text(toml)
    return patches.load(qdir)


def test_series_toml_leaves_out_a_patch_outside_its_kernel_range(trees, tmp_path):
    """The fake tree is 6.12.99-fake: a patch for <6.12 is not applied, the run
    says why, and a second run with the same decision does nothing."""
    origin, work = trees
    series = _rules_series(origin.path, tmp_path, '[[patch]]\nname = "0001-one.patch"\nkernels = ">=6.2, <6.12"\n'
                                                  'why = "fixed in 6.12"\n')
    res = patches.apply_series(origin.path, work, series, set(), tmp_path / "p.log", version="6.12.99-fake")
    assert res.not_for == {0: "for kernels >=6.2, <6.12, this is 6.12.99-fake (fixed in 6.12)"}
    assert [res.status(i) for i in range(2)] == ["not for this tree", "applied"]
    assert "return 0;" in (work / MAIN_C).read_text() and "UAPI 2" in (work / HDR).read_text()
    again = patches.apply_series(origin.path, work, series, patches.protected_files(origin.path, work),
                                 tmp_path / "p.log", version="6.12.99-fake")
    assert again.changed == () and again.not_for == res.not_for
    # on a tree in range both apply: the decision is part of what the working copy remembers
    res = patches.apply_series(origin.path, work, series, patches.protected_files(origin.path, work),
                               tmp_path / "p.log", version="6.11.3")
    assert res.not_for == {} and "return 1;" in (work / MAIN_C).read_text()


def test_series_toml_conditions_on_the_tree_and_a_series_range(trees, tmp_path):
    origin, work = trees
    toml = ('kernels = ">=6.2"\n[[patch]]\nname = "0002-two.patch"\n'
            f'when = [{{ file = "{MAIN_C}", contains = "return 0;" }}, {{ file = "Kconfig", lacks = "NO_SUCH" }}]\n'
            '[[patch]]\nname = "0001-one.patch"\nwhen = [{ file = "no/such/file.h", contains = "x" }]\n')
    series = _rules_series(origin.path, tmp_path, toml)
    res = patches.apply_series(origin.path, work, series, set(), tmp_path / "p.log", version="6.12.99")
    assert res.not_for == {0: "only when no/such/file.h contains 'x'"}
    assert "UAPI 2" in (work / HDR).read_text()
    # the whole series is for >=6.2: on 6.1 nothing applies
    res = patches.apply_series(origin.path, work, series, patches.protected_files(origin.path, work),
                               tmp_path / "p.log", version="6.1.192")
    assert set(res.not_for) == {0, 1} and (work / HDR).read_text() == (origin.path / HDR).read_text()


def test_a_patch_the_tree_has_is_already_in_tree_even_when_its_condition_fails(trees, tmp_path):
    """A tree with the fix committed no longer has what the condition looks
    for; it is reported as having the patch, not as out of range."""
    origin, work = trees
    series = _rules_series(origin.path, tmp_path, f'[[patch]]\nname = "0001-one.patch"\n'
                                                  f'when = [{{ file = "{MAIN_C}", contains = "return 0;" }}]\n')
    subprocess.run(["patch", "-p1", "-s", "-d", str(origin.path), "-i", str(tmp_path / "rules" / "0001-one.patch")],
                   check=True)
    source.sync(origin, work)
    res = patches.apply_series(origin.path, work, series, set(), tmp_path / "p.log", version="6.12.99")
    assert res.already == (0,) and res.not_for == {}


@pytest.mark.parametrize("toml, message", [
    ('kernels = "6.12"\n', "'6.12' is not a version clause"),
    ('[[patch]]\nname = "0009-nope.patch"\n', "0009-nope.patch is not in"),
    ('[[patch]]\nname = "0001-one.patch"\nwhen = [{ file = "x" }]\n', "condition 1 must be"),
    ('[[patch]]\nname = "0001-one.patch"\nkernel = ">=6.2"\n', "unknown key(s) kernel"),
    ('kernels = [">=6.2"\n', "fix the TOML syntax"),
])
def test_series_toml_mistakes_are_named(fake_kernel, tmp_path, toml, message):
    with pytest.raises(PatchError) as e:
        _rules_series(fake_kernel, tmp_path, toml)
    assert message in e.value.render()


def test_the_default_series_is_for_the_debian_612_tree_only_where_it_is_needed():
    """The project's own series.toml parses and its rules say what they mean."""
    from harness.pipeline import default_series

    series = patches.load(default_series())
    assert [bool(p.rules[1].kernels) for p in series] == [True, True, True]
    sel = series[0].rules[1]
    assert sel.kernels.contains("6.12.117") and not sel.kernels.contains("6.13-rc2")
    assert not series[1].rules[1].kernels.contains("6.6.60")
    # kselftest's alarm patch: any tree with iommufd selftests, while its harness arms the alarm as 6.12's does
    assert series[2].rules[1].kernels.contains("6.2") and series[2].rules[1].kernels.contains("6.18")
    assert [(c.text, c.present) for c in series[2].rules[1].when] == [("alarm(t->timeout);", True),
                                                                   ("KSFT_TEST_TIMEOUT", False)]


def test_series_toml_rules_of_an_mbox_entry_hold_for_each_of_its_patches(tmp_path):
    qdir = tmp_path / "q"
    qdir.mkdir()
    one = "Subject: [PATCH 1/2] one\n\n---\n--- a/f1\n+++ b/f1\n@@ -1 +1 @@\n-a\n+b\n"
    two = "Subject: [PATCH 2/2] two\n\n---\n--- a/f2\n+++ b/f2\n@@ -1 +1 @@\n-a\n+b\n"
    (qdir / "v2.mbox").write_text(f"From 1111 Mon Sep 17 00:00:00 2001\n{one}\n"
                                  f"From 2222 Mon Sep 17 00:00:00 2001\n{two}\n")
    (qdir / "series").write_text("v2.mbox\n")
    (qdir / "series.toml").write_text('[[patch]]\nname = "v2.mbox"\nkernels = "<6.12"\n')
    series = patches.load(qdir)
    assert [p.subject for p in series] == ["one", "two"]
    assert all(p.not_for(tmp_path, "6.12.117") == "for kernels <6.12, this is 6.12.117" for p in series)


def test_an_already_in_tree_status_follows_the_tree_it_was_decided_on(trees, tmp_path):
    origin, work = trees
    series = _rules_series(origin.path, tmp_path, '[[patch]]\nname = "0001-one.patch"\nkernels = "<6.12"\n')
    pristine = (origin.path / MAIN_C).read_text()
    (origin.path / MAIN_C).write_text(pristine.replace("return 0;", "return 1;"))  # the tree has the fix
    source.sync(origin, work)
    first = patches.apply_series(origin.path, work, series, set(), tmp_path / "p.log", version="6.12.99")
    assert first.status(0) == "already in tree"
    (origin.path / MAIN_C).write_text(pristine)  # another commit, without it
    source.sync(origin, work)
    again = patches.apply_series(origin.path, work, series, patches.protected_files(origin.path, work),
                                 tmp_path / "p.log", version="6.12.99")
    assert again.status(0) == "not for this tree"
