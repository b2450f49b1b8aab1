"""A board's kernel log over SSH (/dev/kmsg): how much of it is the run's,
what of it can be a kernel report, and the test markers never rate-limited
away.  The board is a fake behind a real SSH server on 127.0.0.1, serving
/dev/kmsg and printk_devkmsg the way a kernel does.

Kernel records here are not typed by hand: they are rebuilt from a captured
serial console (tests/golden/console/arm64-warn-at-boot.log, captured with
tests/golden/capture.py: a trial kernel with the warn-at-boot fixture) in
the record format of /dev/kmsg (``PRIO,SEQ,USEC,FLAGS;text``, PRIO =
facility * 8 + level, Documentation/ABI/testing/dev-kmsg).  A console line
does not show its record's level, so every kernel record gets level 4
(warning); the harness reads only the facility.  Records of user space are
what user space writes (the harness's own markers, a daemon quoting a
kernel headline).
"""

from __future__ import annotations

import io
import shlex
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from fakes import ssh_listener, ssh_server_base

from harness.errors import TargetError
from harness.lab import BoardEntry
from harness.parse.splats import scan
from harness.parse.splat_lines import STAMP
from harness.run.runner import Runner, _marker
from harness.stages import image
from harness.lab import board, deploy, kexec
from harness.lab.board import BoardSpec, BoardTarget, console_line, parse_kmsg
from harness.targets.verify import Expect, GuestInfo

CAPTURED = Path(__file__).resolve().parents[1] / "golden" / "console" / "arm64-warn-at-boot.log"
USER = 1  # LOG_USER: what the kernel gives a write to /dev/kmsg without a <N> prefix
DAEMON = 3
BOOT_WARN = "WARNING: CPU: 1 PID: 1 at drivers/iommu/iommufd/main.c:578 iommufd_init+0x18/0x58"
# what a user-space program could write to /dev/kmsg (capture.py's userspace-quotes write the same to the console)
QUOTED_WARN = "WARNING: CPU: 0 PID: 1 at fake.c:1 quoted_by_userspace+0x0/0x10"


def record(facility: int, level: int, seq: int, usec: int, text: str, flags: str = "-") -> str:
    """A /dev/kmsg record in its documented format."""
    return f"{facility * 8 + level},{seq},{usec},{flags};{text}"


def boot_records(first_seq: int = 0) -> list[str]:
    """The captured trial kernel's boot (its console up to the first line
    user space printed) as /dev/kmsg records, from ``first_seq`` on."""
    out = []
    for line in CAPTURED.read_bytes().decode().splitlines():
        m = STAMP.match(line)
        if not m:
            break  # the image's init: user space from here on
        sec, _, frac = m.group(1).partition(".")
        out.append(record(0, 4, first_seq + len(out), int(sec) * 1_000_000 + int(frac), line[m.end():].rstrip("\r")))
    return out


# --- console.log lines -----------------------------------------------------------------


def test_kernel_records_read_like_the_console_they_were_captured_from():
    """A kernel record is the console's line again: the report detector finds
    on the board what it finds on a VM's console."""
    lines = [console_line(parse_kmsg(r)) for r in boot_records()]
    assert lines[0].startswith("[    0.000000] Booting Linux on physical CPU 0x")
    from_board = scan("".join(line + "\n" for line in lines))
    from_console = scan(CAPTURED.read_bytes().decode())
    assert [(s.kind, s.title) for s in from_board] == [(s.kind, s.title) for s in from_console] == \
        [("warning", BOOT_WARN)]


