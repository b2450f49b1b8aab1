"""``walk``: which patch of a series broke something.

The series (``--patches`` or ``--commits BASE..TIP``) is applied one patch
more at each step: step 0 is the tree without it (the base, with the
default series as usual), step k the tree with its first k patches.  Each
step is an ordinary run (an incremental build, a boot, the suite) with a
results directory of its own, and is compared with the step before it: what
it broke (new failures, crashes, timeouts, skips, new kernel reports,
vanished tests) or fixed.  A step that does not apply, build or boot is an
error step; it is compared with nothing, and the next step is compared with
the last step that had a verdict.

``--bisect`` runs the base and the whole series first and then halves the
range, comparing each step with the base: log2(n) steps for n patches,
assuming (as git bisect does) that once broken, the series stays broken.

Everything goes to one directory (``--results``, else a new one under
``<work>/results``): ``step-NN/`` per step, ``walk.json`` and
``summary.md`` over them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import EXIT_ERROR, EXIT_FAIL, EXIT_INTERRUPTED, EXIT_PASS, InputError
from harness.pipeline import Options, results_dir_for
from harness.reports.baseline import Comparison, compare, from_run
from harness.reports.markdown import code, esc
from harness.reports.results import RunRecord
from harness.reports.resultsdir import atomic_write
from harness.stages import applies
from harness.stages import patches as patch_stage
from harness.ui import Ui
from harness.workdir import WorkDir, WorkLock


@dataclass
class Step:
    index: int  # 0: the tree without the series
    name: str  # the patch this step adds ("" for the base)
    subject: str
    results: Path
    verdict: str = ""  # the run's: pass | fail | error
    stage: str = ""  # for an error: where it stopped (patches, config, build, boot, ...)
    error: str = ""
    counts: dict = field(default_factory=dict)
    against: int | None = None  # the step it was compared with
    broke: list[str] = field(default_factory=list)  # "test: kind" lines
    fixed: list[str] = field(default_factory=list)
    new_reports: list[str] = field(default_factory=list)  # kernel report signatures the step before lacked

    @property
    def outcome(self) -> str:
        if self.verdict == "error" or not self.verdict:
            return "error"
        if self.index == 0:
            return "base"
        return "broke" if self.broke or self.new_reports else ("fixed" if self.fixed else "same")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["results"] = str(self.results)
        d["outcome"] = self.outcome
        return d


@dataclass(frozen=True)
class Series:
    """The walked series: each step's options come from here."""

    items: tuple[patch_stage.Patch, ...]
    base_rev: str | None  # --commits: the range's base
    tips: tuple[str, ...] = ()  # --commits: the commit of each patch


def load_series(opts: Options) -> Series:
    if opts.kernel.commits:
        repo = opts.kernel.kernel_src.expanduser().resolve()
        base, items = patch_stage.load_commits(repo, opts.kernel.commits)
        return Series(tuple(items), base, tuple(p.origin.split()[1] for p in items))
    items: list[patch_stage.Patch] = []
    for spec in opts.kernel.patches:
        items += patch_stage.load(spec)
    return Series(tuple(items), None)


def step_options(opts: Options, series: Series, k: int, root: Path) -> Options:
    """The run of step ``k``: the tree plus the first ``k`` patches."""
    base = opts.but(patches=[], commits=None, compare_base=False, baseline=None, keep_vm=False,
                               results=root / f"step-{k:02d}")
    if series.base_rev is not None:
        if k == 0:
            return base.but(rev=series.base_rev)
        return base.but(commits=f"{series.base_rev}..{series.tips[k - 1]}")
    if k == 0:
        return base
    qdir = root / "series" / f"step-{k:02d}"
    qdir.mkdir(parents=True, exist_ok=True)
    names, rules = [], []
    for i, p in enumerate(series.items[:k], start=1):
        name = f"{i:04d}-{re.sub(r'[^A-Za-z0-9.-]+', '-', p.name)}"
        (qdir / name).write_text(p.text)
        names.append(f"{name} -p{p.strip}")
        rules.append(applies.to_toml(name, p.rules))  # series.toml's say carries over
    (qdir / "series").write_text("\n".join(names) + "\n")
    if any(rules):
        (qdir / applies.FILE).write_text("\n".join(r for r in rules if r))
    return base.but(patches=[qdir])


def _error_stage(record: RunRecord) -> tuple[str, str]:
    for e in record.errors:
        m = re.match(r"error \[(\w+)\]: (.*)", e)
        if m:
            return m.group(1), m.group(2)
    return ("tests", record.errors[0].splitlines()[0]) if record.errors else ("", "")


