"""The gate's answer to a series, as kernel CI bots write them: an RFC 5322
message in the series' thread, plain text of 72 columns, the verdict first,
then what the series changed against its base, the kernel, how to
reproduce, where the full results are."""

from __future__ import annotations

import email.utils
import shlex
import socket
import textwrap
from dataclasses import dataclass, field
from email.message import EmailMessage

from harness import __version__
from harness.mail.series import Mail, Series
from harness.reports.results import RunRecord

WIDTH = 72
REPORT_LINES = 12  # of each new kernel report, its head
MAX_LISTED = 20


@dataclass
class Cell:
    """One machine and suite the gate ran the series on."""

    profile: str
    suite: str
    verdict: str  # pass | fail | error
    run: RunRecord | None
    base: RunRecord | None
    regressions: list[dict] = field(default_factory=list)
    disappeared: list[str] = field(default_factory=list)
    error: str = ""
    results: str = ""


@dataclass
class Outcome:
    """What the gate found, as the reply tells it."""

    verdict: str  # pass | fail | error (the gate's: fail = the series made something worse)
    run: RunRecord | None  # the series' run (None: it never started)
    base: RunRecord | None  # the base's run (compare-base)
    base_commit: str
    base_how: str  # "base-commit" | "--base" | "HEAD" (guessed)
    regressions: list[dict] = field(default_factory=list)  # comparison.json's
    disappeared: list[str] = field(default_factory=list)
    error: str = ""  # why there is no verdict
    reproduce: list[str] = field(default_factory=list)  # command lines
    results: str = ""  # where the full results are
    first_bad: tuple[int, str] | None = None  # (1-based patch number, subject) that broke it
    first_bad_broke: list[str] = field(default_factory=list)  # what it broke: "test: kind", report signatures
    cells: list[Cell] = field(default_factory=list)  # several machines/suites: each one (run, base... unused)


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False) or [indent.rstrip()]


def _cut(line: str) -> str:
    return line if len(line) <= WIDTH else line[:WIDTH - 3] + "..."


def _command(argv: str, indent: str = "  ") -> list[str]:
    """A command line folded with backslashes so it pastes as it is."""
    out, cur = [], indent
    for word in shlex.split(argv):
        w = shlex.quote(word)
        if cur.strip() and len(cur) + 1 + len(w) > WIDTH - 2:
            out.append(cur + " \\")
            cur = indent + "    " + w
        else:
            cur = (cur + " " + w) if cur.strip() else cur + w
    out.append(cur)
    return out


def new_reports(run: RunRecord | None, base: RunRecord | None) -> list[dict]:
    """The series run's kernel reports whose signature the base run never showed."""
    if run is None:
        return []
    seen = {s.get("signature") for s in (base.kernel.get("splats", []) if base else [])}
    return [s for s in run.kernel.get("splats", []) if s.get("signature") not in seen]


def _head(run: RunRecord, splat: dict) -> list[str]:
    """The first lines of a report, from the log of the test it belongs to."""
    title = splat.get("title", "")
    for t in run.tests:
        if t.name == splat.get("test") and title and title in t.log:
            text = t.log[t.log.index(title):]
            return [ln.rstrip() for ln in text.splitlines()[:REPORT_LINES]]
    return [title]


def first_name(sender: str) -> str:
    name = email.utils.parseaddr(sender)[0].strip().strip('"')
    return name.split()[0] if name else ""


VERDICTS = {"pass": "PASS", "fail": "FAIL (regressed)", "error": "ERROR (no verdict)"}


def _facts(facts: list[tuple[str, str]]) -> list[str]:
    lines = []
    for k, v in facts:
        lines += textwrap.wrap(f"{k + ':':9}{v}", WIDTH, initial_indent="  ", subsequent_indent=" " * 11,
                               break_long_words=False, break_on_hyphens=False)
    return lines


def _cell_facts(cell: "Cell") -> list[tuple[str, str]]:
    run, base = cell.run, cell.base
    if run is None:
        return []
    version = run.kernel.get("version") or "?"
    debug = run.kernel.get("debug") or []
    c = run.counts()
    tested = f"{c['pass']} of {len(run.tests)} tests passed"
    if base is not None:
        tested += f" (base: {base.counts()['pass']} of {len(base.tests)})"
    return [("kernel", f"{version} + the series" + (f", debug: {', '.join(debug)}" if debug else "")),
            ("machine", f"{run.profile}, suite {run.suite}"), ("tests", tested)]


def _cell_findings(cell: "Cell") -> list[str]:
    """New failures, new kernel reports, vanished tests of one cell."""
    lines: list[str] = []
    run, base = cell.run, cell.base
    if cell.regressions:
        from harness.reports.terminal import first_failure_line

        logs = {t.name: t.log for t in run.tests} if run is not None else {}
        lines += ["", "New failures (against the base)", "-------------------------------"]
        for r in cell.regressions[:MAX_LISTED]:
            lines.append(_cut(f"  {r['name']}: {r['before'] or 'new'} -> {r['after']}"))
            why = r.get("reason") or first_failure_line(logs.get(r["name"], ""))  # the test's own words
            if why:
                lines += [_cut(ln) for ln in _wrap(why, "    ")[:3]]
        if len(cell.regressions) > MAX_LISTED:
            lines.append(f"  ... and {len(cell.regressions) - MAX_LISTED} more")
    reports = new_reports(run, base)
    if reports:
        lines += ["", "New kernel reports", "------------------"]
        for s in reports[:5]:
            lines.append(_cut(f"  {s.get('kind')} in {s.get('test')}:"))
            lines += [_cut("    " + ln) for ln in _head(run, s)]
            lines.append("")
        if len(reports) > 5:
            lines.append(f"  ... and {len(reports) - 5} more")
        while lines[-1] == "":
            lines.pop()
    if cell.disappeared:
        lines += ["", "Tests that no longer run", "------------------------"]
        lines += [_cut(f"  {n}") for n in cell.disappeared[:MAX_LISTED]]
    return lines


