"""make bench's own pieces: the one-file change it builds and the init of
the bare boot it measures the harness against."""

import subprocess

from harness import bench


def test_the_one_file_change_is_two_real_patches_that_apply(tmp_path):
    origin = tmp_path / "linux"
    f = origin / bench.CHANGED_FILE
    f.parent.mkdir(parents=True)
    f.write_text("// SPDX\n#include <linux/a.h>\n#include <linux/b.h>\n\nint x;\n")
    a, b, ta, tb = bench.variants(origin, tmp_path)
    assert ta != tb and "__used" in ta and f.read_text() not in (ta, tb)
    for patch, text in ((a, ta), (b, tb)):
        tree = tmp_path / f"tree-{patch.stem}"
        subprocess.run(["cp", "-r", str(origin), str(tree)], check=True)
        subprocess.run(["patch", "-p1", "-s", "-d", str(tree), "-i", str(patch)], check=True)
        assert (tree / bench.CHANGED_FILE).read_text() == text


def test_the_bare_boot_runs_exactly_the_selected_tests_and_powers_off():
    init = bench.floor_init({"iommufd": ["iommufd_ioas.no_domain.access_rw", "iommufd_ioas.mock_domain.access_pin"]},
                            64).decode()
    assert init.startswith("#!/bin/busybox sh\n")
    assert ("for t in iommufd_ioas.no_domain.access_rw iommufd_ioas.mock_domain.access_pin; do "
            "/usr/lib/iommufd-harness/selftests/iommufd -r \"$t\"") in init
    assert "echo 64 > /proc/sys/vm/nr_hugepages" in init
    assert init.index(bench.FLOOR_START) < init.index("-r \"$t\"") < init.index(bench.FLOOR_DONE)
    assert init.rstrip().endswith("poweroff -f")


def test_the_bare_boot_of_a_parallel_run_runs_the_same_lanes_at_once():
    names = ["a.x.t1", "a.x.t2", "a.x.t3"]
    init = bench.floor_init({"iommufd": names}, 64, lanes=2).decode()
    first, second = (init.index(f"for t in {lane}; do ") for lane in ("a.x.t1 a.x.t3", "a.x.t2"))
    assert init.count(") &") == 2 and first < init.index(") &") < second < init.index("\nwait\n")
    assert init.index("\nwait\n") < init.index("cat /tmp/tests.*.out") < init.index(bench.FLOOR_DONE)


def test_every_kernel_of_a_bench_run_gets_results_of_its_own(tmp_path, monkeypatch):
    """Two kernels measured in one run must not read each other's results."""
    seen = []

    def fake_timed(argv, env=None):
        results = __import__("pathlib").Path(argv[argv.index("--results") + 1])
        assert not results.exists(), "a results dir was used twice"
        seen.append(results.name)
        results.mkdir(parents=True)
        (results / "results.json").write_text(__import__("json").dumps({
            "verdict": "pass", "kernel": {"rebuilt": False}, "stages": {"boot": 1.0, "run": 1.0},
            "tests": [{"binary": "iommufd", "name": "a.b.c"}], "qemu": {"accel": "tcg"}}))
        return 1.0, 0

    monkeypatch.setattr(bench, "timed", fake_timed)
    monkeypatch.setattr(bench, "prepare", lambda *a: None)
    monkeypatch.setattr(bench, "bare_boot", lambda *a: (1.0, 1.0))
    for debug in ((), ("kasan", "lockdep")):
        bench.no_change_runs(tmp_path, "x86_64-vtd", debug, "access", 2, tmp_path)
    assert len(seen) == len(set(seen)) == 4
