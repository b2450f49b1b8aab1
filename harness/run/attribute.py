"""Where a kernel report goes when the tests' markers do not say: the task
it names, the phase of a pass it happened in, the tests lockdep no longer
checked after it."""

from __future__ import annotations

import re

# the task a kernel report is about: its dump_stack header, or KASAN's "by task"
_REPORT_COMM = (re.compile(r"^CPU: \d+ (?:UID: \d+ )?PID: \d+ Comm: (\S+)", re.M),
                re.compile(r"\bby task (\S+)/\d+"))


def report_comm(text: str) -> str | None:
    """The name (comm) of the task a kernel report names, or None."""
    for rx in _REPORT_COMM:
        m = rx.search(text)
        if m:
            return m.group(1)
    return None


def unchecked_after(report_pos: int, ran: dict[str, int]) -> list[str]:
    """The tests (of ``ran``: name -> RUN marker position, one boot's kernel
    log) that started after a report at ``report_pos``: after lockdep's first
    report it turns itself off, so they ran without lock checking."""
    return [name for name, pos in sorted(ran.items(), key=lambda kv: kv[1]) if pos > report_pos]


def phase(pos: int, first_test: int | None, last_test_end: int | None, after_boot: bool) -> str:
    """Where in a pass a kernel report at log position ``pos`` happened, when
    no test's RUN/END markers enclose it: before the first test (at boot, on
    a pass right after booting), after the last one, or between two."""
    if first_test is None or pos < first_test:
        return "boot" if after_boot else "between tests"
    if last_test_end is not None and pos >= last_test_end:
        return "after tests"
    return "between tests"