def body(series: Series, out: Outcome) -> str:
    lines: list[str] = []
    who = first_name(series.author)
    lines += [f"Hi {who}," if who else "Hello,", ""]
    what = f'v{series.revision} of "{series.subject}"'
    if out.verdict == "pass":
        lines += _wrap(f"iommufd-harness tested {what} on a real kernel: no regression against its base.")
    elif out.verdict == "fail":
        lines += _wrap(f"iommufd-harness tested {what} on a real kernel: the series REGRESSED against its base.")
    else:
        lines += _wrap(f"iommufd-harness could not test {what}: {out.error or 'no verdict'}. This says "
                       "nothing about the series.")
    lines.append("")
    facts = [("verdict", VERDICTS.get(out.verdict, VERDICTS["error"]))]
    how = {"base-commit": "its base-commit", "--base": "the base given to the gate",
           "HEAD": "guessed: the tree's HEAD (the series names no base-commit)"}[out.base_how]
    facts.append(("base", f"{out.base_commit[:12]} ({how})"))
    cells = out.cells or [Cell("", "", out.verdict, out.run, out.base, out.regressions, out.disappeared)]
    if len(cells) == 1:
        facts += _cell_facts(cells[0])
    lines += _facts(facts)
    if out.first_bad:
        n, subject = out.first_bad
        lines += [""] + _wrap(f"The first patch that breaks it is {n}/{len(series.patches)}: \"{subject}\".")
    if len(cells) == 1:
        lines += _cell_findings(cells[0])
    else:
        for cell in cells:
            head = f"{cell.profile}, suite {cell.suite}: {VERDICTS.get(cell.verdict, VERDICTS['error'])}"
            lines += ["", head, "=" * min(len(head), WIDTH)]
            lines += _facts(_cell_facts(cell) + ([("error", cell.error)] if cell.error else []))
            lines += _cell_findings(cell)
    if out.reproduce:
        lines += ["", "Reproduce", "---------"]
        for cmd in out.reproduce:
            lines += _command(cmd)
    if out.results:
        lines += ["", "Full results (summary.md, results.json, console.log):"]
        lines += [f"  {out.results}"]
    lines += ["", "-- ", f"iommufd-harness {__version__} on {socket.gethostname()}"]
    return "\n".join(lines) + "\n"


def patch_body(series: Series, out: Outcome) -> str:
    """The short reply under the first patch that broke the series."""
    n, _ = out.first_bad
    who = first_name(series.author)
    lines = [f"Hi {who}," if who else "Hello,", ""]
    lines += _wrap(f"iommufd-harness walked v{series.revision} of \"{series.subject}\" one patch at a time on "
                   f"the same kernel: this patch, {n}/{len(series.patches)}, is the first that breaks it; the "
                   "patches before it test as the base does.")
    if out.first_bad_broke:
        lines += ["", "What it breaks:"]
        lines += [_cut(f"  {b}") for b in out.first_bad_broke[:MAX_LISTED]]
        if len(out.first_bad_broke) > MAX_LISTED:
            lines.append(f"  ... and {len(out.first_bad_broke) - MAX_LISTED} more")
    lines += [""] + _wrap("The full report, with the failures' reasons, the kernel reports and how to reproduce "
                          "it, is the reply to " + ("the cover letter." if series.cover else "the first patch."))
    if out.results:
        lines += [""] + _wrap("The walk, step by step, is walk/summary.md in the full results:")
        lines += [f"  {out.results}"]
    lines += ["", "-- ", f"iommufd-harness {__version__} on {socket.gethostname()}"]
    return "\n".join(lines) + "\n"


def compose(series: Series, out: Outcome, sender: str, cc: list[str], under: Mail | None = None,
            subject: str | None = None, text: str | None = None) -> EmailMessage:
    """The reply, threaded under ``under`` (default: the cover letter, or
    the first patch): To the author, Cc ``cc`` only; ``text`` instead of
    the full report."""
    under = under or series.first
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = series.author
    if cc:
        msg["Cc"] = ", ".join(dict.fromkeys(cc))
    base_subject = subject or under.subject
    msg["Subject"] = base_subject if base_subject.lower().startswith("re:") else f"Re: {base_subject}"
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid("iommufd-harness", domain=email.utils.parseaddr(sender)[1]
                                               .split("@")[-1] or None)
    msg["In-Reply-To"] = f"<{under.msgid}>"
    msg["References"] = " ".join(f"<{r}>" for r in [*under.references, under.msgid])
    msg["X-Iommufd-Harness-Verdict"] = out.verdict
    text = body(series, out) if text is None else text
    msg.set_content(text, cte="8bit" if not text.isascii() else "7bit")
    return msg