def _signatures(record: RunRecord) -> set[str]:
    return {s.get("signature") or s.get("title", "") for s in record.kernel.get("splats") or []}


def judge(step: Step, record: RunRecord, before: RunRecord | None, before_index: int | None) -> None:
    """Fill in what ``step`` changed against the run ``before`` it."""
    step.verdict = record.verdict
    step.counts = record.counts()
    if record.verdict == "error":
        step.stage, step.error = _error_stage(record)
        return
    if before is None:
        return
    cmp_: Comparison = compare(record, from_run(before, str(before_index)))
    step.against = before_index
    step.broke = [f"{c.name}: {c.kind}" for c in cmp_.regressions] + [f"{n}: disappeared" for n in cmp_.disappeared]
    step.fixed = [f"{c.name}: {c.kind}" for c in cmp_.improvements]
    step.new_reports = sorted(_signatures(record) - _signatures(before))


def walk(opts: Options, ui: Ui, bisect: bool = False, known: dict[int, Path] | None = None) -> int:
    """Walk (or bisect) the series; ``known``: steps already run elsewhere
    (their results dirs), taken as they are (the gate has run the base and
    the whole series before it asks which patch)."""
    from harness import jobs
    from harness.reports.markdown import load_run

    if not (opts.kernel.patches or opts.kernel.commits):
        raise InputError("walk needs a series", "pass it with --patches or --commits")
    if opts.kernel.patches and opts.kernel.commits:
        raise InputError("walk walks one series: --patches and --commits are both given",
                         "pass one of them (make the other part of it: commit the patches, or format-patch the range)")
    if opts.compare_base or opts.baseline:
        raise InputError("walk compares every step with the one before it", "drop --compare-base/--baseline")
    jobs.validate(opts)
    series = load_series(opts)
    if not series.items:
        raise InputError("the series holds no patches")
    work = WorkDir(opts.work).prepare()
    root = results_dir_for(opts, work, kind="walk")
    root.mkdir(parents=True, exist_ok=True)
    steps: dict[int, Step] = {}
    records: dict[int, RunRecord] = {}
    n = len(series.items)
    interrupted = False

    def run_step(k: int, against: int | None) -> Step:
        nonlocal interrupted
        p = series.items[k - 1] if k else None
        step = Step(k, p.name if p else "", p.subject if p else "(the tree without the series)",
                    root / f"step-{k:02d}")
        if known and k in known:
            step.results = Path(known[k])
            ui.out.print(f"walk: step {k}/{n}: already run ({step.results})", highlight=False, markup=False)
            record = load_run(step.results)
        else:
            ui.out.print(f"walk: step {k}/{n}" + (f": {p.name}" if p else ": the base"), highlight=False,
                         markup=False)
            record, interrupted = jobs.run_one(step_options(opts, series, k, root), ui, step.results,
                                               brief=f"step {k}")
        if interrupted:  # a step cut short says nothing about its patch
            step.verdict, step.stage, step.error = "error", "interrupted", "the walk was interrupted"
            steps[k] = step
            _write(root, opts, series, steps, bisect)
            return step
        records[k] = record
        judge(step, record, records.get(against) if against is not None else None, against)
        steps[k] = step
        _write(root, opts, series, steps, bisect)
        return step

    with WorkLock(work):
        try:
            base = run_step(0, None)
            if base.outcome == "error":
                _finish(ui, root, opts, series, steps, bisect)
                ui.error(f"walk: the base gave no verdict ({base.stage}: {base.error}); nothing to compare with")
                return EXIT_ERROR
            if not bisect:
                good = 0
                for k in range(1, n + 1):
                    step = run_step(k, good)
                    if interrupted:
                        break
                    if step.outcome != "error":
                        good = k
            else:
                lo, hi = 0, n
                top = run_step(n, 0)
                if not interrupted and top.outcome == "broke":
                    while hi - lo > 1 and not interrupted:
                        mid = (lo + hi) // 2
                        step = run_step(mid, 0)
                        if step.outcome == "error":
                            break  # cannot tell which half: say so, with what was found
                        lo, hi = (lo, mid) if step.outcome == "broke" else (mid, hi)
        except KeyboardInterrupt:
            interrupted = True
    first = _finish(ui, root, opts, series, steps, bisect)
    if interrupted:
        return EXIT_INTERRUPTED
    if first is not None:
        return EXIT_FAIL
    # a step without a verdict (does not apply, build or boot) leaves the
    # walk without one too: the patches after it may be broken unseen
    return EXIT_ERROR if any(s.outcome == "error" for s in steps.values()) else EXIT_PASS


