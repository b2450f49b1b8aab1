"""summary.md: a short Markdown report to paste into a merge-request comment.

Reviewers read it in a web UI, so it leads with the verdict, then what
changed against the baseline, then just enough of each failure and kernel
splat to recognise it, then where the kernel came from.  Everything that came
out of the guest is untrusted: it is only ever put inside code spans or
fenced blocks sized so that it cannot close them, and plain text is escaped,
so guest output cannot inject links, HTML or mentions into the comment.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from harness.errors import InputError, ToolMissing
from harness.reports.baseline import Change, Comparison, NoExpectations, compare, is_flaky, load_baseline
from harness.reports.junit import junit_xml
from harness.reports.repro import repro_line, reproducer
from harness.reports.results import BAD, ONE_SHOT, STATUSES, RunRecord, TestRecord, outside_phase
from harness.reports.resultsdir import atomic_write

MAX_FAILURES = 15  # failures shown with log lines; the rest are only counted
MAX_LINES = 6  # log lines per failure
MAX_LIST = 25  # rows per list of changes
MAX_SPLATS = 10
MAX_REPRO = 5
_INTERESTING = re.compile(r"Expected|Assertion|[Ee]rror|ERROR|failed|Bail out|BUG|WARNING|Oops|panic|Call Trace")
MAX_REPORT_LINES = 10  # lines of a kernel report's head per failure
_REPORT_START = re.compile(r"--- kernel \w+: .* ---$")
_REPORT_END = re.compile(r"--- decoded \w+ ---$|\s*(?:Call [Tt]race:|stack backtrace:)")
_REPORT_NOISE = re.compile(r"[=-]{10,}$|-+\[ cut here \]-+$|CPU: \d+ |Hardware name: |\S+ #\d+ (?:Not tainted|Tainted: )")
_TAP_NOISE = re.compile(r"^(not ok \d+|ok \d+|#\s+FAIL\s|#\s+RUN\s|#\s+OK\s)")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~@&])")  # enough to stop emphasis, links, HTML, tables, mentions


# -- escaping ---------------------------------------------------------------------


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def esc(text: str, limit: int = 200) -> str:
    """Plain text with Markdown and HTML specials escaped, on one line."""
    return _MD_SPECIAL.sub(r"\\\1", _one_line(text, limit))


def code(text: str, limit: int = 200) -> str:
    """An inline code span that ``text`` cannot break out of."""
    text = _one_line(text, limit)
    if not text:
        return ""
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def block(lines: list[str]) -> str:
    """A fenced block whose fence is longer than any backtick run inside."""
    body = "\n".join(lines)
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", body)), default=0) + 1)
    return f"{fence}text\n{body}\n{fence}"


# -- content ----------------------------------------------------------------------


def report_lines(log: str, limit: int = MAX_REPORT_LINES) -> list[str]:
    """The head of the first kernel report in a test's log (the runner puts
    each after a ``--- kernel KIND: TITLE ---`` line): what it says before its
    call trace (the locks of a lockdep report, the access of a KASAN one, the
    RIP of a WARN), without banners and the CPU/hardware lines."""
    lines = log.splitlines()
    start = next((i for i, ln in enumerate(lines) if _REPORT_START.match(ln)), None)
    if start is None:
        return []
    out = []
    for ln in lines[start + 1:]:
        if _REPORT_START.match(ln) or _REPORT_END.match(ln):
            break
        if ln.strip() and not _REPORT_NOISE.match(ln.strip()):
            out.append(ln.rstrip())
        if len(out) >= limit:
            break
    return out


def failure_lines(test: TestRecord, limit: int = MAX_LINES) -> list[str]:
    """The lines of a test's log that say why it failed: the harness's reason,
    then assertion and error lines; the log's last lines when none match.  A
    failure that is a kernel report shows that report's head instead."""
    lines = [f"harness: {test.reason}"] if test.reason else []
    report = report_lines(test.log)
    if report:
        return [ln[:300] for ln in lines + report]
    body = [ln.strip().removeprefix("#").strip() for ln in test.log.splitlines()]
    body = [ln for ln in body if ln and not _TAP_NOISE.match(ln)]
    hits = [ln for ln in body if _INTERESTING.search(ln)]
    lines += hits or body[-max(1, limit - len(lines)):]
    if len(lines) > limit:
        more = len(lines) - limit + 1
        lines = lines[: limit - 1] + [f"[... {more} more line{'s' if more != 1 else ''}]"]
    return [ln[:300] for ln in lines]


