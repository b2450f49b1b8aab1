"""Test plans from selftests/suites/*.toml, and selection by name."""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError

REPO = Path(__file__).resolve().parent.parent
SUITE_DIR = REPO / "selftests" / "suites"
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
    per_test_timeout: float


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
    path = directory / f"{name}.toml"
    if not path.is_file():
        raise InputError(f"unknown suite {name!r}", f"available suites: {', '.join(available(directory))}")
    try:
        data = tomllib.loads(path.read_text())
        runs = tuple(SuiteRun(r["binary"], tuple(r["tests"])) for r in data["run"])
        return Suite(name, data.get("description", ""), runs, float(data.get("per_test_timeout", 120)))
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"suite {path} is invalid: {type(e).__name__}: {e}") from None


def parse_list(text: str) -> list[str]:
    """Full test names (``fixture[.variant].test``) from the table that a
    kselftest_harness binary prints for ``-l``.

    Per fixture block the first line names the fixture; the variant and test
    columns then run in parallel (not as a product), so the names are the
    product of the block's variants and tests.  Columns are 20 and 25
    characters wide unless a name is longer.
    """
    names: list[str] = []
    blocks: list[tuple[str, list[str], list[str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("# FIXTURE") or set(line.strip()) == {"-"}:
            continue
        if not line.startswith(" "):
            fixture = line.split()[0]
            blocks.append((fixture, [], []))
            rest = line[max(20, len(fixture)) + 1:]
        elif blocks:
            rest = line[21:]
        else:
            continue
        fixture, variants, tests = blocks[-1]
        if rest.startswith(" "):
            test = rest.strip()
        else:
            parts = rest.split(None, 1)
            variant = parts[0]
            variants.append(variant)
            test = rest[max(25, len(variant)) + 1:].strip()
        if test:
            tests.append(test)
    for fixture, variants, tests in blocks:
        for variant in variants or [""]:
            for test in tests:
                names.append(f"{fixture}.{variant}.{test}" if variant else f"{fixture}.{test}")
    return names


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
