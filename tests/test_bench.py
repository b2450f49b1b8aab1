"""make bench's own pieces: the one-file change it builds and the init of
the bare boot it measures the harness against."""

import subprocess

from harness.bench import builds, common, floor


def test_the_one_file_change_is_two_real_patches_that_apply(tmp_path):
    origin = tmp_path / "linux"
    f = origin / common.CHANGED_FILE
    f.parent.mkdir(parents=True)
    f.write_text("// SPDX\n#include <linux/a.h>\n#include <linux/b.h>\n\nint x;\n")
    a, b, ta, tb = builds.variants(origin, tmp_path)
    assert ta != tb and "__used" in ta and f.read_text() not in (ta, tb)
    for patch, text in ((a, ta), (b, tb)):
        tree = tmp_path / f"tree-{patch.stem}"
        subprocess.run(["cp", "-r", str(origin), str(tree)], check=True)
        subprocess.run(["patch", "-p1", "-s", "-d", str(tree), "-i", str(patch)], check=True)
        assert (tree / common.CHANGED_FILE).read_text() == text


def test_the_bare_boot_runs_exactly_the_selected_tests_and_powers_off():
    init = floor.floor_init({"iommufd": ["iommufd_ioas.no_domain.access_rw", "iommufd_ioas.mock_domain.access_pin"]},
                            64).decode()
    assert init.startswith("#!/bin/busybox sh\n")
    assert ("for t in iommufd_ioas.no_domain.access_rw iommufd_ioas.mock_domain.access_pin; do "
            "/usr/lib/iommufd-harness/selftests/iommufd -r \"$t\"") in init
    assert "echo 64 > /proc/sys/vm/nr_hugepages" in init
    assert init.index(floor.FLOOR_START) < init.index("-r \"$t\"") < init.index(floor.FLOOR_DONE)
    assert init.rstrip().endswith("poweroff -f")


def test_the_bare_boot_of_a_parallel_run_runs_the_same_lanes_at_once():
    names = ["a.x.t1", "a.x.t2", "a.x.t3"]
    init = floor.floor_init({"iommufd": names}, 64, lanes=2).decode()
    first, second = (init.index(f"for t in {lane}; do ") for lane in ("a.x.t1 a.x.t3", "a.x.t2"))
    assert init.count(") &") == 2 and first < init.index(") &") < second < init.index("\nwait\n")
    assert init.index("\nwait\n") < init.index("cat /tmp/tests.*.out") < init.index(floor.FLOOR_DONE)


def test_every_kernel_of_a_bench_run_gets_results_of_its_own(tmp_path):
    """Two kernels (or suites, lane counts, repetitions) measured in one run
    must not read each other's results: no_change_runs names each run's
    results dir with run_results."""
    dirs = [common.run_results(tmp_path, profile, debug, suite, parallel, i)
            for profile in ("x86_64-vtd", "arm64-smmuv3") for debug in ((), ("kasan", "lockdep"), ("kcsan",))
            for suite in ("access", "full") for parallel in (1, 2) for i in range(3)]
    assert len(set(dirs)) == len(dirs) == 2 * 3 * 2 * 2 * 3
    assert all(d.parent == tmp_path for d in dirs)
