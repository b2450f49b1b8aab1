"""History across nights: the merged results of earlier nights under one
results root, read back.

    ROOT/<night>/merged.json, ROOT/<night>/<cell>/results.json   (iommufd-harness nightly)

For every cell and test: its status on each of the last N nights, the night
it started failing (the first of the failing nights that end with tonight),
how often its result changed from one night to the next (its flaky rate),
and what changed since the previous night: tests that broke, tests that
were fixed, new and vanished tests, cells that gave no verdict.  A night on
which a cell gave no verdict (its board unreachable, its deploy failed, its
build broken) is "error" for its tests: unknown, never a failure, and it
neither starts nor ends a failing streak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.reports import merge
from harness.reports.html import by_test  # noqa: F401 - grouped as report.html shows them
from harness.reports.markdown import code, esc
from harness.reports.results import BAD, no_verdict_cause

UNKNOWN = "error"  # the cell gave no verdict that night
FAILING = BAD - {"notrun"}


@dataclass
class Night:
    name: str
    path: Path
    cells: dict[str, merge.Cell]  # by cell name

    def status(self, cell: str, test: str) -> str | None:
        """The test's status that night; UNKNOWN when its cell gave no
        verdict and has no record of it; None when it did not run."""
        c = self.cells.get(cell)
        if c is None:
            return None
        for t in c.run.tests:
            if t.name == test:
                return t.status
        return UNKNOWN if c.run.verdict == "error" else None


@dataclass
class History:
    nights: list[Night]
    tests: list[dict] = field(default_factory=list)
    changes: dict = field(default_factory=dict)

    @property
    def tonight(self) -> Night:
        return self.nights[-1]

    def to_json(self) -> dict:
        return {"schema": 1, "nights": [n.name for n in self.nights], "changes": self.changes, "tests": self.tests}

    def summary_head(self) -> list[str]:
        """What leads the night's summary.md (see :func:`markdown`)."""
        return markdown(self)


def nights(root: Path, last: int, tonight: Path | None = None) -> list[Night]:
    """The nights under ``root`` (directories holding merged.json) in the
    order they ran (their first cell's start; the name for equal ones), the
    last ``last`` of them up to ``tonight``."""
    found = [p for p in root.iterdir() if (p / "merged.json").is_file()] if root.is_dir() else []

    def started(p: Path) -> str:
        try:
            return str(json.loads((p / "merged.json").read_text()).get("started") or "")
        except (OSError, ValueError):
            return ""

    every = sorted(found, key=lambda p: (started(p), p.name))
    if tonight is not None:
        at = next((i for i, p in enumerate(every) if p.resolve() == tonight.resolve()), None)
        every = every[:at + 1] if at is not None else []
    # only the nights looked back over are read in full
    return [Night(p.name, p, {c.name: c for c in merge.cells([p])}) for p in every[-last:]]


def _first_failing(statuses: list[str | None], names: list[str]) -> str | None:
    """The first night of the failing streak that ends with the last night."""
    if statuses[-1] not in FAILING:
        return None
    first = None
    for name, s in zip(reversed(names), reversed(statuses)):
        if s in FAILING:
            first = name
        elif s in (None, UNKNOWN):
            continue  # unknown or not run: the streak goes on through it
        else:
            break
    return first


def _flaky_rate(statuses: list[str | None]) -> float:
    known = [s in FAILING for s in statuses if s not in (None, UNKNOWN, "skip")]
    if len(known) < 2:
        return 0.0
    flips = sum(a != b for a, b in zip(known, known[1:]))
    return round(flips / (len(known) - 1), 3)


def build(root: Path, tonight: Path, last: int = 14) -> History:
    ns = nights(root, last, tonight)
    if not ns or ns[-1].path.resolve() != tonight.resolve():
        raise ValueError(f"{tonight} is not a night under {root} (no merged.json)")
    h = History(ns)
    names = [n.name for n in ns]
    keys: dict[tuple[str, str], None] = {}
    for n in ns:
        for cname, c in n.cells.items():
            for t in c.run.tests:
                keys[(cname, t.name)] = None
    for cname, test in keys:
        statuses = [n.status(cname, test) for n in ns]
        h.tests.append({"cell": cname, "test": test, "statuses": statuses,
                        "first_failing": _first_failing(statuses, names), "flaky_rate": _flaky_rate(statuses)})
    h.changes = changes(h)
    return h


