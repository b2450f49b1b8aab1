"""Following a console log: where the kernel started to die comes from the
same detector as the kernel reports."""

import re

from harness.targets.console import ConsoleWatcher


def test_console_watcher_spots_a_panic(golden, tmp_path):
    text = (golden / "console" / "x86_64-panic-at-boot.log").read_bytes().decode()
    cut = text.index("Kernel panic - not syncing")
    log = tmp_path / "console.log"
    log.write_bytes(text[:cut].encode())
    w = ConsoleWatcher(log)
    w.poll()
    assert w.panic_at is None
    with open(log, "ab") as f:
        f.write(text[cut:].encode())
    w.poll()
    assert w.panic_at is not None
    assert "fault fixture: panic in iommufd_init" in w.excerpt()


def _watch(tmp_path, text, chunk=997):
    log = tmp_path / "console.log"
    log.write_text("")
    w = ConsoleWatcher(log)
    for i in range(0, len(text), chunk):  # as QEMU writes it: in pieces
        with open(log, "a") as f:
            f.write(text[i:i + chunk])
        w.poll()
    return w


def test_a_panic_points_at_the_report_that_caused_it(golden, tmp_path):
    w = _watch(tmp_path, (golden / "console" / "x86_64-bug-in-access-rw.log").read_bytes().decode())
    assert w.panic_at is not None
    first, second = w.text[w.panic_at:].splitlines()[:2]
    assert first.endswith("------------[ cut here ]------------")
    assert "kernel BUG at drivers/iommu/iommufd/device.c:" in second
    assert "Fatal exception" in w.excerpt()


def test_panic_text_printed_by_userspace_is_not_a_panic(golden, tmp_path):
    text = (golden / "console" / "x86_64-userspace-quotes.log").read_bytes().decode()
    assert "\nKernel panic - not syncing: only a userspace echo" in text.replace("\r", "")
    assert _watch(tmp_path, text).panic_at is None


def test_a_last_line_without_newline_counts_once_the_log_is_complete(golden, tmp_path):
    text = (golden / "console" / "x86_64-panic-at-boot.log").read_bytes().decode()
    cut = text.index("Kernel panic - not syncing")
    end = text.index("\n", cut)
    log = tmp_path / "console.log"
    log.write_bytes(text[:end].rstrip("\r").encode())  # QEMU is gone in the middle of the panic's output
    w = ConsoleWatcher(log)
    w.poll()
    assert w.panic_at is None  # QEMU may still be writing that line
    w.finish()  # ... and now it is gone
    line_start = text.rindex("\n", 0, cut) + 1
    assert w.panic_at == line_start and "Kernel panic - not syncing" in w.text[w.panic_at:]


def test_a_boot_marker_read_in_two_pieces_is_seen(golden, tmp_path):
    """QEMU writes the console as the guest prints it: a poll may end in the
    middle of the marker line, and the next one reads the rest."""
    marker = "iommufd-harness: sshd started"
    text = (golden / "console" / "x86_64-bug-in-access-rw.log").read_bytes().decode()
    at = text.index(marker)
    for cut in range(at, at + len(marker) + 1):
        log = tmp_path / f"console-{cut}.log"
        log.write_text(text[:cut])
        w = ConsoleWatcher(log, watch=(marker,))
        w.poll()
        with open(log, "a") as f:
            f.write(text[cut:])
        w.poll()
        assert marker in w.markers, cut


def test_lanes_reading_the_log_at_once_see_each_report_once(golden, tmp_path):
    """--parallel: every lane's thread reads the log as it grows; each byte is
    appended once and each report found once, whoever read it."""
    import threading

    text = (golden / "console" / "x86_64-warn-in-access-rw.log").read_bytes().decode()
    log = tmp_path / "console.log"
    log.write_text("")
    w = ConsoleWatcher(log)
    done = threading.Event()

    def reader():
        while not done.is_set():
            w.find(re.compile("never printed"))

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    copies = 20
    try:
        for _ in range(copies):
            for i in range(0, len(text), 211):
                with open(log, "a") as f:
                    f.write(text[i:i + 211])
    finally:
        done.set()
        for t in readers:
            t.join()
    w.finish()
    assert w.text == text * copies
    one = len(ConsoleWatcher(log).claim(0, len(text), final=True))  # the reports of one copy
    assert one >= 1
    assert len(w.claim(0, None, final=True)) == one * copies
