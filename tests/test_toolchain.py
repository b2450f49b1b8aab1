"""ccache across checkouts: two work dirs with the same sources share
compiled objects, and the file names the kernel prints (__FILE__ in WARN and
BUG reports) stay the tree's own relative paths."""

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.toolchain import Toolchain
from harness.workdir import WorkDir

pytestmark = pytest.mark.skipif(shutil.which("ccache") is None or shutil.which("gcc") is None,
                                reason="needs ccache and gcc")


def _compile(root: Path, cache: Path, key: str = "linux", flags: tuple[str, ...] = ()) -> str:
    """Compile and run a file that prints __FILE__ the way Kbuild compiles
    (absolute source path, -fmacro-prefix-map of the absolute tree, from the
    build dir), with the harness's make variables and environment."""
    work = WorkDir(root / "work")
    tree, build_dir = work.tree_src(key), work.tree_build(key, "x86_64")
    (tree / "drivers/iommu").mkdir(parents=True)
    build_dir.mkdir(parents=True)
    src = tree / "drivers/iommu/where.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts(__FILE__); return 0; }\n')
    tc = Toolchain("x86_64")
    [kcflags] = [a.split("=", 1)[1] for a in tc.make_argv(tree, build_dir) if a.startswith("KCFLAGS=")]
    env = {"PATH": "/usr/bin:/bin", "CCACHE_DIR": str(cache), **tc.ccache_env(tree, build_dir)}
    subprocess.run(["ccache", "gcc", f"-fmacro-prefix-map={tree}/=", kcflags, *flags, "-c", str(src), "-o", "where.o"],
                   cwd=build_dir, env=env, check=True)
    subprocess.run(["gcc", "where.o", "-o", "where"], cwd=build_dir, check=True)
    return subprocess.run([str(build_dir / "where")], capture_output=True, text=True, check=True).stdout.strip()


def test_a_second_checkout_hits_the_cache_and_file_names_stay_right(tmp_path):
    cache = tmp_path / "cache"
    assert _compile(tmp_path / "one", cache) == "drivers/iommu/where.c"
    assert _compile(tmp_path / "two", cache) == "drivers/iommu/where.c"
    stats = subprocess.run(["ccache", "--print-stats"], env={"CCACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, check=True).stdout
    counters = dict(line.split("\t") for line in stats.splitlines() if "\t" in line)
    assert int(counters["direct_cache_hit"]) == 1 and int(counters["cache_miss"]) == 1


def test_a_debug_kernel_s_objects_with_line_tables_are_shared_between_checkouts_too(tmp_path):
    """-g puts the compile directory into the object; ccache would hash it
    (and miss in every other checkout, e.g. CI's fresh clone) unless told not to."""
    cache = tmp_path / "cache"
    for checkout in ("one", "two"):
        assert _compile(tmp_path / checkout, cache, flags=("-g", "-gdwarf-5")) == "drivers/iommu/where.c"
    stats = subprocess.run(["ccache", "--print-stats"], env={"CCACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, check=True).stdout
    counters = dict(line.split("\t") for line in stats.splitlines() if "\t" in line)
    assert int(counters["direct_cache_hit"]) == 1 and int(counters["cache_miss"]) == 1


def test_another_tree_with_the_same_sources_hits_the_cache(tmp_path):
    """A git checkout of the same sources (another tree key in the same work
    dir) compiles nothing again."""
    cache = tmp_path / "cache"
    assert _compile(tmp_path, cache, "debian-6.12") == "drivers/iommu/where.c"
    assert _compile(tmp_path, cache, "linux-0123abcd") == "drivers/iommu/where.c"
    stats = subprocess.run(["ccache", "--print-stats"], env={"CCACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, check=True).stdout
    counters = dict(line.split("\t") for line in stats.splitlines() if "\t" in line)
    assert int(counters["direct_cache_hit"]) == 1 and int(counters["cache_miss"]) == 1


def test_without_ccache_nothing_changes_the_make_command_line(tmp_path):
    tc = Toolchain("x86_64", use_ccache=False)
    argv = tc.make_argv(tmp_path / "src", tmp_path / "build", jobs=True)
    assert not any(a.startswith(("KCFLAGS=", "CC=")) for a in argv)
    assert tc.ccache_env(tmp_path / "src", tmp_path / "build") == {}
