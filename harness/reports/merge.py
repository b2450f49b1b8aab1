"""Many results directories as one verdict (``report --merge``, and the
top directory of a ``run --profiles`` matrix): the cells of a matrix run on
one machine, or on many (CI jobs sharded over profiles and suites, labgrid
places), joined into

    merged.json   the verdict, and per cell: where, verdict, counts, errors
    summary.md    the matrix, then every cell's failures and errors
    report.html   the same as one static page: test x cell, click for the log
    junit.xml     <testsuites>: each cell's <testsuite> as its own junit.xml has it
    kcidb.json    every cell's KCIDB data in one submission (a checkout or
                  build two cells share appears once)

The verdict is the matrix run's: error if any cell gave no verdict (a cell
whose board was unreachable or whose deploy failed is shown as that and is
never counted as a kernel regression, but the matrix is incomplete), else
fail if any cell failed, else pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.errors import EXIT_ERROR, EXIT_FAIL, EXIT_PASS, InputError, ToolMissing
from harness.reports import html
from harness.reports.junit import junit_xml
from harness.reports.markdown import block, code, esc, failure_lines, load_run
from harness.reports.results import BAD, STATUSES, Cell, no_verdict_cause  # noqa: F401 - Cell: merge's unit
from harness.reports.resultsdir import atomic_write

VERDICT_ORDER = ("pass", "fail", "error")  # the worse one wins


def find_results(paths: list[Path]) -> list[Path]:
    """Every results dir given, or under one given (a matrix's top
    directory, a directory of CI artifacts): any depth, in name order."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if (p / "results.json").is_file():
            found.append(p)
        elif p.is_file() and p.name == "results.json":
            found.append(p.parent)
        elif p.is_dir():
            inner = sorted(f.parent for f in p.rglob("results.json"))
            if not inner:
                raise InputError(f"{p} holds no results.json, at any depth",
                                 "pass results dirs written by 'iommufd-harness run' (or directories holding them)")
            found += inner
        else:
            raise InputError(f"{p} does not exist", "pass results dirs written by 'iommufd-harness run'")
    return list(dict.fromkeys(f.resolve() for f in found))


def cells(paths: list[Path]) -> list[Cell]:
    out: list[Cell] = []
    for path in find_results(paths):
        c = Cell("", path, load_run(path))
        c.name = c.default_name()
        out.append(c)
    seen: dict[str, int] = {}
    for c in out:
        seen[c.name] = seen.get(c.name, 0) + 1
    for c in out:  # the same cell twice (two nights, two shards): told apart by where it is
        if seen[c.name] > 1:
            c.name += f" ({c.path.name})"
    return out


def verdict(cs: list[Cell]) -> str:
    return max((c.run.verdict for c in cs), key=VERDICT_ORDER.index, default="error")


