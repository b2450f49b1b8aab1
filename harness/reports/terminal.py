"""What a run prints at its end: the summary table and, over several
profiles, the matrix; the one table of colours for statuses and verdicts."""

from __future__ import annotations

import re

from harness.reports.results import BAD, STATUSES, RunRecord

COLORS = {"pass": "green", "fail": "red", "skip": "yellow", "timeout": "red", "crash": "bold red",
          "notrun": "magenta"}


def verdict_color(verdict: str) -> str:
    return {"pass": "green", "fail": "red"}.get(verdict, "bold red")


MAX_REPORTS = 5  # kernel reports listed in the summary (summary.md and results.json have them all)


def summary_table(run: RunRecord, console=None, verbose: bool = False) -> None:
    """The terminal summary, results first: the tests that did not pass (every
    test with ``verbose``; the progress lines already named them all), the
    kernel reports, then counts and the verdict.  The caller prints the
    reproducer lines after it."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(stderr=False)
    title = f"iommufd-harness: suite {run.suite} on {run.profile} (kernel {run.kernel.get('version', '?')})"
    # what did not pass first, in run order; with ``verbose`` the passing tests after them
    shown = [t for t in run.tests if t.status != "pass"] + ([t for t in run.tests if t.status == "pass"]
                                                            if verbose else [])
    if shown:
        table = Table(title=title, show_lines=False)
        table.add_column("test")
        table.add_column("status")
        table.add_column("time", justify="right")
        table.add_column("note", overflow="fold")
        for t in shown:
            note = t.reason or (first_failure_line(t.log) if t.status in BAD else "")
            table.add_row(escape(t.name), f"[{COLORS[t.status]}]{t.status}[/]", f"{t.duration_s:.1f}s",
                          escape(note))
        console.print(table)
    else:
        console.print(escape(title))
    splats = run.kernel.get("splats") or []
    if splats:
        omitted = int(run.kernel.get("splats_omitted") or 0)
        console.print(f"[bold red]kernel reports:[/] {len(splats) + omitted}")
        for s in splats[:MAX_REPORTS]:
            console.print(f"  [red]{escape(str(s.get('kind', '?')))}[/] in {escape(str(s.get('test') or '?'))}: "
                          f"{escape(str(s.get('title', ''))[:160])}", highlight=False)
        if len(splats) + omitted > MAX_REPORTS:
            console.print(f"  ... and {len(splats) + omitted - MAX_REPORTS} more (summary.md, console.log)")
    c = run.counts()
    counts = ", ".join(f"{c[s]} {s}" for s in STATUSES if c[s])
    color = verdict_color(run.verdict)
    console.print(f"[{color}]verdict: {run.verdict.upper()}[/]  ({counts or 'no tests'})")
    for e in run.errors:
        console.print(f"[bold red]error:[/] {escape(e)}", highlight=False)


def matrix_table(runs: list[RunRecord], console=None, names: list[str] | None = None) -> None:
    """profile x suite -> counts, for runs over several profiles (``names``:
    the cells' names, for a merge)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title="iommufd-harness matrix")
    for col in ("cell" if names else "profile", *(() if names else ("suite",)), "verdict", *STATUSES):
        table.add_column(col, justify="right" if col in STATUSES else "left")
    for i, r in enumerate(runs):
        c = r.counts()
        color = verdict_color(r.verdict)
        first = (escape(names[i]),) if names else (r.profile, r.suite)
        table.add_row(*first, f"[{color}]{r.verdict}[/]", *(str(c[s]) for s in STATUSES))
    console.print(table)


def first_failure_line(log: str) -> str:
    for line in log.splitlines():
        if re.search(r"Expected|Assertion|error|ERROR|failed", line):
            return line.lstrip("# ").strip()[:200]
    return ""
