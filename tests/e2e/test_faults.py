"""Faults the harness must survive, on the real kernel in a real VM: every
one ends in a clear verdict and exit code, with the evidence kept and no QEMU
left behind."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from expected import listed_tests  # tests/e2e/expected.py

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("IOMMUFD_HARNESS_WORK", REPO / "work"))
FIXTURES = REPO / "tests" / "fixtures" / "kernel-patches"

pytestmark = pytest.mark.slow


def _argv(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "run", "--work", str(WORK), "--results", str(results), *extra]


def _run(results: Path, *extra: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    res = subprocess.run(_argv(results, *extra), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(res.stderr[-10000:])
    return res


def _no_qemu_left(results: Path) -> None:
    """QEMU's command line names the run's console log (console.log, and
    console.N.log after reboots): no such process may remain."""
    pattern = re.escape(str(results)) + r"/console(\.[0-9]+)?\.log"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        if not left.stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"QEMU processes left behind: {left.stdout}")


def _results(results: Path) -> dict:
    return json.loads((results / "results.json").read_text())


def _start(results: Path, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    """Start a run in the background and wait until its tests are running."""
    proc = subprocess.Popen(_argv(results, *extra), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 3000
    for line in proc.stdout:
        lines.append(line)
        if line.strip().startswith("running ") and " tests of suite " in line:
            return proc, lines
        assert time.monotonic() < deadline
    raise AssertionError("the run ended before its tests started:\n" + "".join(lines[-40:]))


def _finish(proc: subprocess.Popen, lines: list[str], timeout: float = 300) -> int:
    out, _ = proc.communicate(timeout=timeout)
    lines.append(out)
    sys.stderr.write("".join(lines)[-10000:])
    return proc.returncode


def _guest_ssh(results: Path) -> paramiko.SSHClient:
    vm_dir = WORK / "vm" / results.name
    line = (vm_dir / "known_hosts").read_text().split()
    port = int(line[0].split(":")[1])
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{port}", line[1],
                               paramiko.PKey.from_type_string(line[1], __import__("base64").b64decode(line[2])))
    client.connect("127.0.0.1", port, "root", key_filename=str(vm_dir / "id_ed25519"), timeout=30,
                   allow_agent=False, look_for_keys=False)
    return client


def test_kernel_panic_at_boot_is_an_error_with_the_console(tmp_path):
    results = tmp_path / "panic"
    res = _run(results, "--patches", str(FIXTURES / "panic-at-boot.patch"))
    assert res.returncode == 2
    data = _results(results)
    assert data["verdict"] == "error" and data["tests"] == []
    assert "the guest kernel panicked during boot" in data["errors"][0]
    assert "fault fixture: panic in iommufd_init" in data["errors"][0]  # the console excerpt
    assert "fault fixture: panic in iommufd_init" in (results / "console.log").read_text()
    assert data["stages"]["boot"] < 120, "a panic must be noticed within seconds, not at the boot timeout"
    assert "Traceback" not in res.stderr
    _no_qemu_left(results)


DEADLOCK = FIXTURES / "deadlock-in-access-rw.patch"
# the test that deadlocks, then one of another fixture's variant after it (it does not read one byte)
HUNG, NEXT = "iommufd_ioas.no_domain.access_rw", "iommufd_ioas.mock_domain.access_pin"


def test_a_deadlocked_test_is_a_timeout_with_the_stack_it_hangs_in(tmp_path):
    """A self-deadlock on the one-byte iommufd_access_rw path: the test
    sleeps in mutex_lock for ever, and SIGKILL cannot end it.  The default
    kernel has no hung-task detector and says nothing; the harness sees a
    task of the test that has not run for its window (5 s), asks the kernel
    for the blocked stacks, and records the test as a timeout that names
    where it hangs, within seconds (kselftest's own alarm would have called
    it a plain failure after 30 s, with no stack).  The next test runs in the
    same boot and passes.  The guest's kselftest alarm follows the harness's
    limit (KSFT_TEST_TIMEOUT, the project's kselftest_harness patch)."""
    results = tmp_path / "deadlock"
    proc = subprocess.Popen(_argv(results, "--patches", str(DEADLOCK), "--tests", f"{HUNG},{NEXT}", "--keep-vm"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.strip().startswith("ssh "):
                break
        else:
            raise AssertionError("the run ended before it held its VM:\n" + "".join(lines[-60:]))
        data = _results(results)
        assert data["verdict"] == "fail", data["errors"]
        assert [(t["name"], t["status"]) for t in data["tests"]] == [(HUNG, "timeout"), (NEXT, "pass")]
        hung = data["tests"][0]
        assert re.fullmatch(r"hung in iommufd_access_rw <- mutex_lock: no progress for 5 s: (iommufd#1:\d+) asleep "
                            r"in the kernel, not running; SIGKILL did not end \1 \(asleep in the kernel\): the "
                            r"tests after it ran in the same boot", hung["reason"]), hung["reason"]
        assert hung["duration_s"] < 20, "a hang costs two windows and a dump, not a limit"
        assert re.search(r"--- kernel hang: task iommufd#1:\d+ blocked \(state D\) ---\ntask:iommufd#1 +state:D",
                         hung["log"]) and re.search(r"\n __mutex_lock\S*\+0x", hung["log"])
        assert [(s["test"], s["kind"], s["signature"]) for s in data["kernel"]["splats"]] == [
            (HUNG, "hang", "hung in iommufd_access_rw <- mutex_lock")]  # the default kernel reports nothing itself
        [h] = data["kernel"]["hung"]
        assert (h["test"], h["where"], len(h["unkillable"])) == (HUNG, "hung in iommufd_access_rw <- mutex_lock", 1)
        assert data["kernel"]["limits"] == {"per_test_s": 30.0, "stall_s": 5.0}
        console = (results / "console.log").read_text()
        assert "sysrq: Show Blocked State" in console and "Test terminated by timeout" not in console
        # kselftest's own alarm: KSFT_TEST_TIMEOUT sets it (the run gives the guest its limit plus 10 s)
        # (into a file: the task that stays asleep keeps whatever it was given open)
        with _guest_ssh(results) as client:
            t0 = time.monotonic()
            _, out, _ = client.exec_command(f"cd /tmp && KSFT_TEST_TIMEOUT=2 /usr/lib/iommufd-harness/selftests/"
                                            f"iommufd -r {HUNG} >ksft.out 2>&1 </dev/null; echo exit $?; cat ksft.out",
                                            timeout=60)
            text = out.read().decode()
            elapsed = time.monotonic() - t0
        assert text.startswith("exit 1\n") and "# access_rw: Test terminated by timeout" in text, text
        assert 2 <= elapsed < 15, elapsed
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=120)
            lines.append(out)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        sys.stderr.write("".join(lines)[-10000:])
    _no_qemu_left(results)


def test_kernel_crash_during_a_test_is_attributed_to_it(tmp_path):
    results = tmp_path / "crash"
    res = _run(results, "--patches", str(FIXTURES / "crash-in-access-rw.patch"))
    data = _results(results)
    assert res.returncode == 1 and data["verdict"] == "fail"
    status = [(t["name"], t["status"]) for t in data["tests"]]
    assert status[:3] == [("iommufd_ioas.no_domain.access_domain_destory", "pass"),
                          ("iommufd_ioas.no_domain.access_pin", "pass"),
                          ("iommufd_ioas.no_domain.access_pin_unmap", "pass")]
    assert status[3] == ("iommufd_ioas.no_domain.access_rw", "crash")
    assert {s for _, s in status[4:]} == {"notrun"} and len(status) == len(listed_tests("access"))
    crash = data["tests"][3]
    assert "kernel BUG at drivers/iommu/iommufd/device.c" in crash["log"]
    assert any("the target died" in e for e in data["errors"])
    _no_qemu_left(results)


def test_continue_after_crash_reboots_and_runs_the_rest(tmp_path):
    """Every variant's access_rw crashes this kernel; with --continue-after-crash
    the VM is rebooted (at most 3 times) and the remaining tests still run."""
    results = tmp_path / "continue"
    res = _run(results, "--patches", str(FIXTURES / "crash-in-access-rw.patch"), "--continue-after-crash")
    data = _results(results)
    assert res.returncode == 1 and data["verdict"] == "fail"
    by_status: dict[str, list[str]] = {}
    for t in data["tests"]:
        by_status.setdefault(t["status"], []).append(t["name"])
    assert by_status["crash"] == [f"iommufd_ioas.{v}.access_rw"
                                  for v in ("no_domain", "mock_domain", "two_mock_domain", "mock_domain_limit")]
    assert len(by_status["pass"]) == 15  # ran on the rebooted guests
    assert "iommufd_ioas.two_mock_domain.access_rw_unaligned" in by_status["pass"]
    assert len(by_status["notrun"]) == 5  # after the 4th crash there is no 4th reboot
    assert data["guest"]["boots"] == 4
    for n in (1, 2, 3):
        assert "Run /init as init process" in (results / f"console.{n}.log").read_text()
    _no_qemu_left(results)


def test_guest_that_never_starts_sshd_hits_the_boot_timeout(tmp_path):
    results = tmp_path / "hang"
    res = _run(results, "--boot-timeout", "25", "--cmdline", "rdinit=/bin/busybox -- sleep 100000")
    assert res.returncode == 2
    data = _results(results)
    assert "did not answer on SSH within 25 s (sshd never started" in data["errors"][0]
    assert "Run /bin/busybox as init process" in (results / "console.log").read_text()
    _no_qemu_left(results)


def test_sysrq_crash_mid_run(tmp_path):
    results = tmp_path / "sysrq"
    proc, lines = _start(results, "--suite", "fail_nth")
    with _guest_ssh(results) as client:
        chan = client.get_transport().open_session()
        chan.exec_command("echo c > /proc/sysrq-trigger")
        time.sleep(2)
    code = _finish(proc, lines)
    data = _results(results)
    assert code == 1 and data["verdict"] == "fail"
    statuses = [t["status"] for t in data["tests"]]
    assert "crash" in statuses and statuses.count("crash") == 1
    after = statuses[statuses.index("crash") + 1:]
    assert set(after) <= {"notrun"} and len(statuses) == 7
    assert "sysrq" in (results / "console.log").read_text()
    _no_qemu_left(results)


def test_qemu_killed_mid_run(tmp_path):
    results = tmp_path / "killed"
    proc, lines = _start(results, "--suite", "fail_nth")
    pids = subprocess.run(["pgrep", "-f", str(results / "console.log")], capture_output=True, text=True).stdout.split()
    assert pids
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
    t0 = time.monotonic()
    code = _finish(proc, lines, timeout=120)
    assert time.monotonic() - t0 < 60, "QEMU's death must be noticed at once"
    data = _results(results)
    assert code == 1 and data["verdict"] == "fail"
    assert "crash" in [t["status"] for t in data["tests"]]
    assert any("QEMU exited" in t["reason"] for t in data["tests"] if t["status"] == "crash")
    _no_qemu_left(results)


def test_sigterm_tears_down_and_keeps_results(tmp_path):
    results = tmp_path / "term"
    proc, lines = _start(results, "--suite", "fail_nth")
    proc.send_signal(signal.SIGTERM)
    code = _finish(proc, lines, timeout=120)
    assert code == 130
    data = _results(results)
    assert "the run was interrupted" in data["errors"]
    assert data["verdict"] in ("error", "fail")
    assert len(data["tests"]) < 7
    _no_qemu_left(results)
