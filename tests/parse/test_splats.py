"""Kernel splat detection on golden console logs (tests/golden/console/*.log).

The logs are serial consoles as QEMU writes them (CRLF, printk timestamps,
userspace output interleaved); arm64-oops.log is a plain-LF capture.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from harness.parse import splats
from harness.parse.splats import SplatScanner, group, scan, signature
from harness.reports.decode import decode

CONSOLE = Path(__file__).resolve().parents[1] / "golden" / "console"
STAMP = re.compile(r"^\[\s*\d+\.\d+\]", re.MULTILINE)


def load(name: str) -> str:
    # Bytes, not read_text(): universal newlines would hide the console's CRLF.
    return (CONSOLE / name).read_bytes().decode()


def raw_lines(text: str, s: splats.Splat) -> list[str]:
    return text[s.start:s.end].replace("\r", "").split("\n")


def kinds(found: list[splats.Splat]) -> list[tuple[str, bool]]:
    return [(s.kind, s.fatal) for s in found]


def chunked(text: str, sizes, scanner: SplatScanner | None = None) -> list[splats.Splat]:
    scanner = scanner or SplatScanner()
    out, i = [], 0
    for n in sizes:
        if i >= len(text):
            break
        out += scanner.feed(text[i:i + n])
        i += n
    out += scanner.feed(text[i:])
    return out + scanner.flush()


ALL_LOGS = sorted(p.name for p in CONSOLE.glob("*.log"))


# -- no false positives ----------------------------------------------------------


def test_clean_boot_has_no_splats():
    """A false positive here would fail every run: scary-looking but harmless
    kernel lines (ACPI BIOS Error, Spectre "WARNING:", DMAR faults, lockdep and
    KASAN banners at boot) and userspace lines quoting WARNING:/BUG:/panic."""
    text = load("clean-boot.log")
    assert "ACPI BIOS Error" in text and "WARNING: CPU: 0 PID: 1 at fake.c:1" in text
    assert scan(text) == []


def test_userspace_lines_never_start_a_splat():
    text = load("clean-boot.log")
    quoted = [line for line in text.splitlines() if not STAMP.match(line) and splats.headline_kind(line.strip())]
    assert len(quoted) >= 4  # the log does quote headlines...
    assert scan(text) == []  # ...without timestamps, so they are not the kernel's


# -- each kind of report -----------------------------------------------------------


def test_warn_during_test_with_tap_interleaved():
    text = load("warn-during-test.log")
    [w] = scan(text)
    assert w.kind == "warning" and not w.fatal
    assert w.title == ("WARNING: CPU: 0 PID: 245 at drivers/iommu/iommufd/device.c:1256 "
                       "iommufd_access_pin_pages+0x3a1/0x3f0")
    assert w.signature == ("WARNING: CPU: N PID: N at drivers/iommu/iommufd/device.c:1256 "
                           "iommufd_access_pin_pages")
    # The kernel line was glued to a TAP line: the splat starts mid-line, at its timestamp.
    assert text[w.start - 10:w.start].endswith("unmap ...")
    assert text[w.start:].startswith("[   14.201733] ------------[ cut here ]------------")
    assert text[:w.end].endswith("---[ end trace 0000000000000000 ]---")
    # The raw span has the TAP line printed in the middle; the text does not.
    assert "# iommufd.c:1740:access_pin_unmap" in text[w.start:w.end]
    assert "iommufd.c:1740" not in w.text
    assert w.text.splitlines()[0] == "------------[ cut here ]------------"
    assert w.text.splitlines()[-1] == "---[ end trace 0000000000000000 ]---"
    assert " <TASK>" in w.text.splitlines() and "\r" not in w.text
    assert not STAMP.search(w.text)


def test_identical_warns_from_different_cpus_and_pids_group():
    text = load("repeated-warns.log")
    found = scan(text)
    assert kinds(found) == [("warning", False)] * 3
    assert "CPU: 0 PID: 245" in found[0].title and "CPU: 1 PID: 251" in found[1].title
    groups = group(found)
    assert list(groups) == [found[0].signature, found[2].signature]
    assert groups[found[0].signature] == found[:2]
    assert groups[found[2].signature] == found[2:]
    # A WARN with a message: the message line between "cut here" and WARNING belongs to it.
    assert found[2].text.splitlines()[1] == "iommufd: access 00000000a3f2c1d9 still has 1 pinned pages"
    for s in found:
        assert raw_lines(text, s)[0].endswith("------------[ cut here ]------------")
        assert raw_lines(text, s)[-1].endswith("---[ end trace 0000000000000000 ]---")


def test_kasan_report_from_banner_to_banner():
    text = load("kasan-uaf.log")
    [k] = scan(text)
    assert k.kind == "kasan" and not k.fatal
    assert k.title == "BUG: KASAN: slab-use-after-free in iommufd_access_unpin_pages+0x2c7/0x300"
    assert k.signature == "BUG: KASAN: slab-use-after-free in iommufd_access_unpin_pages"
    lines = k.text.splitlines()
    assert lines[0] == lines[-1] == "=" * 66
    # Its first call trace is only part of it: the allocation and free stacks follow.
    assert "Allocated by task 245:" in lines and "Freed by task 245:" in lines
    assert "Memory state around the buggy address:" in lines
    assert "Disabling lock debugging" not in k.text


def test_null_deref_oops_followed_by_panic_is_fatal():
    text = load("null-deref-panic.log")
    oops, panic = scan(text)
    assert (oops.kind, oops.fatal) == ("bug", True)
    assert oops.title == "BUG: kernel NULL pointer dereference, address: 0000000000000008"
    # The title names no code: the faulting function is taken from RIP.
    assert oops.signature == "BUG: kernel NULL pointer dereference, address: ADDR at iommufd_access_unpin_pages"
    assert "Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI" in oops.text.splitlines()
    assert oops.text.splitlines()[-3:] == ["Modules linked in:", "CR2: 0000000000000008",
                                           "---[ end trace 0000000000000000 ]---"]
    assert (panic.kind, panic.fatal) == ("panic", True)
    assert panic.title == "Kernel panic - not syncing: Fatal exception"
    assert panic.text == "Kernel panic - not syncing: Fatal exception\nKernel Offset: disabled\n"
    # The register summary printed between the two belongs to neither.
    between = text[oops.end:panic.start]
    assert "RIP: 0010:iommufd_access_unpin_pages" in between
    assert panic.end == len(text.rstrip("\r\n"))


def test_panic_on_warn_makes_the_warning_fatal():
    text = load("warn-during-test.log")
    text = text[:text.index("[   14.213585] ---[ end trace")] + (
        "[   14.213601] Kernel panic - not syncing: kernel: panic_on_warn set ...\r\n"
        "[   14.213712] CPU: 0 UID: 0 PID: 245 Comm: iommufd Not tainted 6.12.117 #1\r\n"
        "[   14.213801] Call Trace:\r\n"
        "[   14.213822]  <TASK>\r\n"
        "[   14.213843]  panic+0x118/0x2d0\r\n"
        "[   14.213864]  check_panic_on_warn+0x4a/0x60\r\n"
        "[   14.213885]  </TASK>\r\n"
        "[   14.213906] Kernel Offset: disabled\r\n")
    warn, panic = scan(text)
    assert (warn.kind, warn.fatal, warn.text.splitlines()[-1]) == ("warning", True, " </TASK>")
    assert (panic.kind, panic.fatal) == ("panic", True)
    assert panic.text.splitlines()[-1] == "Kernel Offset: disabled"


def test_an_unrelated_later_panic_does_not_make_a_report_fatal():
    text = load("refcount-underflow.log") + load("sysrq-crash.log")
    rc, panic = scan(text)
    assert (rc.kind, rc.fatal) == ("refcount", False)
    assert (panic.kind, panic.fatal) == ("panic", True)


def test_soft_lockups_group_and_span_irq_and_task_stacks():
    text = load("soft-lockup.log")
    first, second = scan(text)
    assert kinds([first, second]) == [("lockup", False)] * 2
    assert first.title == "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [iommufd:245]"
    assert first.signature == second.signature == "watchdog: BUG: soft lockup - CPU#N stuck for Ns! [iommufd:N]"
    lines = first.text.splitlines()
    assert " <IRQ>" in lines and " </IRQ>" in lines and lines[-1] == " </TASK>"
    assert " iopt_table_remove_domain+0x8d/0x130" in lines


def test_rcu_stalls_with_nmi_backtraces():
    text = load("rcu-stall.log")
    self_detected, detected = scan(text)
    assert self_detected.kind == detected.kind == "rcu_stall"
    assert self_detected.title == "rcu: INFO: rcu_preempt self-detected stall on CPU"
    assert self_detected.text.splitlines()[-1] == " </TASK>"
    assert detected.title == "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"
    lines = detected.text.splitlines()
    assert "NMI backtrace for cpu 1" in lines and "rcu: RCU grace-period kthread stack dump:" in lines
    assert lines[-1] == "NMI backtrace for cpu 1 skipped: idling at default_idle+0xf/0x20"
    assert "Adding to iommu group" not in detected.text  # printed 2.6 s later: not part of it


def test_hung_tasks_one_per_task():
    text = load("hung-task.log")
    found = scan(text)
    assert kinds(found) == [("hung_task", False)] * 2
    assert found[0].title == "INFO: task iommufd:252 blocked for more than 122 seconds."
    assert found[0].signature == found[1].signature == "INFO: task iommufd:N blocked for more than N seconds."
    assert found[0].text.splitlines()[-1] == " </TASK>"
    assert found[1].start > found[0].end


def test_lockdep_circular_locking():
    text = load("lockdep-circular.log")
    [ld] = scan(text)
    assert ld.kind == "lockdep" and not ld.fatal
    assert ld.title == ld.signature == "WARNING: possible circular locking dependency detected"
    lines = ld.text.splitlines()
    assert lines[0] == "=" * 54 and lines[1] == ld.title
    assert " *** DEADLOCK ***" in lines and "stack backtrace:" in lines
    assert lines[-1] == " </TASK>"
    assert "Adding to iommu group" not in ld.text


def test_refcount_underflow_includes_its_warning():
    text = load("refcount-underflow.log")
    [rc] = scan(text)
    assert rc.kind == "refcount" and not rc.fatal
    assert rc.title == rc.signature == "refcount_t: underflow; use-after-free."
    lines = rc.text.splitlines()
    assert lines[0] == "------------[ cut here ]------------"
    assert lines[2].startswith("WARNING: CPU: 0 PID: 245 at lib/refcount.c:28 refcount_warn_saturate")
    assert lines[-1] == "---[ end trace 0000000000000000 ]---"


def test_sysrq_crash_panic():
    text = load("sysrq-crash.log")
    [p] = scan(text)
    assert (p.kind, p.fatal) == ("panic", True)
    assert p.title == "Kernel panic - not syncing: sysrq triggered crash"
    lines = p.text.splitlines()
    assert lines[0] == "sysrq: Trigger a crash"
    assert " sysrq_handle_crash+0x1a/0x20" in lines
    assert lines[-1] == "Kernel Offset: disabled"  # panic=-1: no "end Kernel panic" line


def test_ubsan_sleeping_bug_and_kfence():
    text = load("misc-reports.log")
    ubsan, sleeping, kfence = scan(text)
    assert ubsan.kind == "ubsan"
    assert ubsan.signature == "UBSAN: array-index-out-of-bounds in drivers/iommu/iommufd/selftest.c:1418:23"
    assert ubsan.text.splitlines()[-1] == "---[ end trace ]---"
    assert sleeping.kind == "bug"
    assert sleeping.signature == "BUG: sleeping function called from invalid context at kernel/locking/mutex.c:585"
    assert kfence.kind == "kfence"
    assert kfence.signature == "BUG: KFENCE: use-after-free read in iommufd_access_rw"
    assert "freed by task 245 on cpu 0 at 12.900118s (0.007189s ago):" in kfence.text
    assert kfence.text.splitlines()[-1] == "=" * 66
    assert not any(s.fatal for s in (ubsan, sleeping, kfence))


def test_arm64_warn_oops_and_panic():
    text = load("arm64-oops.log")
    warn, oops, panic = scan(text)
    assert (warn.kind, oops.kind, panic.kind) == ("warning", "bug", "panic")
    assert warn.text.splitlines()[-2] == " el0t_64_sync+0x190/0x198"  # a trace without <TASK> tags
    assert not warn.fatal and oops.fatal and panic.fatal
    assert "Internal error: Oops: 0000000096000006 [#1] PREEMPT SMP" in oops.text
    assert oops.signature.endswith(" at iommufd_access_unpin_pages")
    assert oops.text.splitlines()[-2].startswith("Code: ")
    assert panic.text.splitlines()[-1] == "---[ end Kernel panic - not syncing: Oops: Fatal exception ]---"


@pytest.mark.parametrize("name", ALL_LOGS)
def test_extents_are_consistent(name):
    text = load(name)
    found = scan(text)
    prev_end = -1
    for s in found:
        assert s.kind in splats.KINDS
        assert prev_end < s.start < s.end <= len(text)
        prev_end = s.end
        assert s.title in s.text.splitlines()
        assert not STAMP.search(s.text) and "\r" not in s.text
        assert text[s.start] == "["  # every report starts at a kernel line's timestamp
        assert s.signature == signature(s.title, s.text if s.kind in ("bug", "oops") else "")


# -- scanning a console that grows -------------------------------------------------


@pytest.mark.parametrize("name", ALL_LOGS)
def test_any_chunking_gives_each_splat_once(name):
    text = load(name)
    expected = scan(text)
    for seed in range(8):
        rng = random.Random(seed)
        assert chunked(text, (rng.randint(1, 300) for _ in range(len(text)))) == expected, seed


def test_one_character_at_a_time():
    text = load("null-deref-panic.log")
    assert chunked(text, [1] * len(text)) == scan(text)


def test_incremental_waits_for_the_end_and_reports_once():
    text = load("warn-during-test.log")
    mid = text.index("iommufd_test_access_pages+0x1b5")  # inside the call trace
    sc = SplatScanner()
    assert sc.feed(text[:mid]) == [] and sc.busy
    end = text.index("---[ end trace")
    assert sc.feed(text[mid:end + 5]) == []  # the end marker line is not complete yet
    # Complete, but held back for a while in case a panic follows (panic_on_warn)...
    assert sc.feed(text[end + 5:]) == [] and not sc.busy
    # ... until enough further lines arrive.
    [w] = sc.feed("[   99.000000] later\r\n" * splats.HOLD_LINES)
    assert w.kind == "warning" and not w.fatal
    assert sc.flush() == []


def test_a_finished_report_waits_briefly_for_a_panic():
    text = load("null-deref-panic.log")
    cut = text.index("[   17.822207] RIP:")  # right after the oops' end marker
    sc = SplatScanner()
    assert sc.feed(text[:cut]) == []  # complete, but a panic may follow
    oops, = sc.feed(text[cut:])  # the panic arrived: the oops is released, fatal
    assert oops.kind == "bug" and oops.fatal
    panic, = sc.flush()
    assert panic.kind == "panic" and panic.fatal


def test_settle_releases_what_is_pending():
    text = load("hung-task.log")
    sc = SplatScanner()
    first = sc.feed(text)
    assert [s.title for s in first] == ["INFO: task iommufd:252 blocked for more than 122 seconds."]
    assert sc.busy  # the second report could still have trailer lines coming
    second = sc.settle()
    assert [s.title for s in second] == ["INFO: task iommufd:253 blocked for more than 122 seconds."]
    assert sc.feed("[  300.000000] iommufd_mock iommufd_mock0: Adding to iommu group 3\n") == []
    assert sc.flush() == []


def test_offset_shifts_positions():
    text = load("refcount-underflow.log")
    [a] = scan(text)
    [b] = scan(text, offset=1000)
    assert (b.start, b.end) == (a.start + 1000, a.end + 1000)
    sc = SplatScanner(offset=1000)
    assert [(s.start, s.end) for s in sc.feed(text) + sc.flush()] == [(b.start, b.end)]


def test_flush_takes_an_unterminated_last_line():
    text = load("arm64-oops.log").rstrip("\n")
    found = scan(text)
    assert found[-1].text.splitlines()[-1].startswith("---[ end Kernel panic")
    assert found[-1].end == len(text)


def test_userspace_flood_ends_an_unfinished_report():
    head = "[   10.000000] BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 31s!\n"
    sc = SplatScanner()
    assert sc.feed(head) == []
    found = sc.feed("userspace line\n" * (splats.QUIET_LINES + splats.HOLD_LINES))
    assert [s.kind for s in found] == ["lockup"]
    assert found[0].text == head[15:]


def test_a_clock_jump_ends_a_report_without_a_trace():
    text = ("[   10.000000] BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 31s!\n"
            "[   10.000100] Showing busy workqueues and worker pools:\n"
            "[   30.000000] iommufd_mock iommufd_mock0: Adding to iommu group 3\n")
    [s] = scan(text)
    assert s.text.splitlines() == [s.title, "Showing busy workqueues and worker pools:"]


def test_report_length_is_capped():
    text = "[    5.000000] BUG: scheduling while atomic: iommufd/245/0x00000002\n" + "".join(
        f"[    5.{i:06d}] filler line {i}\n" for i in range(1, 1000))
    found = scan(text)
    assert len(found[0].text.splitlines()) == splats.MAX_LINES
    assert found[0].signature == "BUG: scheduling while atomic: iommufd/N/ADDR"


def test_logs_without_timestamps():
    """dmesg without printk times: every line is the kernel's."""
    text = load("arm64-oops.log")
    stripped = re.sub(r"^\[\s*\d+\.\d+\] ?", "", text, flags=re.MULTILINE)
    assert [(s.kind, s.title, s.fatal) for s in scan(stripped)] == [
        (s.kind, s.title, s.fatal) for s in scan(text)]