def first_broken(steps: dict[int, Step], bisect: bool) -> Step | None:
    """The first step that broke something; with bisect, the lowest broken
    step whose predecessor is known not to be broken."""
    ordered = [steps[k] for k in sorted(steps)]
    if not bisect:
        return next((s for s in ordered if s.outcome == "broke"), None)
    broken = [s for s in ordered if s.outcome == "broke"]
    if not broken:
        return None
    low = broken[0]
    below = [s for s in ordered if s.index < low.index and s.outcome in ("base", "same", "fixed")]
    return low if below and below[-1].index == low.index - 1 else None


def _write(root: Path, opts: Options, series: Series, steps: dict[int, Step], bisect: bool) -> None:
    first = first_broken(steps, bisect)
    data = {"profile": opts.machine.profile, "suite": opts.testing.suite, "bisect": bisect, "patches": len(series.items),
            "series": [p.record() for p in series.items],
            "first_broken": None if first is None else {"step": first.index, "patch": first.name,
                                                        "subject": first.subject},
            "steps": [steps[k].to_json() for k in sorted(steps)]}
    atomic_write(root / "walk.json", json.dumps(data, indent=2) + "\n")
    atomic_write(root / "summary.md", render(data))


def render(data: dict) -> str:
    first = data["first_broken"]
    head = (f"first broken by step {first['step']}: {code(first['patch'])} {esc(first['subject'])}" if first
            else "no step broke anything")
    out = [f"### iommufd-harness walk{' (bisect)' if data['bisect'] else ''}: {head}", "",
           f"Suite {code(data['suite'])} on {code(data['profile'])}, {data['patches']} patch(es).", "",
           "| step | patch | outcome | pass/total | broke | fixed | new kernel reports |",
           "| ---: | --- | --- | ---: | --- | --- | --- |"]
    for s in data["steps"]:
        total = sum(s["counts"].values()) if s["counts"] else 0
        outcome = s["outcome"] + (f" ({s['stage']}: {esc(s['error'], 120)})" if s["outcome"] == "error" else "")
        out.append(f"| {s['index']} | {code(s['name']) if s['name'] else '(base)'} | {outcome} | "
                   f"{s['counts'].get('pass', 0)}/{total} | {esc('; '.join(s['broke'][:5]), 300)} | "
                   f"{esc('; '.join(s['fixed'][:5]), 200)} | {esc('; '.join(s['new_reports'][:3]), 300)} |")
    out += ["", "Each step's results: `step-NN/` next to this file."]
    return "\n".join(out) + "\n"


def _finish(ui: Ui, root: Path, opts: Options, series: Series, steps: dict[int, Step], bisect: bool) -> Step | None:
    _write(root, opts, series, steps, bisect)
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"iommufd-harness walk{' (bisect)' if bisect else ''}: suite {opts.testing.suite} on {opts.machine.profile}")
    for col in ("step", "patch", "outcome", "pass", "broke", "new reports"):
        table.add_column(col, overflow="fold")
    colors = {"base": "cyan", "same": "green", "fixed": "green", "broke": "red", "error": "bold red"}
    for k in sorted(steps):
        s = steps[k]
        total = sum(s.counts.values()) if s.counts else 0
        outcome = s.outcome + (f" ({s.stage})" if s.outcome == "error" else "")
        table.add_row(str(k), escape(s.name or "(base)"), f"[{colors[s.outcome]}]{outcome}[/]",
                      f"{s.counts.get('pass', 0)}/{total}", escape("\n".join(s.broke[:5])),
                      escape("\n".join(s.new_reports[:3])))
    ui.out.print(table)
    first = first_broken(steps, bisect)
    if first is not None:
        ui.out.print(f"first broken by step {first.index}: {first.name} ({first.subject})", highlight=False,
                     markup=False)
    elif any(s.outcome == "broke" for s in steps.values()):
        ui.out.print("broken, but the steps run cannot say by which patch (a step in between gave no verdict)",
                     highlight=False, markup=False)
    elif any(s.outcome == "error" for s in steps.values()):
        bad = next(s for s in (steps[k] for k in sorted(steps)) if s.outcome == "error")
        ui.out.print(f"no verdict from step {bad.index} ({bad.name}: {bad.stage}: {bad.error}): the walk cannot say "
                     "whether the series broke something", highlight=False, markup=False)
    else:
        ui.out.print("no step broke anything", highlight=False, markup=False)
    ui.out.print(f"results: {root}", highlight=False, markup=False)
    return first

