"""Following a console log: where the kernel started to die comes from the
same detector as the kernel reports."""

from harness.targets.console import ConsoleWatcher


def test_console_watcher_spots_a_panic(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("[    0.1] booting\n")
    w = ConsoleWatcher(log)
    w.poll()
    assert w.panic_at is None
    with open(log, "a") as f:
        f.write("[    2.0] Kernel panic - not syncing: Attempted to kill init!\n[    2.1] ---[ end Kernel panic ]---\n")
    w.poll()
    assert w.panic_at is not None
    assert "Attempted to kill init" in w.excerpt()


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
    w = _watch(tmp_path, (golden / "console" / "null-deref-panic.log").read_text())
    assert w.panic_at is not None
    assert "BUG: kernel NULL pointer dereference" in w.text[w.panic_at:].splitlines()[0]
    assert "Fatal exception" in w.excerpt()


def test_panic_text_printed_by_userspace_is_not_a_panic(golden, tmp_path):
    text = (golden / "console" / "clean-boot.log").read_text()
    assert "Kernel panic - not syncing: quoted in a test log" in text
    assert _watch(tmp_path, text).panic_at is None


def test_a_last_line_without_newline_counts_once_the_log_is_complete(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("[    1.000000] booting\n[    2.000000] Kernel panic - not syncing: VFS: Unable to mount root fs")
    w = ConsoleWatcher(log)
    w.poll()
    assert w.panic_at is None  # QEMU may still be writing that line
    w.finish()  # ... and now it is gone
    assert w.panic_at is not None and w.text[w.panic_at:].startswith("[    2.000000] Kernel panic")
