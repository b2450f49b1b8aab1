"""The table a kselftest_harness binary prints for ``-l``."""

from __future__ import annotations


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