def changes(h: History) -> dict:
    """What changed since the previous night (for each cell: the previous
    night it ran)."""
    out: dict = {"previous": h.nights[-2].name if len(h.nights) > 1 else None, "broke": [], "fixed": [],
                 "new": [], "vanished": [], "no_verdict": [], "verdict_again": [], "new_cells": []}
    tonight = h.tonight
    for cname, c in tonight.cells.items():
        prev = next((n for n in reversed(h.nights[:-1]) if cname in n.cells), None)
        if prev is None:
            if len(h.nights) > 1:
                out["new_cells"].append(cname)
            continue
        p = prev.cells[cname]
        if c.run.verdict == "error" and p.run.verdict != "error":
            out["no_verdict"].append({"cell": cname, "since": prev.name, "error": (c.run.errors or ["?"])[0],
                                      "cause": no_verdict_cause(c.run.errors)})
        if c.run.verdict != "error" and p.run.verdict == "error":
            out["verdict_again"].append(cname)
        if c.run.verdict == "error" or p.run.verdict == "error":
            continue  # nothing is known to have changed in its tests
        now = {t.name: t for t in c.run.tests}
        before = {t.name: t for t in p.run.tests}
        for name, t in now.items():
            b = before.get(name)
            item = {"cell": cname, "test": name, "was": b.status if b else None, "is": t.status,
                    "since": prev.name}
            if b is None:
                out["new"].append(item)
            elif t.status in FAILING and b.status not in FAILING:
                out["broke"].append({**item, "reason": t.reason})
            elif b.status in FAILING and t.status not in FAILING:
                out["fixed"].append(item)
        for name, b in before.items():
            if name not in now:
                out["vanished"].append({"cell": cname, "test": name, "was": b.status, "since": prev.name})
    return out


def markdown(h: History) -> list[str]:
    """The head of a night's summary.md: what changed since the previous
    night, then the tests failing tonight with the night they started."""
    ch = h.changes
    out = [f"#### Since the previous night ({code(ch['previous']) if ch['previous'] else 'none: the first night'})",
           ""]
    said = False
    for key, title in (("broke", "broke"), ("fixed", "fixed")):
        for g in by_test(ch[key]):
            said = True
            out.append(f"- **{title}**: {code(g['test'])} on {', '.join(esc(c) for c in g['cells'])} "
                       f"({g['was']} -> {g['is']})" + (f": {esc(g['reason'], 160)}" if g["reason"] else ""))
    for x in ch["no_verdict"]:
        said = True
        out.append(f"- **no verdict** on {esc(x['cell'])} ({esc(x['cause'])}): "
                   f"{esc(x['error'].splitlines()[0], 200)}")
    for c in ch["verdict_again"]:
        said = True
        out.append(f"- {esc(c)} gave a verdict again")
    for key, title in (("new", "new test"), ("vanished", "vanished test")):
        if ch[key]:
            said = True
            shown = ", ".join(f"{code(x['test'])} on {esc(x['cell'])}" for x in ch[key][:10])
            out.append(f"- {len(ch[key])} {title}{'s' if len(ch[key]) != 1 else ''}: {shown}"
                       + (" and more" if len(ch[key]) > 10 else ""))
    for c in ch["new_cells"]:
        said = True
        out.append(f"- new cell {esc(c)}")
    if not said and ch["previous"]:
        out.append("- nothing: every cell and test as the night before")
    failing = [t for t in h.tests if t["first_failing"]]
    if failing:
        out += ["", f"Failing tonight ({len(failing)}), over the last {len(h.nights)} night"
                    f"{'s' if len(h.nights) != 1 else ''}:", "",
                "| cell | test | failing since | history (oldest first) | flaky rate |", "| --- | --- | --- | --- | ---: |"]
        for t in failing[:30]:
            strip = " ".join({None: "·", UNKNOWN: "?"}.get(s, s) for s in t["statuses"])
            out.append(f"| {esc(t['cell'])} | {code(t['test'])} | {code(t['first_failing'])} | {strip} | "
                       f"{t['flaky_rate']:.2f} |")
    return out + [""]