def test_printk_caller_ids_and_levels():
    text = ("<4>[   12.000001][  T245] ------------[ cut here ]------------\n"
            "<4>[   12.000002][  T245] WARNING: CPU: 0 PID: 245 at kernel/foo.c:1 foo+0x1/0x2\n"
            "<4>[   12.000003][  T245] ---[ end trace 0000000000000000 ]---\n")
    [s] = scan(text)
    assert s.title == "WARNING: CPU: 0 PID: 245 at kernel/foo.c:1 foo+0x1/0x2"
    assert s.text.splitlines()[0] == "------------[ cut here ]------------"


# -- signatures ----------------------------------------------------------------------


@pytest.mark.parametrize("title, sig", [
    ("WARNING: CPU: 3 PID: 1 at mm/gup.c:1234 __get_user_pages+0x1a/0x2b0 [iommufd]",
     "WARNING: CPU: N PID: N at mm/gup.c:1234 __get_user_pages [iommufd]"),
    ("kernel BUG at mm/slub.c:123!", "kernel BUG at mm/slub.c:123!"),
    ("Oops: general protection fault, probably for non-canonical address 0xdead000000000122: 0000 [#2] PREEMPT SMP",
     "Oops: general protection fault, probably for non-canonical address ADDR: 0000 [#N] PREEMPT SMP"),
    ("INFO: task kworker/u8:2:34 blocked for more than 245 seconds.",
     "INFO: task kworker/*:N blocked for more than N seconds."),
    ("Watchdog detected hard LOCKUP on cpu 1", "Watchdog detected hard LOCKUP on cpu N"),
    ("WARNING: iommufd/245 still has locks held!", "WARNING: iommufd/N still has locks held!"),
    ("BUG kmalloc-64 (Tainted: G    B           ): Poison overwritten", "BUG kmalloc-64 (): Poison overwritten"),
])
def test_signature_normalisation(title, sig):
    assert signature(title) == sig