def _counts(run: RunRecord) -> list[str]:
    c = run.counts()
    return ["| " + " | ".join((*STATUSES, "total")) + " |",
            "|" + " ---: |" * (len(STATUSES) + 1),
            "| " + " | ".join((*(str(c[s]) for s in STATUSES), str(len(run.tests)))) + " |"]


def _changes(title: str, changes: tuple[Change, ...], with_reason: bool = False) -> list[str]:
    if not changes:
        return []
    out = ["", f"#### {title}", ""]
    for ch in changes[:MAX_LIST]:
        before = ch.before or "new test"
        line = f"- {code(ch.name)}: {esc(before)} -> {esc(ch.after)} ({esc(ch.kind)})"
        if with_reason and ch.reason:
            line += f": {esc(ch.reason)}"
        if ch.link.startswith(("https://", "http://")):
            line += f" ([link]({ch.link.replace(')', '%29').replace(' ', '%20')}))"
        out.append(line)
    if len(changes) > MAX_LIST:
        out.append(f"- ... and {len(changes) - MAX_LIST} more (see comparison.json)")
    return out


def _comparison(cmp: Comparison) -> list[str]:
    out = _changes("Regressions against the baseline", cmp.regressions)
    if cmp.disappeared:
        names = ", ".join(code(n) for n in cmp.disappeared[:MAX_LIST])
        more = f" and {len(cmp.disappeared) - MAX_LIST} more" if len(cmp.disappeared) > MAX_LIST else ""
        out += ["", f"**Disappeared** (in the baseline, not in this run): {names}{more}"]
    if cmp.count_dropped:
        out += ["", f"**Fewer tests**: {cmp.count} ran, the baseline expects {cmp.expected_count}."]
    out += _changes("Improvements", cmp.improvements, with_reason=True)
    out += _changes("Known failures (do not fail the gate)", cmp.known_failures, with_reason=True)
    out += _changes("Flaky (failed, then passed on rerun)", cmp.flaky, with_reason=True)
    if cmp.new_tests:
        shown = ", ".join(code(n) for n in cmp.new_tests[:MAX_LIST])
        more = f" and {len(cmp.new_tests) - MAX_LIST} more" if len(cmp.new_tests) > MAX_LIST else ""
        out += ["", f"New tests (not in the baseline): {shown}{more}"]
    return out


def _failures(run: RunRecord) -> list[str]:
    failing = [t for t in run.tests if t.status in BAD - {"notrun"}]
    flaky = [t for t in run.tests if is_flaky(t)]
    if not failing and not flaky:
        return []
    out = ["", "#### Failures", ""]
    for t in (failing + flaky)[:MAX_FAILURES]:
        status = "flaky" if is_flaky(t) else t.status
        out += [f"{code(t.name)} ({status}, {t.duration_s:.2f} s)", "", block(failure_lines(t)), ""]
    rest = len(failing) + len(flaky) - MAX_FAILURES
    if rest > 0:
        out.append(f"... and {rest} more (see junit.xml / results.json)")
    notrun = sum(t.status == "notrun" for t in run.tests)
    if notrun:
        out.append(f"{notrun} test{'s' if notrun != 1 else ''} not run.")
    return out


