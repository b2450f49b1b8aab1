"""The CI gate on the real kernel: deliberately broken kernel patches must
turn it red, with exactly the affected tests named, and a kernel WARNING
must be caught even when userspace sees every test pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import rendered  # tests/browser.py
from expected import listed_tests  # tests/e2e/expected.py

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("IOMMUFD_HARNESS_WORK", REPO / "work"))
FIXTURES = REPO / "tests" / "fixtures" / "kernel-patches"
BASELINES = REPO / "selftests" / "baselines"
VARIANTS = ("no_domain", "mock_domain", "two_mock_domain", "mock_domain_limit")
USER_COPY = ("one_domain", "two_domains", "one_domain_hugepage", "two_domains_hugepage")

pytestmark = pytest.mark.slow


def _run(results: Path, *extra: str) -> tuple[int, dict, str]:
    argv = [sys.executable, "-m", "harness", "run", "--work", str(WORK), "--results", str(results),
            "--baseline", str(BASELINES), *extra]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=3600)
    sys.stderr.write(res.stderr[-10000:])
    return res.returncode, json.loads((results / "results.json").read_text()), res.stdout


def test_unbroken_kernel_passes_the_gate(tmp_path):
    started = time.time()
    code, data, out = _run(tmp_path / "ok")
    assert code == 0 and data["verdict"] == "pass"
    # the run's private SSH key went with its VM: none written since it started is left in the work dir
    keys = [k for k in WORK.rglob("id_ed25519*") if k.stat().st_mtime >= started - 1]
    assert not keys, keys
    cmp = json.loads((tmp_path / "ok" / "comparison.json").read_text())
    assert cmp["regressions"] == [] and cmp["disappeared"] == []
    assert "gate verdict" in out and "PASS" in out
    summary = (tmp_path / "ok" / "summary.md").read_text()
    assert "PASS" in summary.splitlines()[0]


def test_broken_pinning_fails_exactly_the_pinning_tests(tmp_path):
    code, data, out = _run(tmp_path / "pin", "--patches", str(FIXTURES / "pin-more-than-8-pages-fails.patch"))
    assert code == 1
    failed = {t["name"] for t in data["tests"] if t["status"] != "pass"}
    expected = {f"iommufd_ioas.{v}.{t}" for v in VARIANTS for t in ("access_pin", "access_pin_unmap")}
    expected |= {f"iommufd_mock_domain.{v}.user_copy" for v in USER_COPY}
    assert failed == expected
    cmp = json.loads((tmp_path / "pin" / "comparison.json").read_text())
    assert {c["name"] for c in cmp["regressions"]} == expected
    summary = (tmp_path / "pin" / "summary.md").read_text()
    assert "FAIL" in summary.splitlines()[0] and "iommufd_ioas.no_domain.access_pin" in summary
    kcidb = json.loads((tmp_path / "pin" / "kcidb.json").read_text())
    statuses = {t["path"].rsplit(".", 1)[-1] for t in kcidb["tests"] if t.get("status") == "FAIL"}
    assert {"access_pin", "access_pin_unmap", "user_copy"} <= statuses


def test_kernel_warning_fails_a_test_that_passed_in_userspace(tmp_path):
    code, data, _ = _run(tmp_path / "warn", "--patches", str(FIXTURES / "warn-in-access-rw.patch"))
    assert code == 1
    bad = [t for t in data["tests"] if t["status"] != "pass"]
    assert [t["name"] for t in bad] == ["iommufd_ioas.no_domain.access_rw"]
    warned = bad[0]
    assert warned["status"] == "fail"
    assert warned["reason"].startswith("kernel warning during the test: WARNING: CPU:")
    # the tree's own file name, also when ccache compiled it for another checkout
    assert " at drivers/iommu/iommufd/device.c:" in warned["reason"]
    assert "iommufd_access_rw" in warned["log"]
    # userspace itself reported the test as passing
    assert "#            OK  iommufd_ioas.no_domain.access_rw" in warned["log"]
    splats = data["kernel"]["splats"]
    assert [(s["test"], s["kind"]) for s in splats] == [("iommufd_ioas.no_domain.access_rw", "warning")]
    assert "WARNING" in (tmp_path / "warn" / "summary.md").read_text()
    # report.html in a browser: that test's result opens with the kernel's report in it
    dom = rendered(tmp_path / "warn" / "report.html", "#t=iommufd_ioas.no_domain.access_rw&c=0")
    assert dom.find("td", class_="r st-fail open")[0][2] == "fail \u26a0"
    detail = dom.find("div", id="detail")[0][2]
    assert "kernel reports during this test (1)" in detail and "warning: WARNING: CPU:" in detail
    assert "drivers/iommu/iommufd/device.c" in detail


def test_kernel_warning_at_boot_fails_the_verdict_attributed_to_boot(tmp_path):
    """Every test passes, but the kernel WARNed while booting: the run and the
    gate are red, and the report is kernel.boot's, in every report."""
    code, data, out = _run(tmp_path / "boot", "--patches", str(FIXTURES / "warn-at-boot.patch"))
    assert code == 1 and data["verdict"] == "fail"
    selftests = [t for t in data["tests"] if t["binary"] != "kernel"]
    assert len(selftests) == len(listed_tests("access")) and all(t["status"] == "pass" for t in selftests)
    [boot] = [t for t in data["tests"] if t["binary"] == "kernel"]
    assert boot["name"] == "kernel.boot" and boot["status"] == "fail"
    assert boot["reason"].startswith("kernel warning boot: WARNING: CPU:")
    assert "iommufd-harness fault fixture: warning in iommufd_init" in boot["log"]
    assert [(s["test"], s["kind"]) for s in data["kernel"]["splats"]] == [("kernel.boot", "warning")]
    cmp = json.loads((tmp_path / "boot" / "comparison.json").read_text())
    assert [r["name"] for r in cmp["regressions"]] == ["kernel.boot"]
    assert "kernel.boot" in (tmp_path / "boot" / "summary.md").read_text()
    kcidb = json.loads((tmp_path / "boot" / "kcidb.json").read_text())
    assert any(t["path"] == "kselftest.iommu.kernel.boot" and t["status"] == "FAIL" for t in kcidb["tests"])


