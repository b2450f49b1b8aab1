"""A board's kernel log over SSH (/dev/kmsg): what of it can be a kernel
report.

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

from pathlib import Path

from harness.parse.splats import scan
from harness.parse.splat_lines import STAMP
from harness.run.runner import _marker
from harness.targets.board import console_line, parse_kmsg

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