def _splats(splats: list, stopped: dict | None = None, omitted: int = 0) -> list[str]:
    items = [s for s in splats if isinstance(s, dict)]
    if not items:
        return []
    out = ["", f"#### Kernel splats ({len(items) + omitted})", ""]
    for s in items[:MAX_SPLATS]:
        kind = esc(s.get("kind") or "splat", 40)
        line = f"- **{kind}**: {code(s.get('title') or '?')}"
        if outside_phase(s.get("test")):
            line += f" {esc(outside_phase(s['test']))} ({code(s['test'])})"
        elif s.get("test"):
            line += f" during {code(s['test'])}"
        if s.get("signature"):
            line += f", signature {code(s['signature'], 80)}"
        out.append(line)
        text = [ln for ln in str(s.get("text") or "").splitlines() if ln.strip()]
        if text:  # the report's own first lines (harness.parse.splats.Splat.text), indented into the item
            shown = [ln[:200] for ln in text[:MAX_LINES]] + ([f"[... {len(text) - MAX_LINES} more lines]"]
                                                              if len(text) > MAX_LINES else [])
            out += ["", *("  " + ln for ln in block(shown).splitlines()), ""]
    if len(items) + omitted > MAX_SPLATS:
        out.append(f"- ... and {len(items) + omitted - MAX_SPLATS} more (see console.log)")
    for key, (said, without) in ONE_SHOT.items():
        off = (stopped or {}).get(key)
        if off and off.get("unchecked"):
            unchecked = off["unchecked"]
            out += ["", (f"{said}: after the report in {code(off.get('test') or '?')}, "
                         f"{len(unchecked)} later test(s) ran without {without}: "
                         + ", ".join(code(n) for n in unchecked[:MAX_LIST])
                         + (f" and {len(unchecked) - MAX_LIST} more" if len(unchecked) > MAX_LIST else ""))]
    return out