def test_a_results_dir_moved_elsewhere_reproduces_its_failure_without_the_original_patch(tmp_path):
    """A CI artifact: the results dir of a patched run, copied to another
    path, the patch file it was run with deleted; 'repro' on the copy runs
    the copy of the patch it kept, and the same test fails the same way."""
    import hashlib
    import shutil

    mine = tmp_path / "series" / "warn.patch"
    mine.parent.mkdir()
    shutil.copy(FIXTURES / "warn-in-access-rw.patch", mine)
    code, data, _ = _run(tmp_path / "warn", "--patches", str(mine))
    assert code == 1
    moved = tmp_path / "artifact" / "warn"
    shutil.copytree(tmp_path / "warn", moved)
    shutil.rmtree(tmp_path / "warn")
    shutil.rmtree(mine.parent)
    # the .config the kernel was built with is kept too
    assert hashlib.sha256((moved / "kernel.config").read_bytes()).hexdigest() == data["kernel"]["config_sha256"]
    res = subprocess.run([sys.executable, "-m", "harness", "repro", str(moved), "--work", str(WORK), "--results",
                          str(tmp_path / "again")], cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 1, res.stderr[-3000:]
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert [t["name"] for t in again["tests"] if t["status"] != "pass"] == ["iommufd_ioas.no_domain.access_rw"]
    assert again["inputs"]["patches"] == [str(moved / "inputs" / "patches" / "0-warn.patch")]
    assert again["kernel"]["build_id"] == data["kernel"]["build_id"]
    assert [s["kind"] for s in again["kernel"]["splats"]] == ["warning"]
