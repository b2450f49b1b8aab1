"""The tests a selftest binary lists (``BINARY -l``), remembered by the
binary's content: the same binary always lists the same tests, and asking
the guest is a command of every run (a round trip under TCG).  A binary
not seen before, or one the cache has no sound entry for, is asked."""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import TargetError
from harness.parse.testlist import parse_list
from harness.reports.resultsdir import atomic_write
from harness.targets.base import Target
from harness.workdir import sha256_file


def list_tests(target: Target, binary: str) -> list[str]:
    path = f"{target.layout.selftest_dir}/{binary}"
    res = target.run([path, "-l"], 60)
    # kselftest_harness prints the table to stderr and exits with KSFT_SKIP (4)
    if res.exit_status not in (0, 4):
        raise TargetError(f"'{binary} -l' failed in the guest (status {res.exit_status}): {res.err_text[:500]}")
    names = parse_list(res.err_text)
    if not names:
        raise TargetError(f"'{binary} -l' listed no tests:\n{res.err_text[:500]}")
    return names


class TestLists:
    __test__ = False  # not a pytest class

    def __init__(self, cache: Path, binaries: dict[str, Path]):
        """``binaries``: name -> the file on this machine that the target
        runs under that name (copied into its image or onto the board)."""
        self.dir = cache / "test-lists"
        self.binaries = binaries

    def _entry(self, binary: str) -> Path | None:
        path = self.binaries.get(binary)
        try:
            return self.dir / f"{binary}-{sha256_file(path)}.json" if path is not None else None
        except OSError:
            return None

    def get(self, target: Target, binary: str) -> list[str]:
        entry = self._entry(binary)
        if entry is not None:
            try:
                names = json.loads(entry.read_text())
                if isinstance(names, list) and names and all(isinstance(n, str) and n for n in names):
                    return names
            except (OSError, ValueError):
                pass
        names = list_tests(target, binary)
        if entry is not None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                atomic_write(entry, json.dumps(names))
            except OSError:
                pass  # a cache that cannot be written costs a command next time, nothing else
        return names