@pytest.mark.parametrize("line, kind", [
    ("Oops: 0002 [#1] PREEMPT SMP", "oops"),
    ("BUG: scheduling while atomic: iommufd/245/0x00000002", "bug"),
    ("Watchdog detected hard LOCKUP on cpu 1", "lockup"),
    ("INFO: possible irq lock inversion dependency detected", "lockdep"),
    ("WARNING: possible recursive locking detected", "lockdep"),
    ("rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", "rcu_stall"),
    ("refcount_t: saturated; leaking memory.", "refcount"),
    ("---[ end Kernel panic - not syncing: Fatal exception ]---", None),
    ("Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on", None),
    ("ACPI BIOS Error (bug): Could not resolve symbol [\\_SB.PCI0.S08.S00], AE_NOT_FOUND", None),
    ("... MAX_LOCKDEP_KEYS:        8192", None),
    ("INFO: lockdep is turned off.", None),
])
def test_headlines(line, kind):
    assert splats.headline_kind(line) == kind


# -- decoding --------------------------------------------------------------------------


def fake_tree(tmp_path: Path, script: str) -> tuple[Path, Path]:
    tree = tmp_path / "linux"
    (tree / "scripts").mkdir(parents=True)
    (tree / "scripts" / "decode_stacktrace.sh").write_text("#!/bin/bash\n" + script)
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF")
    return tree, vmlinux