def test_records_user_space_wrote_are_kept_but_never_a_kernel_report():
    """The markers are found in console.log; a user-space line that quotes a
    kernel headline (even behind a timestamp of its own) starts no report and
    is not part of the kernel's; continuation lines are left out."""
    boot = boot_records()
    at = next(i for i, r in enumerate(boot) if "---[ end trace" in r)
    seq = len(boot)
    user = [record(USER, 4, seq, 700000, "iommufd-harness: RUN iommufd_ioas.no_domain.access_rw"),
            record(USER, 4, seq + 1, 700001, QUOTED_WARN),
            record(DAEMON, 3, seq + 2, 700002, "[    1.000000] " + QUOTED_WARN),
            record(USER, 2, seq + 3, 700003, "<4>[    1.000000] BUG: KASAN: slab-out-of-bounds in a daemon"),
            record(USER, 4, seq + 4, 700004, "iommufd-harness: END iommufd_ioas.no_domain.access_rw 0")]
    # a daemon writing in the middle of the kernel's report, and the dictionary lines of a record
    stream = boot[:at] + [user[1], " SUBSYSTEM=platform", " DEVICE=+platform:9050000.smmuv3"] + boot[at:] + user
    lines = [console_line(rec) for rec in map(parse_kmsg, stream) if rec is not None]
    text = "".join(line + "\n" for line in lines)
    found = scan(text)
    assert [(s.kind, s.title) for s in found] == [("warning", BOOT_WARN)]
    assert "quoted_by_userspace" not in found[0].text and "---[ end trace" in found[0].text
    assert _marker("RUN", "iommufd_ioas.no_domain.access_rw").search(text)
    assert _marker("END", "iommufd_ioas.no_domain.access_rw").search(text)
    # the forms the module's docstring shows
    assert len(lines) == len(stream) - 2
    assert "[    0.700000 user] iommufd-harness: RUN iommufd_ioas.no_domain.access_rw" in lines
    assert f"[    0.700002 daemon] \\x5b    1.000000] {QUOTED_WARN}" in lines


# --- a fake board over SSH --------------------------------------------------------------


class FakeBoard:
    """What the harness's commands see on a board: /dev/kmsg (``cat`` gets
    every record the ring buffer holds, then each new one; a write appends a
    user-space record), printk_devkmsg (``locked``: fixed by the kernel's
    command line, a write is refused as the kernel does, EINVAL), files
    written with put.  The harness's setup and cleanup scripts run for real
    (sh) against a file that stands for the sysctl; any other command
    succeeds without doing anything."""

    def __init__(self, root: Path, records: list[str], devkmsg: str = "ratelimit", locked: bool = False):
        self.root = root
        self.records = list(records)
        self.changed = threading.Condition()
        self.sysctl = root / "printk_devkmsg"
        self.sysctl.write_text(devkmsg + "\n")
        self.locked = locked
        self.commands: list[list[str]] = []
        self.files: dict[str, bytes] = {}
        self.stopped = False

    def write_kmsg(self, text: str) -> None:
        with self.changed:
            last = parse_kmsg(next(r for r in reversed(self.records) if parse_kmsg(r)))
            self.records.append(record(USER, 4, last.seq + 1, last.usec + 1000, text))
            self.changed.notify_all()

    @property
    def devkmsg(self) -> str:
        return self.sysctl.read_text().strip()

    def serve(self, chan: paramiko.Channel, command: str) -> None:
        argv = shlex.split(command)
        self.commands.append(argv)
        if argv == ["cat", "/dev/kmsg"]:
            return self._follow(chan)
        status = 0
        if argv[:2] == ["sh", "-c"] and "> /dev/kmsg" in argv[2]:
            self.write_kmsg(argv[4])
        elif argv[:2] == ["sh", "-c"] and argv[2].startswith('cat > "$1"'):  # put
            data = b""
            while chunk := chan.recv(65536):
                data += chunk
            self.files[argv[4]] = data
        elif argv[:2] == ["sh", "-c"] and argv[2] in (board.PREPARE_SCRIPT, board.CLEANUP_SCRIPT):
            assert argv[5] == board.DEVKMSG_SYSCTL
            # a sysctl the kernel refuses to write stands for the locked one
            sysctl = "/proc/sys/kernel/osrelease" if self.locked else str(self.sysctl)
            args = [str(self.root / argv[4].lstrip("/")), sysctl, *argv[6:]]
            res = subprocess.run(["sh", "-c", argv[2], "sh", *args], capture_output=True, timeout=30)
            chan.sendall(res.stdout)
            chan.sendall_stderr(res.stderr)
            status = res.returncode
        chan.send_exit_status(status)
        chan.close()

    def _follow(self, chan: paramiko.Channel) -> None:
        sent = 0
        while not chan.closed and not self.stopped:
            with self.changed:
                self.changed.wait_for(lambda: len(self.records) > sent, timeout=0.1)
                new = self.records[sent:]
            if new:
                try:
                    chan.sendall("".join(r + "\n" for r in new).encode())
                except OSError:
                    return
                sent += len(new)


