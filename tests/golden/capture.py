"""Capture the golden console logs of tests/golden/console/ (and the
kmemleak reports of tests/golden/kmemleak/) from real runs.

Every log there is the serial console of a real guest, written by QEMU
(CRLF, printk timestamps, userspace output interleaved), booted by this
harness from a kernel built here: the project's own broken-kernel fixtures
(tests/fixtures/kernel-patches/) on the default and the debug kernels, and
the kernel's own crash-test module (LKDTM) for the reports no iommufd bug
of ours provokes (lockups, hung tasks, RCU stalls, refcount underflows).

    .venv/bin/python tests/golden/capture.py [--work DIR] [--arch x86_64|arm64] [NAME ...]

A kmemleak report is what the harness's leak scan read from
/sys/kernel/debug/kmemleak after the suite (the results dir's kmemleak.txt),
on the debug kernel with kmemleak.

Each capture checks that the report it is for is in the log before it
replaces the golden file, so a capture can never silently keep a log that
does not show what its tests rely on.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "console"
GOLDEN_KMEMLEAK = REPO / "tests" / "golden" / "kmemleak"
FIXTURES = REPO / "tests" / "fixtures" / "kernel-patches"
PROFILES = {"x86_64": "x86_64-vtd", "arm64": "arm64-smmuv3"}
MAX_BYTES = 1_000_000  # a golden log is a few hundred lines, not a flood
DEBUG = ("--debug", "lockdep,kasan")
LEAKS = ("--debug", "kasan,kmemleak,lockdep")  # the e2e tests' debug kernel (test_detectors.py)
# LKDTM (drivers/misc/lkdtm) on top of the debug kernel: one file, so an
# incremental build; its reports come quickly with short watchdog limits.
LKDTM = ("--kconfig-add", "CONFIG_LKDTM=y")
QUICK_WATCHDOGS = "watchdog_thresh=2 rcupdate.rcu_cpu_stall_timeout=5"


def fixture(name: str) -> tuple[str, str]:
    return ("--patches", str(FIXTURES / name))


@dataclass(frozen=True)
class Capture:
    name: str
    args: tuple[str, ...]  # for 'iommufd-harness run' (a suite) or 'boot' (guest commands)
    expect: tuple[str, ...]  # regexes the console must show
    commands: tuple[str, ...] = ()  # with commands: boot, run them over SSH, wait for expect
    tests: str | None = None  # --tests for a suite run
    arches: tuple[str, ...] = ("x86_64", "arm64")
    output: str = "console.log"  # the file of the run's results dir that is the golden one

    def golden(self, arch: str) -> Path:
        if self.output == "kmemleak.txt":
            return GOLDEN_KMEMLEAK / f"{arch}-{self.name}.txt"
        return GOLDEN / f"{arch}-{self.name}.log"


QUOTES = "; ".join(f"echo '{line}' > /dev/console" for line in (
    "WARNING: CPU: 0 PID: 1 at fake.c:1 quoted_by_userspace+0x0/0x10",
    "BUG: KASAN: slab-out-of-bounds in a userspace echo",
    "Kernel panic - not syncing: only a userspace echo",
    "------------[ cut here ]------------",
    "INFO: task sh:1 blocked for more than 1 seconds.",
))


def lkdtm(what: str) -> str:
    """A shell command that provokes LKDTM's ``what`` in the background (a
    hung task or a lockup never returns)."""
    return f"(echo {what} > /sys/kernel/debug/provoke-crash/DIRECT) </dev/null >/dev/null 2>&1 &"


CAPTURES = (
    Capture("clean-debug", DEBUG, (r"Lock dependency validator", r"KernelAddressSanitizer initialized",
                                    r"iommufd-harness: END iommufd_mock_domain\.\S+\.user_copy")),
    Capture("warn-in-access-rw", fixture("warn-in-access-rw.patch"),
            (r"WARNING: CPU: \d+ PID: \d+ at drivers/iommu/iommufd/device\.c",)),
    Capture("lock-inversion", (*DEBUG, *fixture("lock-inversion-in-access-rw.patch")),
            (r"WARNING: possible circular locking dependency detected",)),
    Capture("kasan-oob", (*DEBUG, *fixture("oob-read-in-access-rw.patch")),
            (r"BUG: KASAN: slab-out-of-bounds in iommufd_access_rw",)),
    Capture("sleep-in-atomic", (*DEBUG, *fixture("sleep-in-atomic-in-notify-unmap.patch")),
            (r"BUG: sleeping function called from invalid context", r"\[ BUG: Invalid wait context \]")),
    Capture("warn-panic-on-warn", (*fixture("warn-in-access-rw.patch"), "--cmdline", "panic_on_warn=1"),
            (r"Kernel panic - not syncing: kernel: panic_on_warn set",)),
    Capture("bug-in-access-rw", fixture("crash-in-access-rw.patch"), (r"kernel BUG at drivers/iommu/iommufd/",)),
    # a test asleep in the kernel for ever: the harness's request for the blocked stacks (sysrq w)
    Capture("deadlock", fixture("deadlock-in-access-rw.patch"),
            (r"sysrq: Show Blocked State", r"task:iommufd +state:D", r"iommufd-harness: DUMP \w+",
             r"iommufd-harness: END iommufd_ioas\.mock_domain\.access_pin 0"),
            tests="iommufd_ioas.no_domain.access_rw,iommufd_ioas.mock_domain.access_pin"),
    # ... on the debug kernel: lockdep's report first, then the hang window's dump
    Capture("deadlock-debug", (*DEBUG, *fixture("deadlock-in-access-rw.patch")),
            (r"WARNING: possible recursive locking detected", r"sysrq: Show Blocked State",
             r"iommufd-harness: DUMP \w+"),
            tests="iommufd_ioas.no_domain.access_rw,iommufd_ioas.mock_domain.access_pin", arches=("x86_64",)),
    Capture("panic-at-boot", fixture("panic-at-boot.patch"), (r"Kernel panic - not syncing: ",)),
    Capture("warn-at-boot", fixture("warn-at-boot.patch"), (r"fault fixture: warning in iommufd_init",),
            tests="iommufd_ioas.no_domain.access_rw"),
    Capture("refcount-underflow", (*DEBUG, *LKDTM), (r"refcount_t: underflow",),
            commands=(lkdtm("REFCOUNT_DEC_AND_TEST_NEGATIVE"),), arches=("x86_64",)),
    # (UBSAN names the file as the compiler was given it: no prefix map reaches it)
    Capture("ubsan", (*DEBUG, *LKDTM), (r"UBSAN: array-index-out-of-bounds in \S*drivers/misc/lkdtm/",),
            commands=(lkdtm("ARRAY_BOUNDS"),), arches=("x86_64",)),
    Capture("hung-task", (*DEBUG, *LKDTM),
            (r"INFO: task \S+ blocked for more than \d+ seconds", ),
            commands=("echo 5 > /proc/sys/kernel/hung_task_timeout_secs", lkdtm("HUNG_TASK")), arches=("x86_64",)),
    Capture("soft-lockup", (*DEBUG, *LKDTM, "--cmdline", QUICK_WATCHDOGS),
            (r"BUG: soft lockup - CPU#\d+ stuck for", r"rcu: INFO: \S+ (?:self-)?detected stalls? on CPU"),
            commands=(lkdtm("SOFTLOCKUP"),), arches=("x86_64",)),
    # userspace writing report headlines to the console: they are not the kernel's
    Capture("userspace-quotes", DEBUG, (r"\nWARNING: CPU: 0 PID: 1 at fake\.c:1",),
            commands=(QUOTES,), arches=("x86_64",)),
    # a boot with nothing wrong: what the guest image says of itself for verify
    Capture("clean-boot", (), (r"iommufd-harness: network up", r"iommufd-harness: facts release=\S+ cpus=\S+ "
                               r"hugepages=\d+ .* end", r"iommufd-harness: sshd started"),
            tests="iommufd_ioas.no_domain.access_rw"),
    # what kmemleak lists after the access suite: a record leaked by every unpin
    Capture("leak-in-access-unpin", (*LEAKS, *fixture("leak-in-access-unpin.patch")),
            (r'unreferenced object 0x[0-9a-f]+ \(size \d+\):\n  comm "iommufd#\d+"', r"iopt_area_add_access\+0x"),
            arches=("x86_64",), output="kmemleak.txt"),
    Capture("sysrq-crash", (), (r"sysrq: Trigger a crash", r"Kernel panic - not syncing: sysrq triggered crash"),
            commands=("(sleep 1; echo c > /proc/sysrq-trigger) </dev/null >/dev/null 2>&1 &",)),
)


def harness(*argv: str) -> list[str]:
    return [sys.executable, "-m", "harness", *argv]


def _missing(text: str, expect: tuple[str, ...]) -> list[str]:
    return [rx for rx in expect if not re.search(rx, text)]


def run_suite(c: Capture, arch: str, work: Path, results: Path) -> Path:
    argv = harness("run", "--work", str(work), "--results", str(results), "--profile", PROFILES[arch], *c.args)
    if c.tests:
        argv += ["--tests", c.tests]
    subprocess.run(argv, cwd=REPO)  # its verdict is the fixture's business; the console is ours
    return results / c.output


def run_commands(c: Capture, arch: str, work: Path, results: Path, wait: float = 240) -> Path:
    """Boot with 'iommufd-harness boot', run the commands over SSH, wait for
    the console to show what the capture is for, then stop the VM."""
    argv = harness("boot", "--work", str(work), "--profile", PROFILES[arch], *c.args)
    boot = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    console = ssh_line = None
    try:
        for line in boot.stdout:
            sys.stdout.write(line)
            if line.startswith("console log: "):
                console = Path(line.split(": ", 1)[1].strip())
            if line.strip().startswith("ssh -i "):
                ssh_line = line.split()
                break
        if console is None or ssh_line is None:
            raise SystemExit(f"{c.name}: the VM did not come up")
        key = ssh_line[ssh_line.index("-i") + 1]
        port = int(ssh_line[ssh_line.index("-p") + 1])
        known = ssh_line[ssh_line.index("-o") + 1].split("=", 1)[1]
        client = paramiko.SSHClient()
        client.load_host_keys(known)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port, "root", key_filename=key, timeout=30, allow_agent=False,
                       look_for_keys=False)
        for cmd in c.commands:
            _, out, _ = client.exec_command(cmd, timeout=30)
            out.channel.recv_exit_status()
        deadline = time.monotonic() + wait
        while _missing(console.read_bytes().decode(errors="replace"), c.expect) and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(5)  # the rest of the report
        client.close()
    finally:
        if boot.poll() is None:  # a guest that panicked has ended 'boot' already
            os.killpg(boot.pid, signal.SIGINT)
            try:
                boot.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(boot.pid, signal.SIGKILL)
    results.mkdir(parents=True, exist_ok=True)
    dest = results / "console.log"
    shutil.copyfile(console, dest)
    return dest


def capture(c: Capture, arch: str, work: Path) -> None:
    results = Path(tempfile.mkdtemp(prefix=f"golden-{arch}-{c.name}-"))
    log = (run_commands if c.commands else run_suite)(c, arch, work, results / "run")
    text = log.read_bytes().decode(errors="replace")
    missing = _missing(text, c.expect)
    if len(text) > MAX_BYTES:
        raise SystemExit(f"{arch}-{c.name}: the {c.output} of {results} has {len(text)} characters: too much for a "
                         "golden log (a flood of reports?)")
    if missing:
        raise SystemExit(f"{arch}-{c.name}: the {c.output} of {results} does not show {missing}")
    dest = c.golden(arch)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, dest)
    print(f"captured {dest.relative_to(REPO)} ({len(text.splitlines())} lines) from {results}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("IOMMUFD_HARNESS_WORK", REPO / "work")))
    ap.add_argument("--arch", action="append", choices=sorted(PROFILES), help="default: both")
    ap.add_argument("names", nargs="*", help=f"captures (default all): {', '.join(c.name for c in CAPTURES)}")
    args = ap.parse_args(argv)
    unknown = set(args.names) - {c.name for c in CAPTURES}
    if unknown:
        ap.error(f"unknown capture {', '.join(sorted(unknown))}")
    failed = []
    for arch in args.arch or sorted(PROFILES, key=lambda a: a != "x86_64"):
        for c in CAPTURES:
            if (not args.names or c.name in args.names) and arch in c.arches:
                try:
                    capture(c, arch, args.work)
                except SystemExit as e:  # the others are still worth capturing
                    print(f"FAILED: {e}", file=sys.stderr, flush=True)
                    failed.append(f"{arch}-{c.name}")
    if failed:
        print(f"not captured: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
