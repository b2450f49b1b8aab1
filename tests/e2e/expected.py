"""What the end-to-end tests expect is what the tree under test says: its
version from its Makefile, its tests from its own selftest binaries."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("IOMMUFD_HARNESS_WORK", REPO / "work"))


@functools.lru_cache(maxsize=None)
def listed_tests(suite: str, *extra: str) -> tuple[str, ...]:
    """The tests ``suite`` selects, as ``iommufd-harness list-tests`` finds
    them in the built selftests of the default tree (builds if needed)."""
    res = subprocess.run([sys.executable, "-m", "harness", "list-tests", "--work", str(WORK), "--quiet",
                          "--suite", suite, *extra], cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    names = tuple(line.split()[1] for line in res.stdout.splitlines() if line.strip())
    assert names, f"suite {suite} selects no test"
    return names


@functools.lru_cache(maxsize=None)
def default_tree_version() -> str:
    """The release of the default tree (Debian's linux-source), from its Makefile."""
    from harness.stages import source
    from harness.workdir import WorkDir

    return source.kernel_version(source.debian_origin(WorkDir(WORK).prepare()).path)


# What tests/fixtures/kernel-patches/pin-more-than-8-pages-fails.patch breaks: every test
# of the access suite that pins more than 8 pages.
PIN_VARIANTS = ("no_domain", "mock_domain", "two_mock_domain", "mock_domain_limit")
PIN_USER_COPY = ("one_domain", "two_domains", "one_domain_hugepage", "two_domains_hugepage")
PINNING_BROKEN = frozenset({f"iommufd_ioas.{v}.{t}" for v in PIN_VARIANTS for t in ("access_pin", "access_pin_unmap")}
                           | {f"iommufd_mock_domain.{v}.user_copy" for v in PIN_USER_COPY})