def exit_code(v: str) -> int:
    return {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(v, EXIT_ERROR)


def merged_json(cs: list[Cell]) -> dict:
    total = {s: 0 for s in STATUSES}
    for c in cs:
        for s, n in c.run.counts().items():
            total[s] += n
    started = min((c.run.started for c in cs if c.run.started), default="")
    return {"schema": 1, "verdict": verdict(cs), "started": started, "counts": total, "cells": [{
        "name": c.name, "results_dir": str(c.path), "where": c.where, "profile": c.run.profile,
        "suite": c.run.suite, "debug": c.debug, "verdict": c.run.verdict, "counts": c.run.counts(),
        "errors": c.run.errors, "kernel": {k: c.run.kernel.get(k, "") for k in ("version", "build_id", "arch")},
        "failed": [t.name for t in c.run.tests if t.status in BAD],
    } for c in cs]}


def junit(cs: list[Cell]) -> str:
    top = ET.Element("testsuites", {"name": "iommufd-harness"})
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for c in cs:
        suite = ET.fromstring(junit_xml(c.run).split("\n", 1)[1])
        suite.set("name", f"iommufd-harness.{c.name.replace(' ', '.')}")
        for k in totals:
            totals[k] += int(suite.get(k, "0"))
        top.append(suite)
    for k, v in totals.items():
        top.set(k, str(v))
    ET.indent(top)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(top, encoding="unicode") + "\n"


def kcidb_data(cs: list[Cell]) -> dict:
    from harness.reports import kcidb

    out: dict = {"checkouts": [], "builds": [], "tests": []}
    seen: set[str] = set()
    runs: set[str] = set()
    for c in cs:
        run = c.run
        rid = kcidb.run_id(run)
        if rid in runs:  # two cells' dirs of one name (every CI job's "results"): tests of their own
            tag = hashlib.sha256(f"{c.name}|{c.path}".encode()).hexdigest()[:8]
            run = dataclasses.replace(run, results_dir=f"{rid}-{tag}")
        runs.add(kcidb.run_id(run))
        data = kcidb.to_kcidb(run)
        out["version"] = data["version"]
        for kind in ("checkouts", "builds", "tests"):
            for obj in data[kind]:
                if obj["id"] not in seen:
                    seen.add(obj["id"])
                    out[kind].append(obj)
    return out


def summary(cs: list[Cell]) -> str:
    v = verdict(cs)
    bad = [c for c in cs if c.run.verdict != "pass"]
    out = [f"### iommufd-harness: {v.upper()}", "",
           f"**Verdict: {v.upper()}** over {len(cs)} cell{'s' if len(cs) != 1 else ''}"
           + (f": {len(cs) - len(bad)} passed, "
              + ", ".join(f"{n} {w}" for w, n in (("failed", sum(c.run.verdict == 'fail' for c in cs)),
                                                   ("without a verdict", sum(c.run.verdict == 'error' for c in cs)))
                          if n)
              if bad else ": all passed") + ".", ""]
    shown = [s for s in STATUSES if any(c.run.counts()[s] for c in cs)]
    out += ["| cell | verdict | " + " | ".join(shown) + " | results |",
            "| --- | --- | " + " | ".join("---:" for _ in shown) + " | --- |"]
    for c in cs:
        n = c.run.counts()
        out.append(f"| {esc(c.name)} | {c.run.verdict} | " + " | ".join(str(n[s]) for s in shown)
                   + f" | {code(str(c.path), 300)} |")
    for c in bad:
        out += ["", f"#### {esc(c.name)}: {c.run.verdict}", ""]
        if c.run.errors:
            what = f"{no_verdict_cause(c.run.errors)}: " if c.run.verdict == "error" and not \
                [t for t in c.run.tests if t.status in BAD - {"notrun"}] else ""
            out += [f"{what}no verdict" if what else "errors:", "",
                    block([ln for e in c.run.errors for ln in e.splitlines()][:12]), ""]
        failed = [t for t in c.run.tests if t.status in BAD]
        for t in failed[:10]:
            out += [f"- {code(t.name)}: {t.status}" + (f" ({esc(t.reason, 160)})" if t.reason else "")]
            lines = failure_lines(t, 8)
            if lines:
                out += ["", block(lines), ""]
        if len(failed) > 10:
            out.append(f"- and {len(failed) - 10} more: see {code(str(c.path / 'summary.md'), 300)}")
    return "\n".join(out).rstrip("\n") + "\n"


def write(cs: list[Cell], dest: Path, warn=None, history=None) -> str:
    """The merged reports of ``cs`` into ``dest``; the verdict.
    ``history(dest)``, called once merged.json is written, may return a
    harness.reports.history.History: summary.md then leads with it and
    report.html shows it."""
    from harness.reports import kcidb

    if not cs:
        raise InputError("nothing to merge: no results dirs")
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write(dest / "merged.json", json.dumps(merged_json(cs), indent=2) + "\n")
    h = history(dest) if history is not None else None
    md = summary(cs)
    if h is not None:
        head, _, rest = md.partition("\n\n")
        md = head + "\n\n" + "\n".join(h.summary_head()) + "\n" + rest
    atomic_write(dest / "summary.md", md)
    atomic_write(dest / "junit.xml", junit(cs))
    atomic_write(dest / "report.html", html.render([(c.name, c.path, c.run) for c in cs], dest, verdict(cs),
                                                   history=h))
    try:
        data = kcidb_data(cs)
        try:
            kcidb.validate(data)
        except ToolMissing:
            pass  # written all the same, as for one run
        atomic_write(dest / "kcidb.json", json.dumps(data, indent=2) + "\n")
    except Exception as e:  # noqa: BLE001 - KCIDB must never cost the other reports
        (dest / "kcidb.json").unlink(missing_ok=True)
        if warn:
            warn(f"kcidb.json not written: {getattr(e, 'message', None) or e}")
    return verdict(cs)