class _Server(ssh_server_base()):
    def __init__(self, allowed: paramiko.PKey, fake: FakeBoard):
        super().__init__(allowed)
        self.fake = fake

    def _serve(self, chan, command):
        time.sleep(0.05)  # let the exec request's reply go out first, as a real server does
        self.fake.serve(chan, command)


@pytest.fixture
def serve_board(tmp_path):
    """``serve_board(records, **kw)`` -> (FakeBoard, BoardSpec) on a port of 127.0.0.1."""
    keys = image.make_keys(tmp_path / "keys")
    host = paramiko.Ed25519Key.from_private_key(io.StringIO(keys.host_private["openssh"].decode()))
    client_key = paramiko.PKey.from_path(str(keys.client_private))
    fakes: list[FakeBoard] = []
    port, close = ssh_listener(host, lambda: _Server(client_key, fakes[-1]))
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{port} {keys.host_public}\n")

    def start(records: list[str], **kw) -> tuple[FakeBoard, BoardSpec]:
        (tmp_path / "board").mkdir()
        fakes.append(FakeBoard(tmp_path / "board", records, **kw))
        return fakes[-1], BoardSpec("127.0.0.1", port, "root", keys.client_private, tmp_path / "known_hosts")

    yield start
    for fake in fakes:
        fake.stopped = True
    close()


def kernel_reports(target: BoardTarget) -> list[tuple[str, str, str]]:
    """What the runner makes of the reports in ``target``'s log when no test
    ran yet, on a pass right after booting: (record, kind, title)."""
    records = []
    Runner(target, 5.0, records.append).finish()
    return [(r.name, r.status, r.reason) for r in records]


def test_a_trial_kernels_whole_log_is_the_runs_and_its_boot_warning_fails_kernel_boot(serve_board, tmp_path):
    fake, spec = serve_board(boot_records() + [record(USER, 4, 999, 900000, QUOTED_WARN)])
    target = BoardTarget(spec, tmp_path / "run", from_boot=True)
    try:
        target.setup({"run-tests": (CAPTURED, 0o755)})
        log = target.console.path.read_text()
        assert log.startswith("[    0.000000] Booting Linux on physical CPU 0x")
        assert target.first_seq == 0 and "iommufd-harness: session /tmp/iommufd-harness-" in log
        assert kernel_reports(target) == [("kernel.boot", "fail", f"kernel warning boot: {BOOT_WARN}")]
        assert list(fake.files) == [f"{target.remote}/run-tests"]
    finally:
        target.close()


def test_the_installed_kernels_log_is_the_runs_from_the_session_marker_on(serve_board, tmp_path):
    fake, spec = serve_board(boot_records())
    target = BoardTarget(spec, tmp_path / "run")
    try:
        target.setup({})
        assert "Booting Linux" not in target.console.path.read_text()
        fake.write_kmsg("iommufd-harness: RUN iommufd_ioas.no_domain.access_rw")
        deadline = time.monotonic() + 10
        while "RUN iommufd_ioas" not in target.console.path.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert kernel_reports(target) == []
    finally:
        target.close()


def test_printk_devkmsg_is_on_for_the_session_and_as_it_was_after(serve_board, tmp_path):
    fake, spec = serve_board(boot_records(), devkmsg="ratelimit")
    target = BoardTarget(spec, tmp_path / "run")
    target.setup({})
    assert fake.devkmsg == "on"
    assert (fake.root / target.remote.lstrip("/") / "selftests").is_dir()
    target.close()
    assert fake.devkmsg == "ratelimit" and not (fake.root / target.remote.lstrip("/")).exists()
    # the directory and the sysctl in one command each way
    assert [a[2] for a in fake.commands if a[:2] == ["sh", "-c"] and "printk_devkmsg" in " ".join(a)] == \
        [board.PREPARE_SCRIPT, board.CLEANUP_SCRIPT]


