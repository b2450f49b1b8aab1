"""Kernel report detection on golden console logs (tests/golden/console/*.log).

Every log is the serial console of a real guest booted by this harness, as
QEMU wrote it (CRLF, printk timestamps, userspace lines interleaved), captured
by tests/golden/capture.py: the project's broken-kernel fixtures on the
default and the lockdep+KASAN kernels, x86_64 (``x86_64-*``) and arm64
(``arm64-*``), and the kernel's LKDTM for the reports no iommufd bug of ours
provokes.  Tests that need a report in a shape no capture has (a clock jump,
printk caller ids, no timestamps) derive it from a captured one.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from harness.parse import splats
from harness.parse.splat_lines import frames, hang_signature
from harness.parse.splats import SplatScanner, blocked_tasks, group, scan, signature
from harness.reports.decode import decode

CONSOLE = Path(__file__).resolve().parents[1] / "golden" / "console"
STAMP = re.compile(r"^\[\s*\d+\.\d+\]", re.MULTILINE)
ARCHES = ("x86_64", "arm64")
ALL_LOGS = sorted(p.name for p in CONSOLE.glob("*.log"))
RIP = {"x86_64": r"RIP: 0010:", "arm64": r"pc : "}


def load(name: str) -> str:
    # Bytes, not read_text(): universal newlines would hide the console's CRLF.
    return (CONSOLE / name).read_bytes().decode()


def raw_lines(text: str, s: splats.Splat) -> list[str]:
    return text[s.start:s.end].replace("\r", "").split("\n")


def kinds(found: list[splats.Splat]) -> list[tuple[str, bool]]:
    return [(s.kind, s.fatal) for s in found]


def during(text: str, s: splats.Splat) -> str | None:
    """The test whose RUN/END markers enclose a report, as the runner sees it."""
    name = None
    for m in re.finditer(r"iommufd-harness: (RUN|END) (\S+)", text[:s.start]):
        name = m.group(2) if m.group(1) == "RUN" else None
    return name


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


def test_every_golden_log_is_a_capture_of_its_arch():
    """No log but captured ones: each names the kernel that printed it."""
    assert ALL_LOGS and all(n.split("-", 1)[0] in ARCHES for n in ALL_LOGS)
    for n in ALL_LOGS:
        assert re.search(r"\] Linux version 6\.12\.\d+ ", load(n)), n
        assert "\r\n" in load(n), n


# -- no false positives ----------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_a_clean_debug_boot_and_suite_has_no_reports(arch):
    """lockdep, KASAN and KFENCE announce themselves at boot, the access suite
    runs on them: nothing there is a report."""
    text = load(f"{arch}-clean-debug.log")
    assert "Lock dependency validator" in text and "KernelAddressSanitizer initialized" in text
    assert len(re.findall(r"iommufd-harness: END \S+ 0", text)) == 24
    assert scan(text) == []


def test_userspace_lines_never_start_a_report():
    text = load("x86_64-userspace-quotes.log")
    quoted = [line for line in text.splitlines() if not STAMP.match(line) and splats.headline_kind(line.strip())]
    assert len(quoted) >= 4  # userspace did print headlines on the console...
    assert scan(text) == []  # ...without timestamps, so they are not the kernel's


# -- each kind of report -----------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_warn_in_the_access_path(arch):
    text = load(f"{arch}-warn-in-access-rw.log")
    [w] = scan(text)
    assert w.kind == "warning" and not w.fatal
    assert re.fullmatch(r"WARNING: CPU: \d+ PID: \d+ at drivers/iommu/iommufd/device\.c:\d+ "
                        r"iommufd_access_rw\+0x[0-9a-f]+/0x[0-9a-f]+", w.title), w.title
    assert re.fullmatch(r"WARNING: CPU: N PID: N at drivers/iommu/iommufd/device\.c:\d+ iommufd_access_rw",
                        w.signature), w.signature
    assert during(text, w) == "iommufd_ioas.no_domain.access_rw"
    assert raw_lines(text, w)[0].endswith("------------[ cut here ]------------")
    assert w.text.splitlines()[0] == "------------[ cut here ]------------"
    assert w.text.splitlines()[-1].startswith("---[ end trace ")
    assert re.search(RIP[arch] + r"iommufd_access_rw\+", w.text, re.M)
    assert "\r" not in w.text and not STAMP.search(w.text)


@pytest.mark.parametrize("arch", ARCHES)
def test_panic_on_warn_makes_the_warning_fatal(arch):
    text = load(f"{arch}-warn-panic-on-warn.log")
    warn, panic = scan(text)
    assert (warn.kind, warn.fatal) == ("warning", True)
    assert (panic.kind, panic.fatal) == ("panic", True)
    assert panic.title == "Kernel panic - not syncing: kernel: panic_on_warn set ..."


@pytest.mark.parametrize("arch", ARCHES)
def test_lockdep_circular_locking(arch):
    text = load(f"{arch}-lock-inversion.log")
    [ld] = scan(text)
    assert ld.kind == "lockdep" and not ld.fatal
    assert ld.title == ld.signature == "WARNING: possible circular locking dependency detected"
    assert during(text, ld) == "iommufd_ioas.no_domain.access_rw"
    lines = ld.text.splitlines()
    assert set(lines[0]) == {"="} and lines[1] == ld.title
    assert " *** DEADLOCK ***" in lines and "stack backtrace:" in lines
    assert any("(&access->ioas_lock)" in ln for ln in lines) and any("(&iopt->iova_rwsem)" in ln for ln in lines)
    assert "iommufd-harness: END" not in ld.text


@pytest.mark.parametrize("arch", ARCHES)
def test_kasan_report_from_banner_to_banner(arch):
    text = load(f"{arch}-kasan-oob.log")
    found = scan(text)
    k = found[0]
    assert k.kind == "kasan" and not k.fatal and during(text, k) == "iommufd_ioas.no_domain.access_rw"
    assert re.fullmatch(r"BUG: KASAN: slab-out-of-bounds in iommufd_access_rw\+0x[0-9a-f]+/0x[0-9a-f]+", k.title)
    assert k.signature == "BUG: KASAN: slab-out-of-bounds in iommufd_access_rw"
    lines = k.text.splitlines()
    assert lines[0] == lines[-1] and set(lines[0]) == {"="}
    assert lines[2].startswith("Read of size 1 at addr ")
    # its first call trace is only part of it: the allocation stack and the memory state follow
    assert "Allocated by task" in k.text and "Memory state around the buggy address:" in lines
    assert "Disabling lock debugging" not in k.text
    # KASAN reports once a boot; KFENCE, sampling, may catch the same read later
    assert [s.kind for s in found[1:]] == ["kfence"] * (len(found) - 1)


@pytest.mark.parametrize("arch", ARCHES)
def test_sleeping_in_atomic_context_and_lockdeps_invalid_wait_context(arch):
    text = load(f"{arch}-sleep-in-atomic.log")
    found = scan(text)
    assert found[0].kind == "bug"
    assert re.fullmatch(r"BUG: sleeping function called from invalid context at kernel/locking/mutex\.c:\d+",
                        found[0].title), found[0].title
    assert during(text, found[0]) == "iommufd_ioas.no_domain.access_pin_unmap"
    wait = [s for s in found if s.kind == "lockdep"]
    assert [s.title for s in wait] == ["[ BUG: Invalid wait context ]"]
    assert during(text, wait[0]) == "iommufd_ioas.no_domain.access_pin_unmap"
    assert not any(s.fatal for s in found)


@pytest.mark.parametrize("arch", ARCHES)
def test_the_same_bug_from_other_processes_groups_as_one(arch):
    """might_sleep() reports again in each test that unmaps a pinned range,
    from another process each time: one bug, one group."""
    text = load(f"{arch}-sleep-in-atomic.log")
    sleeping = [s for s in scan(text) if s.title.startswith("BUG: sleeping function")]
    assert len(sleeping) >= 2
    assert len({re.search(r"pid: (\d+)", s.text).group(1) for s in sleeping}) == len(sleeping)
    assert list(group(sleeping)) == [sleeping[0].signature]
    assert {during(text, s) for s in sleeping} <= {f"iommufd_ioas.{v}.access_pin_unmap" for v in (
        "no_domain", "mock_domain", "two_mock_domain", "mock_domain_limit")}


@pytest.mark.parametrize("arch", ARCHES)
def test_bug_oops_and_the_panic_it_causes(arch):
    text = load(f"{arch}-bug-in-access-rw.log")
    found = scan(text)
    assert kinds(found)[-1] == ("panic", True) and all(s.fatal for s in found)
    bug = found[0]
    assert re.fullmatch(r"kernel BUG at drivers/iommu/iommufd/device\.c:\d+!", bug.title), bug.title
    assert bug.signature == bug.title
    assert during(text, bug) == "iommufd_ioas.no_domain.access_rw"
    # arm64 says which exception it was
    assert found[-1].title == {"x86_64": "Kernel panic - not syncing: Fatal exception",
                               "arm64": "Kernel panic - not syncing: Oops - BUG: Fatal exception"}[arch]


@pytest.mark.parametrize("arch", ARCHES)
def test_a_panic_at_boot(arch):
    text = load(f"{arch}-panic-at-boot.log")
    [p] = scan(text)
    assert (p.kind, p.fatal) == ("panic", True)
    assert p.title == "Kernel panic - not syncing: iommufd-harness fault fixture: panic in iommufd_init"
    assert "iommufd-harness: RUN" not in text


@pytest.mark.parametrize("arch", ARCHES)
def test_a_warning_at_boot_before_any_test(arch):
    text = load(f"{arch}-warn-at-boot.log")
    [w] = scan(text)
    assert w.kind == "warning" and not w.fatal and during(text, w) is None
    assert w.text.splitlines()[1] == "iommufd-harness fault fixture: warning in iommufd_init"
    assert w.start < text.index("iommufd-harness: RUN")


def test_refcount_underflow_includes_its_warning():
    text = load("x86_64-refcount-underflow.log")
    [rc] = scan(text)
    assert rc.kind == "refcount" and not rc.fatal
    assert rc.title == rc.signature == "refcount_t: underflow; use-after-free."
    lines = rc.text.splitlines()
    assert lines[0] == "------------[ cut here ]------------"
    assert re.match(r"WARNING: CPU: \d+ PID: \d+ at lib/refcount\.c:\d+ refcount_warn_saturate", lines[2])
    assert lines[-1].startswith("---[ end trace ")


def test_ubsan_array_bounds():
    text = load("x86_64-ubsan.log")
    [u] = scan(text)
    assert u.kind == "ubsan" and not u.fatal
    # UBSAN prints the path the compiler was given (here relative to the build dir,
    # which ccache's base dir makes the same for every checkout); the signature keeps the tree's own
    m = re.fullmatch(r"UBSAN: array-index-out-of-bounds in \.\./\.\./\.\./src/debian-6\.12/"
                     r"(drivers/misc/lkdtm/bugs\.c:\d+:\d+)", u.title)
    assert m, u.title
    assert u.signature == f"UBSAN: array-index-out-of-bounds in {m.group(1)}"
    # the same report from a build without ccache (an absolute path) or one that printed the
    # tree's path groups with it; a path that already starts in the tree is left alone
    for where in ("/home/me/linux/", "", "../../src/"):
        title = u.title.replace("../../../src/debian-6.12/", where)
        assert signature(title) == u.signature, title
    assert u.text.splitlines()[-1].startswith("---[ end trace")


def test_a_hung_task():
    text = load("x86_64-hung-task.log")
    found = scan(text)
    assert kinds(found)[:1] == [("hung_task", False)]
    assert re.fullmatch(r"INFO: task \S+:\d+ blocked for more than \d+ seconds\.", found[0].title)
    # a hang's bug is where it waits: LKDTM's HUNG_TASK sleeps in schedule() itself
    assert found[0].signature == "hung in lkdtm_HUNG_TASK <- schedule"
    assert found[0].text.splitlines()[-1] == " </TASK>"
    assert "lkdtm_HUNG_TASK" in found[0].text
    # the same task reported again later is the same bug
    assert len(found) >= 2 and list(group(found)) == [found[0].signature]


@pytest.mark.parametrize("arch", ARCHES)
def test_a_deadlocked_test_s_blocked_task_and_where_it_hangs(arch):
    """The default kernel reports nothing of a task asleep for ever in
    mutex_lock; the stacks the harness asks for (sysrq w) are no report of
    the kernel's, but give the hung task's stack and where it waits."""
    text = load(f"{arch}-deadlock.log")
    assert scan(text) == []
    [task] = blocked_tasks(text)
    assert task.kind == "hang" and not task.fatal
    assert re.fullmatch(r"task iommufd:\d+ blocked \(state D\)", task.title)
    assert task.signature == "hung in iommufd_access_rw <- mutex_lock"
    lines = task.text.splitlines()
    assert lines[0].startswith("task:iommufd ") and any(re.match(r" iommufd_access_rw\+0x", ln) for ln in lines)
    assert text[task.start] == "[" and "iommufd-harness: DUMP" not in task.text
    # the dump as it came: a chunk of the log that ends before the dump does finds nothing
    assert blocked_tasks(text[:text.index("sysrq: Show Blocked State")]) == []


def test_a_deadlock_on_the_debug_kernel_one_bug_three_ways():
    """lockdep names the recursive mutex_lock before the task sleeps; the
    hung-task detector and the harness's dump then show the same task, and
    both say where it hangs alike (the unwinder's "? " guesses left out)."""
    text = load("x86_64-deadlock-debug.log")
    found = scan(text)
    assert [s.kind for s in found][:2] == ["lockdep", "hung_task"]
    assert found[0].title == "WARNING: possible recursive locking detected"
    assert found[1].signature == "hung in iommufd_access_rw <- mutex_lock"
    [task] = blocked_tasks(text)
    assert task.signature == found[1].signature and task.title.startswith("task iommufd:")
    assert task.start > found[1].end  # the last dump, not the task block inside the hung-task report


def test_a_soft_lockup_and_the_rcu_stall_it_causes():
    text = load("x86_64-soft-lockup.log")
    found = scan(text)
    lockups = [s for s in found if s.kind == "lockup"]
    stalls = [s for s in found if s.kind == "rcu_stall"]
    assert lockups and stalls and not any(s.fatal for s in found)
    assert re.fullmatch(r"watchdog: BUG: soft lockup - CPU#\d+ stuck for \d+s! \[\S+:\d+\]", lockups[0].title)
    assert len({s.signature for s in lockups}) == 1
    assert "lkdtm_SOFTLOCKUP" in lockups[0].text
    assert all(s.title.startswith("rcu: INFO: rcu_") for s in stalls)


@pytest.mark.parametrize("arch", ARCHES)
def test_sysrq_crash_panic(arch):
    text = load(f"{arch}-sysrq-crash.log")
    [p] = scan(text)
    assert (p.kind, p.fatal) == ("panic", True)
    assert p.title == "Kernel panic - not syncing: sysrq triggered crash"
    lines = p.text.splitlines()
    assert lines[0] == "sysrq: Trigger a crash"
    assert any(re.match(r"\s+__handle_sysrq\+0x", ln) for ln in lines)


# -- consistency over every log ------------------------------------------------------


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
        assert s.signature == ((s.kind == "hung_task" and hang_signature(frames(s.text)))
                               or signature(s.title, s.text if s.kind in ("bug", "oops") else ""))
        assert "iommufd-harness: RUN" not in s.text and "iommufd-harness: END" not in s.text


@pytest.mark.parametrize("name", ALL_LOGS)
def test_any_chunking_gives_each_splat_once(name):
    text = load(name)
    expected = scan(text)
    for seed in range(4):
        rng = random.Random(seed)
        assert chunked(text, (rng.randint(1, 300) for _ in range(len(text)))) == expected, seed


# -- scanning a console that grows -------------------------------------------------


def test_one_character_at_a_time():
    text = load("x86_64-bug-in-access-rw.log")
    assert chunked(text, [1] * len(text)) == scan(text)


def test_incremental_waits_for_the_end_and_reports_once():
    text = load("x86_64-warn-in-access-rw.log")
    mid = text.index(" iommufd_test+0x")  # inside the call trace
    sc = SplatScanner()
    assert sc.feed(text[:mid]) == [] and sc.busy
    end = text.index("---[ end trace")
    assert sc.feed(text[mid:end + 5]) == []  # the end marker line is not complete yet
    # Complete, but held back for a while in case a panic follows (panic_on_warn)...
    nl = text.index("\n", end) + 1
    assert sc.feed(text[end + 5:nl]) == [] and not sc.busy
    # ... until enough further lines arrive.
    [w] = sc.feed(text[nl:])
    assert w.kind == "warning" and not w.fatal
    assert sc.flush() == []


def test_a_finished_report_waits_briefly_for_a_panic():
    text = load("x86_64-warn-panic-on-warn.log")
    cut = text.index("Kernel panic - not syncing")
    cut = text.rindex("\n", 0, cut) + 1  # the start of the panic's line
    sc = SplatScanner()
    assert sc.feed(text[:cut]) == []  # the warning is complete, but a panic may follow
    warn, = sc.feed(text[cut:])  # the panic arrived: the warning is released, fatal
    assert warn.kind == "warning" and warn.fatal
    panic, = sc.flush()
    assert panic.kind == "panic" and panic.fatal


def test_settle_releases_what_is_pending():
    text = load("x86_64-hung-task.log")
    first, second = scan(text)
    head = text[:text.index("\n", first.end) + 1]  # the log up to the first report's last line
    sc = SplatScanner()
    assert sc.feed(head) == [] and sc.busy  # trailer lines could still come
    assert [s.title for s in sc.settle()] == [first.title]
    assert [s.title for s in sc.feed(text[len(head):]) + sc.flush()] == [second.title]


def test_offset_shifts_positions():
    text = load("x86_64-refcount-underflow.log")
    [a] = scan(text)
    [b] = scan(text, offset=1000)
    assert (b.start, b.end) == (a.start + 1000, a.end + 1000)
    sc = SplatScanner(offset=1000)
    assert [(s.start, s.end) for s in sc.feed(text) + sc.flush()] == [(b.start, b.end)]


def test_flush_takes_an_unterminated_last_line():
    text = load("x86_64-panic-at-boot.log")
    [p] = scan(text)
    cut = text[:text.index("\n", p.start)].rstrip("\r")  # the log ends in the middle of the panic
    found = scan(cut)
    assert [s.title for s in found] == [p.title] and found[0].end == len(cut)


def test_userspace_flood_ends_an_unfinished_report():
    text = load("x86_64-lock-inversion.log")
    [ld] = scan(text)
    cut = text.rindex("\n", 0, text.index("stack backtrace:", ld.start)) + 1
    head = text[ld.start:cut]  # no call trace yet
    sc = SplatScanner()
    assert sc.feed(head) == []
    found = sc.feed("userspace line\r\n" * (splats.QUIET_LINES + splats.HOLD_LINES))
    assert [s.kind for s in found] == ["lockdep"]
    last = [ln for ln in found[0].text.splitlines() if ln.strip()][-1]
    assert last.startswith(" #0: ")  # the held lock: the last line before the trace


def test_a_clock_jump_ends_a_report():
    """The kernel prints a report in one burst: a line 30 s later is not part
    of it (the report's second half, moved 30 s on, is cut off)."""
    text = load("x86_64-lock-inversion.log")
    [ld] = scan(text)
    cut = text.index("stack backtrace:", ld.start)
    cut = text.rindex("\n", 0, cut) + 1
    later = re.sub(r"^\[\s*(\d+\.\d+)\]", lambda m: f"[{float(m.group(1)) + 30:12.6f}]", text[cut:ld.end],
                   flags=re.M)
    [s] = scan(text[:cut] + later)
    assert "stack backtrace:" not in s.text and " *** DEADLOCK ***" in s.text


def test_report_length_is_capped(monkeypatch):
    text = load("x86_64-lock-inversion.log")
    monkeypatch.setattr(splats, "MAX_LINES", 20)
    [s] = scan(text)
    assert len(s.text.splitlines()) == 20 and s.title == "WARNING: possible circular locking dependency detected"


@pytest.mark.parametrize("arch", ARCHES)
def test_logs_without_timestamps(arch):
    """dmesg without printk times: every line is the kernel's."""
    text = load(f"{arch}-bug-in-access-rw.log")
    kernel_only = "".join(line for line in text.splitlines(keepends=True) if STAMP.match(line))
    stripped = re.sub(r"^\[\s*\d+\.\d+\] ?", "", kernel_only, flags=re.MULTILINE)
    assert [(s.kind, s.title, s.fatal) for s in scan(stripped)] == [
        (s.kind, s.title, s.fatal) for s in scan(text)]


def test_printk_caller_ids_and_levels():
    """The same WARN as 'dmesg -r' with CONFIG_PRINTK_CALLER shows it."""
    text = load("x86_64-warn-in-access-rw.log")
    [w] = scan(text)
    dmesg = re.sub(r"^(\[\s*\d+\.\d+\])", r"<4>\1[  T245]", text, flags=re.M)
    [s] = scan(dmesg)
    assert (s.title, s.text) == (w.title, w.text)


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
    # run-tests names each test's tasks "BINARY#N": the same bug in another test groups
    ("WARNING: iommufd#12/245 still has locks held!", "WARNING: iommufd#N/N still has locks held!"),
    ("BUG: soft lockup - CPU#1 stuck for 22s! [iommufd#7:91]", "BUG: soft lockup - CPU#N stuck for Ns! [iommufd#N:N]"),
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
    ("[ BUG: Invalid wait context ]", "lockdep"),
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
    [w] = scan(load("x86_64-warn-in-access-rw.log"))
    log = tmp_path / "logs" / "decode.log"
    out = decode(w, tree, vmlinux, log)
    frame = next(ln for ln in w.text.splitlines() if ln.startswith(" iommufd_test+0x"))
    assert out is not None and f"{frame} (x.c:1)" in out.splitlines()
    assert f"args: {vmlinux} {tree}" in log.read_text() and "exit status 0" in log.read_text()


def test_decoded_locations_are_named_as_the_tree_names_them(tmp_path):
    """addr2line joins the object's compile directory (this build's, or
    another checkout's: ccache shares objects) with the path the compiler
    was given; the decoded trace names drivers/..., as the kernel does.
    (The e2e test of the debug kernels decodes a real trace.)"""
    tree, vmlinux = fake_tree(tmp_path, f'echo " iommufd_access_rw ({tmp_path}/linux/../linux/drivers/iommu/a.c:12 '
                                        '/tmp/ci/work/trees/debian-6.12/build/x86_64+lockdep/../../src/'
                                        'drivers/iommu/b.h:3)"\n')
    [w] = scan(load("x86_64-warn-in-access-rw.log"))
    out = decode(w, tree, vmlinux, tmp_path / "decode.log")
    assert out == " iommufd_access_rw (drivers/iommu/a.c:12 drivers/iommu/b.h:3)\n"


def test_decode_unavailable_or_failing_gives_none(tmp_path):
    [w] = scan(load("x86_64-warn-in-access-rw.log"))
    log = tmp_path / "decode.log"
    assert decode(w, tmp_path / "no-tree", tmp_path / "vmlinux", log) is None
    tree, vmlinux = fake_tree(tmp_path, "echo broken >&2; exit 1\n")
    assert decode(w, tree, tmp_path / "missing-vmlinux", log) is None
    assert decode(w, tree, vmlinux, log) is None
    assert "broken" in log.read_text()
    assert decode(w, tree, vmlinux, Path("/proc/no/such/dir/log")) is None  # an unwritable log is no error


def test_decode_timeout_kills_the_script(tmp_path):
    tree, vmlinux = fake_tree(tmp_path, "sleep 60 &\nwait\n")
    [w] = scan(load("x86_64-warn-in-access-rw.log"))
    t0 = time.monotonic()
    assert decode(w, tree, vmlinux, tmp_path / "decode.log", timeout=0.5) is None
    assert time.monotonic() - t0 < 10
    assert "timed out" in (tmp_path / "decode.log").read_text()
