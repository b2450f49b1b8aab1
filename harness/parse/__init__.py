"""Parsers for what the kernel and the selftests print; pure functions and
line-driven scanners with no I/O of their own.

    tap       TAP/KTAP from kselftest_harness and kselftest's runner
    splats    kernel reports (WARN, BUG, KASAN, lockdep, ...) in a console log
    testlist  the ``-l`` table a selftest binary prints
"""