def test_decode_runs_the_trees_script(tmp_path):
    tree, vmlinux = fake_tree(tmp_path, 'echo "args: $*" >&2\nsed "s/+0x[0-9a-f]*\\/0x[0-9a-f]*$/& (x.c:1)/"\n')
    [w] = scan(load("warn-during-test.log"))
    log = tmp_path / "logs" / "decode.log"
    out = decode(w, tree, vmlinux, log)
    assert out is not None and " iommufd_test+0x2d8/0xa70 (x.c:1)" in out.splitlines()
    assert f"args: {vmlinux} {tree}" in log.read_text() and "exit status 0" in log.read_text()


def test_decode_unavailable_or_failing_gives_none(tmp_path):
    [w] = scan(load("warn-during-test.log"))
    log = tmp_path / "decode.log"
    assert decode(w, tmp_path / "no-tree", tmp_path / "vmlinux", log) is None
    tree, vmlinux = fake_tree(tmp_path, "echo broken >&2; exit 1\n")
    assert decode(w, tree, tmp_path / "missing-vmlinux", log) is None
    assert decode(w, tree, vmlinux, log) is None
    assert "broken" in log.read_text()
    assert decode(w, tree, vmlinux, Path("/proc/no/such/dir/log")) is None  # an unwritable log is no error


def test_decode_timeout_kills_the_script(tmp_path):
    tree, vmlinux = fake_tree(tmp_path, "sleep 60 &\nwait\n")
    [w] = scan(load("warn-during-test.log"))
    t0 = time.monotonic()
    assert decode(w, tree, vmlinux, tmp_path / "decode.log", timeout=0.5) is None
    assert time.monotonic() - t0 < 10
    assert "timed out" in (tmp_path / "decode.log").read_text()
