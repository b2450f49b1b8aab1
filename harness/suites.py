"""Test plans from selftests/suites/*.toml (or a file of the user's, by path),
and selection by name."""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness import data
from harness.errors import InputError

SUITE_DIR = data.folder("selftests") / "suites"
DEFAULT_SUITE = "access"


@dataclass(frozen=True)
class SuiteRun:
    binary: str
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    runs: tuple[SuiteRun, ...]
    per_test_timeout: float  # seconds, on the default kernel under TCG
    stall_s: float = 5.0  # a test task asleep in the kernel this long without running has hung


@dataclass(frozen=True)
class Selection:
    """binary -> test names, in the order the binary runs them."""

    tests: dict[str, tuple[str, ...]]
    unmatched: tuple[str, ...]  # suite patterns that matched nothing (a warning)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.tests.values())


def available(directory: Path = SUITE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def load(name: str, directory: Path = SUITE_DIR) -> Suite:
    name, path = data.named_file(name, directory)
    if not path.is_file():
        raise InputError(f"unknown suite {name!r}", f"available suites: {', '.join(available(directory))}")
    try:
        doc = tomllib.loads(path.read_text())
        runs = tuple(SuiteRun(r["binary"], tuple(r["tests"])) for r in doc["run"])
        return Suite(name, doc.get("description", ""), runs, float(doc.get("per_test_timeout", 120)),
                     float(doc.get("stall_s", 5)))
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"suite {path} is invalid: {type(e).__name__}: {e}") from None


def select(suite: Suite, available_tests: dict[str, list[str]], name_glob: str | None = None) -> Selection:
    """The suite's tests that exist in the binaries, optionally narrowed by
    ``name_glob`` (fnmatch on fixture.variant.test; several separated by ',')."""
    tests: dict[str, tuple[str, ...]] = {}
    unmatched = []
    globs = [g.strip() for g in name_glob.split(",")] if name_glob else None
    for run in suite.runs:
        names = available_tests.get(run.binary, [])
        chosen = set()
        for pattern in run.patterns:
            hits = fnmatch.filter(names, pattern)
            if not hits:
                unmatched.append(f"{run.binary}: {pattern}")
            chosen.update(hits)
        if globs is not None:
            chosen = {n for n in chosen if any(fnmatch.fnmatchcase(n, g) for g in globs)}
        ordered = tuple(n for n in names if n in chosen)
        if ordered:
            tests[run.binary] = tests.get(run.binary, ()) + ordered
    sel = Selection(tests, tuple(unmatched))
    if sel.count == 0:
        if globs is not None:
            raise InputError(f"--tests {name_glob!r} matches no test of suite {suite.name!r}",
                             "list the tests with 'iommufd-harness list-tests'")
        raise InputError(f"suite {suite.name!r} selects no test in this kernel's selftests")
    return sel
