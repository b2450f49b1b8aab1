"""The pipeline's build side on the fake kernel tree (milliseconds)."""

import difflib

from harness.pipeline import Options, Pipeline, new_record
from harness.ui import Ui
from harness.workdir import WorkDir


def _patch(tmp_path, tree, name, path, new_line):
    """A patch that appends ``new_line`` to ``path``, as diff -u writes it."""
    old = (tree / path).read_text().splitlines(keepends=True)
    diff = difflib.unified_diff(old, old + [new_line + "\n"], f"a/{path}", f"b/{path}")
    p = tmp_path / f"{name}.patch"
    p.write_text(f"Subject: [PATCH] {name}\n\n" + "".join(diff))
    return p


def _configured(fake_kernel, tmp_path, *patches):
    opts = Options.of(work=tmp_path / "w", kernel_src=fake_kernel, default_patches=False, patches=list(patches))
    WorkDir(opts.work).prepare()
    pipe = Pipeline(opts, Ui(quiet=True), new_record(opts), tmp_path / "logs")
    return pipe.prepare(until="config").config.reconfigured


def test_a_patch_that_changes_kconfig_reconfigures(fake_kernel, tmp_path):
    kconfig = _patch(tmp_path, fake_kernel, "kconfig", "Kconfig", "# a new symbol would be here")
    code = _patch(tmp_path, fake_kernel, "code", "drivers/iommu/iommufd/main.c", "/* more */")
    assert _configured(fake_kernel, tmp_path)
    assert not _configured(fake_kernel, tmp_path)  # nothing changed
    assert not _configured(fake_kernel, tmp_path, code)  # code only: the .config stands
    assert _configured(fake_kernel, tmp_path, kconfig)  # Kconfig changed: configure and check again
    assert not _configured(fake_kernel, tmp_path, kconfig)
    assert _configured(fake_kernel, tmp_path)  # the patch is gone, and with it its Kconfig change


def test_what_is_loaded_while_the_target_boots_exists():
    """The background import swallows errors (a module that fails fails again
    where it is used), so a misspelt name would silently load nothing."""
    import importlib

    from harness import pipeline

    for name in pipeline.AFTER_BOOT:
        importlib.import_module(name)


def test_the_terminal_prints_kernel_text_as_it_is(capsys):
    """No emoji codes: ':bug:' in a test's reason stays ':bug:'."""
    Ui().out.print("iommufd.c:bug: oops :smile:")
    assert capsys.readouterr().out.strip() == "iommufd.c:bug: oops :smile:"