def test_a_board_whose_command_line_fixed_printk_devkmsg_is_refused(serve_board, tmp_path):
    fake, spec = serve_board(boot_records(), locked=True)
    target = BoardTarget(spec, tmp_path / "run")
    try:
        with pytest.raises(TargetError) as e:
            target.setup({})
    finally:
        target.close()
    value = Path("/proc/sys/kernel/osrelease").read_text().strip()
    assert f"/proc/sys/kernel/printk_devkmsg is {value!r} and the board refused to set it to 'on'" in e.value.message
    assert "kernel command line" in e.value.message and "printk.devkmsg=on" in e.value.hint
    assert ["cat", "/dev/kmsg"] not in fake.commands  # refused before anything else


@pytest.mark.parametrize("first_seq", [0, 1234])
def test_a_deployed_kernels_log_is_kept_from_its_first_record_and_a_lost_start_is_said(serve_board, tmp_path,
                                                                                       first_seq):
    """The lifecycle of a kernel the harness deployed follows its log from
    the first record.  When its ring buffer had overwritten the first
    records already, the run says so, and results.json records where its log
    starts."""
    fake, spec = serve_board(boot_records(first_seq))
    entry = BoardEntry("m1", spec.host, spec.port, spec.user, spec.key, spec.known_hosts, "arm64", "kexec", None,
                       "profile")
    said: list[str] = []
    trial = deploy.TrialKernel(CAPTURED, CAPTURED, "ab" * 20, None)
    lc = kexec.KexecLifecycle(entry, {}, "arm64", tmp_path / "run", Expect("ab" * 20, "", 0), trial,
                               state=None, run_id="r1", lab_path=tmp_path / "lab.toml", say=said.append)
    lc.installed = deploy.Booted("6.1.0-57-arm64", "cd" * 20, "b1")
    try:
        target = lc._setup_target()
        lc._verified(GuestInfo("6.12.117", "ab" * 20, 64, ("smmu3.0x9050000",), 2))
        assert kernel_reports(target) == [("kernel.boot", "fail", f"kernel warning boot: {BOOT_WARN}")]
    finally:
        lc._board.close()
    warned = [s for s in said if "warning: the trial kernel's log starts at record" in s]
    if first_seq:
        assert warned and "starts at record 1234, not 0" in warned[0], said
    else:
        assert warned == []
    assert lc.guest["kernel_log_from_seq"] == first_seq


def test_the_setup_script_turns_printk_devkmsg_on_and_the_cleanup_puts_it_back(tmp_path):
    """The scripts themselves, under sh, on a file that stands for the sysctl."""
    sysctl, remote = tmp_path / "printk_devkmsg", tmp_path / "run"

    def sh(script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", script, "sh", *args], capture_output=True, text=True, timeout=30)

    sysctl.write_text("ratelimit\n")
    res = sh(board.PREPARE_SCRIPT, str(remote), str(sysctl))
    assert (res.returncode, res.stdout) == (0, "ratelimit\n") and sysctl.read_text() == "on\n"
    assert (remote / "selftests").is_dir()
    assert sh(board.CLEANUP_SCRIPT, str(remote), str(sysctl), "ratelimit").returncode == 0
    assert sysctl.read_text() == "ratelimit\n" and not remote.exists()
    # on already: not written (a kernel whose command line fixed it to on, as
    # a trial kernel's does, refuses any write)
    sysctl.write_text("on\n")
    written = sysctl.stat().st_mtime_ns
    time.sleep(0.01)
    assert sh(board.PREPARE_SCRIPT, str(remote), str(sysctl)).stdout == "on\n"
    assert sysctl.stat().st_mtime_ns == written
    assert sh(board.CLEANUP_SCRIPT, str(remote), str(sysctl), "").returncode == 0
    assert sysctl.read_text() == "on\n"
    # a kernel without the sysctl: nothing to do
    res = sh(board.PREPARE_SCRIPT, str(remote), str(tmp_path / "absent"))
    assert (res.returncode, res.stdout) == (0, "") and not (tmp_path / "absent").exists()
    # a sysctl the kernel refuses to write
    res = sh(board.PREPARE_SCRIPT, str(remote), "/proc/sys/kernel/osrelease")
    assert res.returncode == board.REFUSED and res.stderr
