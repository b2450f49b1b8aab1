"""--compare-base: which base runs may be reused, and the refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.jobs import base_key
from harness.pipeline import Options
from harness.workdir import WorkDir

REPO = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.org"]


def test_the_base_is_keyed_by_the_tree_state_and_the_run_inputs(fake_kernel, tmp_path):
    subprocess.run(GIT + ["-C", str(fake_kernel), "init", "-q"], check=True)
    subprocess.run(GIT + ["-C", str(fake_kernel), "add", "-A"], check=True)
    subprocess.run(GIT + ["-C", str(fake_kernel), "commit", "-qm", "base"], check=True)
    work = WorkDir(tmp_path / "w").prepare()
    opts = Options.of(work=work.root, kernel_src=fake_kernel)
    key = base_key(opts, work)
    assert base_key(opts, work) == key
    # the series is not part of the base: another series, the same base
    assert base_key(opts.but(patches=[tmp_path / "x.patch"]), work) == key
    for change in ({"suite": "full"}, {"profile": "arm64-smmuv3"}, {"debug": ("lockdep",)},
                   {"default_patches": False}, {"kconfig_add": ["CONFIG_X=y"]}, {"tests": "iommufd_ioas.*"}):
        assert base_key(opts.but(**change), work) != key, change
    # an uncommitted change is another state of the tree; committing it is yet another
    main_c = fake_kernel / "drivers/iommu/iommufd/main.c"
    main_c.write_text(main_c.read_text() + "/* changed */\n")
    dirty = base_key(opts, work)
    assert dirty != key
    subprocess.run(GIT + ["-C", str(fake_kernel), "commit", "-qam", "changed"], check=True)
    assert base_key(opts, work) not in (key, dirty)
    # a commit by --rev: keyed by the commit
    assert base_key(opts.but(rev="HEAD~1"), work) == \
        base_key(opts.but(rev="HEAD~1"), work) != base_key(opts, work)


def test_a_plain_directory_is_keyed_by_what_its_working_copy_saw(fake_kernel, tmp_path):
    work = WorkDir(tmp_path / "w").prepare()
    opts = Options.of(work=work.root, kernel_src=fake_kernel)
    key = base_key(opts, work)
    assert base_key(opts, work) == key
    (fake_kernel / "Kconfig").write_text("# changed\n")
    assert base_key(opts, work) != key


@pytest.mark.parametrize("args, message", [
    (["--compare-base"], "--compare-base needs a series"),
    (["--compare-base", "--patches", "/etc/hostname", "--baseline", "/etc"], "--compare-base and --baseline"),
])
def test_compare_base_refusals(tmp_path, args, message):
    res = subprocess.run([sys.executable, "-m", "harness", "run", *args, "--work", str(tmp_path / "w")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
