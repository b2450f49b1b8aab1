"""User errors end with one clear message and exit 2, never a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def harness(*args, work):
    return subprocess.run([sys.executable, "-m", "harness", *args, "--work", str(work)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["run", "--profile", "nope"], "unknown profile 'nope'"),
    (["run", "--suite", "nope"], "unknown suite 'nope'"),
    (["run", "--kernel-src", "/nonexistent/linux"], "kernel source /nonexistent/linux does not exist"),
    (["run", "--patches", "/nonexistent.patch"], "patch input /nonexistent.patch does not exist"),
    (["build", "--kernel-src", "/etc"], "/etc is not a Linux kernel tree"),
    (["build", "--kconfig-add", "IOMMUFD"], "not a Kconfig setting"),
    (["run", "--profiles", ","], "--profiles ',' names no profile"),
    (["run", "--profiles", "x86_64-vtd,nope"], "unknown profile 'nope'"),
])
def test_bad_input_exit_2_with_a_message(args, message, tmp_path):
    res = harness(*args, work=tmp_path / "w")
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_patch_that_does_not_apply(fake_kernel, tmp_path):
    bad = tmp_path / "bad.patch"
    bad.write_text("Subject: [PATCH] iommufd: nothing\n\n--- a/drivers/iommu/iommufd/main.c\n"
                   "+++ b/drivers/iommu/iommufd/main.c\n@@ -1,3 +1,3 @@\n-this line\n+that line\n context\n"
                   " more\n")
    res = harness("build", "--kernel-src", str(fake_kernel), "--no-default-patches", "--patches", str(bad),
                  work=tmp_path / "w")
    assert res.returncode == 2
    assert "bad.patch (iommufd: nothing) does not apply" in res.stderr
    assert "drivers/iommu/iommufd/main.c: hunk #1" in res.stderr
    assert "Traceback" not in res.stderr


def test_results_dir_holding_another_run_is_refused(tmp_path):
    res_dir = tmp_path / "res"
    res_dir.mkdir()
    (res_dir / "results.json").write_text("{}")
    res = harness("run", "--results", str(res_dir), work=tmp_path / "w")
    assert res.returncode == 2 and "already holds another run" in res.stderr


def test_listings():
    out = subprocess.run([sys.executable, "-m", "harness", "profiles"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "x86_64-vtd" in out.stdout
    out = subprocess.run([sys.executable, "-m", "harness", "suites"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "access" in out.stdout and "fail_nth" in out.stdout


def test_disk_full_is_a_clear_error(fake_kernel, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs permission to mount a small tmpfs")
    try:
        (fake_kernel / "big.bin").write_bytes(b"\0" * (1 << 20))  # does not fit
        res = harness("build", "--kernel-src", str(fake_kernel), "--no-default-patches", work=small / "w")
        assert res.returncode == 2
        assert "No space left on device" in res.stderr
        assert str(small / "w") in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        subprocess.run(["umount", str(small)])


def test_profiles_with_one_name_runs_that_profile(tmp_path):
    res = harness("run", "--profiles", "arm64-smmuv3", "--kernel-src", str(tmp_path / "no-tree"),
                  "--results", str(tmp_path / "res"), work=tmp_path / "w")
    assert res.returncode == 2 and "does not exist" in res.stderr
    data = json.loads((tmp_path / "res" / "results.json").read_text())
    assert data["profile"] == "arm64-smmuv3"


def test_repeated_tests_options_add_up(tmp_path):
    """--tests A --tests B selects both (it used to keep only the last)."""
    from harness.cli import build_parser, options

    args = build_parser().parse_args(["run", "--work", str(tmp_path), "--tests", "a.*", "--tests", "b.x,c.y"])
    assert options(args).testing.tests == "a.*,b.x,c.y"
    assert options(build_parser().parse_args(["run", "--work", str(tmp_path)])).testing.tests is None