def _ranges(numbers: list[int], limit: int = 40) -> str:
    """1,2,3,7,9,10 -> "1-3, 7, 9-10"."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    text = [f"{a}-{b}" if a != b else str(a) for a, b in out]
    return ", ".join(text[:limit]) + (f" and {len(text) - limit} more" if len(text) > limit else "")


def _coverage(cov: dict) -> list[str]:
    """--coverage: the profiled directories' totals, then the series' lines."""
    if not cov:
        return []
    if cov.get("collected") is False:
        return ["", "#### Coverage", "", f"Not collected: {esc(cov.get('why', ''))}."]
    t = cov.get("total", {})
    pct = (lambda a, b: f"{100 * a / b:.1f}%" if b else "-")
    out = ["", "#### Coverage", "",
           f"{', '.join(code(d) for d in cov.get('dirs', []))}: {t.get('executed', 0)} of {t.get('lines', 0)} lines "
           f"executed ({pct(t.get('executed', 0), t.get('lines', 0))}), {t.get('taken', 0)} of "
           f"{t.get('branches', 0)} branches taken ({pct(t.get('taken', 0), t.get('branches', 0))}); "
           f"report: {code(cov.get('reports', {}).get('html', ''))}, Cobertura {code(cov.get('reports', {}).get('cobertura', ''))}."]
    if cov.get("partial"):
        out += ["", f"Partial: {esc(cov['partial'])}."]
    series = cov.get("series") or []
    if series:
        out += ["", "Lines the series adds or changes:", "",
                "| file | changed | executed | not executed | not executed (lines) |", "| --- | ---: | ---: | ---: | --- |"]
        for f in series:
            if not f.get("profiled"):
                out.append(f"| {code(f['file'])} | {f['changed']} | - | - | not profiled |")
                continue
            out.append(f"| {code(f['file'])} | {f['changed']} | {len(f['executed'])} | {len(f['not_executed'])} | "
                       f"{_ranges(f['not_executed']) or '-'} |")
    return out


def _patch_note(p: dict) -> str:
    if p.get("status") == "already in tree":
        return " - already in the tree, skipped"
    if p.get("status") == "not for this tree":
        return f" - not applied: {esc(p.get('reason') or 'not for this tree')}"
    return ""

def _provenance(run: RunRecord) -> list[str]:
    k, q = run.kernel, run.qemu
    kernel = f"{esc(k.get('version', '?'))} from {esc(k.get('source') or 'unknown source')}"
    if k.get("build_id"):
        kernel += f", build-id {code(k['build_id'])}"
    if k.get("config_sha256"):
        kernel += f", config sha256 {code(k['config_sha256'][:16])}"
    if "rebuilt" in k:
        kernel += ", rebuilt" if k["rebuilt"] else ", reused"
    if k.get("toolchain"):
        kernel += f", {esc(k['toolchain'])}"
    if k.get("debug"):
        kernel += f", debug kernel {esc(', '.join(k['debug']))}"
    out = ["", "#### Provenance", "", f"- kernel: {kernel}"]
    if run.patches:
        out.append(f"- patches ({len(run.patches)}, in order):")
        for i, p in enumerate(run.patches, 1):
            subject = p.get("subject") or ""
            out.append(f"  {i}. {code(p.get('name', '?'))}" + (f" {esc(subject)}" if subject else "")
                       + (f" (sha256 {code(p['sha256'][:12])})" if p.get("sha256") else "")
                       + _patch_note(p))
    else:
        out.append("- patches: none")
    if run.base:
        out.append(f"- base (the tree without the series): {code(run.base.get('results', '?'), 160)}"
                   + (", cached" if run.base.get("cached") else ", run now"))
    qemu = f"QEMU {esc(q.get('version', '?'))}, {esc(q.get('accel', '?'))}"
    if q.get("accel_reason"):
        qemu += f" ({esc(q['accel_reason'])})"
    out.append(f"- profile: {code(run.profile or '?')}, suite {code(run.suite or '?')}; "
               + (qemu if q else "not booted"))
    if run.guest.get("iommus"):
        out.append(f"- guest IOMMUs: {', '.join(code(i) for i in run.guest['iommus'])}")
    h = run.harness
    out.append(f"- iommufd-harness {esc(h.get('version', '?'))}, started {esc(run.started or '?')}")
    return out


def _repro(run: RunRecord, cmp: Comparison | None) -> list[str]:
    names = [c.name for c in cmp.regressions] if cmp else []
    names += [t.name for t in run.tests if t.status in ("fail", "timeout", "crash") and t.name not in names]
    if not names:
        return []
    alongside = {t.name: t.alongside for t in run.tests}
    cmds = [reproducer(run.profile, run.suite, n, run.inputs, alongside=alongside.get(n, ()))
            for n in names[:MAX_REPRO]]
    if not cmds:
        return []
    short = [repro_line(run.results_dir)] if run.results_dir and run.inputs else []
    return ["", "Reproduce" + (" (the failing tests, same kernel; --repeat N, --until-fail, --shell):" if short
                               else ":"), ""] + ([block(short), "", "or from the inputs alone:", ""] if short else []) \
        + [block(cmds)]


def render(run: RunRecord, comparison: Comparison | None, splats: list | None = None,
           notes: list[str] | None = None) -> str:
    """summary.md for ``run``; with ``comparison`` the headline is the gate
    verdict (what changed), else the run's own verdict.  ``splats`` defaults
    to ``run.kernel["splats"]``: dicts with kind, title, signature, test and
    optionally text (the report's lines), as harness.parse.splats finds them.
    ``notes`` are said right under the verdict (e.g. why there is no gate)."""
    if splats is None:
        splats = run.kernel.get("splats", []) or []
    c = run.counts()
    bad = c["fail"] + c["timeout"] + c["crash"]
    run_line = f"{c['pass']} of {len(run.tests)} passed" + (f", {bad} failed" if bad else "")
    out = []
    if comparison is not None:
        gate = comparison.gate_verdict(run.verdict)
        why = "; ".join(comparison.reasons()) or "no regressions"
        out.append(f"### iommufd-harness: {gate.upper()}")
        out += ["", (f"**Gate: {gate.upper()}** against {code(comparison.baseline, 120)}: {why}. "
                     f"Run verdict: {run.verdict} ({run_line}).")]
    else:
        out.append(f"### iommufd-harness: {run.verdict.upper()}")
        out += ["", f"**Verdict: {run.verdict.upper()}** ({run_line}); no baseline given."]
    for note in [*(notes or []), *(comparison.notes() if comparison is not None else [])]:
        out += ["", f"Note: {esc(note, 500)}"]
    out += ["", (f"Suite {code(run.suite or '?')} on {code(run.profile or '?')}, "
                 f"Linux {esc(run.kernel.get('version', '?'))}."), ""]
    out += _counts(run)
    if run.errors:
        out += ["", "#### Errors", "", block([ln for e in run.errors for ln in e.splitlines()][:20])]
    if comparison is not None:
        out += _comparison(comparison)
    out += _failures(run)
    out += _splats(splats, run.kernel, int(run.kernel.get("splats_omitted") or 0))
    out += _coverage(run.coverage)
    out += _repro(run, comparison)
    out += _provenance(run)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n") + "\n"


def load_run(results_dir: Path) -> RunRecord:
    """The RunRecord a results dir (or its results.json) holds."""
    path = Path(results_dir)
    path = path / "results.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        run = RunRecord.from_json(data)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist", "pass a results dir written by 'iommufd-harness run'") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise InputError(f"{path} is not a readable results.json: {e}") from None
    if not run.results_dir:
        run.results_dir = str(path.parent)
    return run


def rerender(results_dir: Path, baseline: Path | None, artifacts_url: str | None = None,
             warn: Callable[[str], None] | None = None) -> tuple[Comparison | None, str]:
    """Re-derive every report of a finished run from its results.json:
    summary.md, kcidb.json, junit.xml and, against ``baseline``,
    comparison.json.  Returns the comparison (for the gate's exit code) and
    the Markdown.

    Nothing here changes or hides the run's verdict: a baseline directory
    without expectations for this profile and suite gives no comparison (the
    verdict is the tests'), and KCIDB data that does not validate is not
    written; both are said in summary.md and to ``warn``."""
    from harness.reports import kcidb

    results_dir = Path(results_dir)
    run = load_run(results_dir)
    notes: list[str] = []
    comparison = None
    if baseline:
        try:
            comparison = compare(run, load_baseline(Path(baseline), run.profile, run.suite))
        except NoExpectations as e:
            notes.append(f"{e.message}: the verdict is the tests' own")
    try:
        data = kcidb.to_kcidb(run, artifacts_url=artifacts_url)
        kcidb.validate(data)
    except ToolMissing:
        pass  # the data is still written; the unit tests validate what to_kcidb produces
    except Exception as e:  # noqa: BLE001 - a KCIDB problem must never cost the other reports
        data = None
        notes.append(f"kcidb.json not written: {getattr(e, 'message', None) or f'{type(e).__name__}: {e}'}")
    md = render(run, comparison, notes=notes)
    atomic_write(results_dir / "summary.md", md)
    atomic_write(results_dir / "junit.xml", junit_xml(run))
    from harness.reports import html
    from harness.reports.results import Cell

    name = Cell("", results_dir, run).default_name()
    atomic_write(results_dir / "report.html",
                 html.render([(name, results_dir, run)], results_dir, comparison.gate_verdict(run.verdict)
                             if comparison is not None else run.verdict))
    if data is not None:
        atomic_write(results_dir / "kcidb.json", json.dumps(data, indent=2) + "\n")
    else:
        (results_dir / "kcidb.json").unlink(missing_ok=True)  # never a stale one beside this run
    if comparison is not None:
        atomic_write(results_dir / "comparison.json", json.dumps(comparison.to_json(), indent=2) + "\n")
    for note in notes:
        (warn or (lambda text: None))(note)
    return comparison, md
