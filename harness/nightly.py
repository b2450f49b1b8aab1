"""``iommufd-harness nightly PLAN.toml``: one night of the regression lab.

A plan names what every night runs:

    root = "/srv/nightly/iommufd"      # where the nights go (default: <work>/nightly/<plan name>)
    kernel_src = "~/linux"             # default: Debian's linux-source-6.12
    rev = "origin/master"              # optional, as run --rev
    patches = ["series/"]              # optional, relative to the plan file
    default_patches = true
    suites = ["access"]
    profiles = ["x86_64-vtd", "arm64-smmuv3"]
    debug = ["lockdep,kasan"]          # optional: every cell on this debug kernel
    history = 14                       # nights the history looks back over

    [[boards]]                         # lab boards (a lab file entry or a labgrid place)
    lab = "lab.toml"
    board = "odroid-m1"

Each night is ``ROOT/<night>/`` (``--night NAME``, default the local time),
one results dir per cell (profile or board x suite) in it, and over them the
merged reports (harness.reports.merge: merged.json, summary.md, junit.xml,
kcidb.json, report.html) with the history of the earlier nights under the
same root (harness.reports.history: history.json; summary.md leads with
what changed since the previous night).  A cell whose tests did not all
run (a board unreachable, a build broken) is a cell without a verdict,
never a regression; the summary says what stopped it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness import debugkernels, lab, profiles, suites
from harness.errors import EXIT_INTERRUPTED, HarnessError, InputError
from harness.pipeline import Options
from harness.reports import history as hist
from harness.reports import merge
from harness.reports.resultsdir import atomic_write
from harness.ui import Ui
from harness.workdir import WorkDir, WorkLock

KEYS = {"root", "kernel_src", "rev", "patches", "default_patches", "suites", "profiles", "debug", "history",
        "boards"}
NIGHT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class BoardCell:
    lab: Path
    board: str


@dataclass(frozen=True)
class Plan:
    path: Path
    name: str
    root: Path | None
    kernel_src: Path | None
    rev: str | None
    patches: tuple[Path, ...]
    default_patches: bool
    suites: tuple[str, ...]
    profiles: tuple[str, ...]
    debug: tuple[str, ...]
    history: int
    boards: tuple[BoardCell, ...] = field(default=())


def load(path: Path) -> Plan:
    path = Path(path).expanduser()
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"plan {path} does not exist", "pass a nightly plan (TOML): see 'iommufd-harness nightly -h'") \
            from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"plan {path} is not readable TOML: {e}") from None
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise InputError(f"plan {path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                         f"a plan takes {', '.join(sorted(KEYS))}")
    here = path.parent

    def rel(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else (here / q)

    def strings(key: str, default: list[str]) -> tuple[str, ...]:
        v = doc.get(key, default)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InputError(f"plan {path}: {key} must be a list of strings")
        return tuple(v)

    for s in strings("suites", [suites.DEFAULT_SUITE]):
        suites.load(s)  # unknown ones are refused here, before anything runs
    for p in strings("profiles", []):
        profiles.load(p)
    boards = []
    for i, b in enumerate(doc.get("boards", [])):
        if not isinstance(b, dict) or set(b) != {"lab", "board"}:
            raise InputError(f"plan {path}: boards[{i}] must have exactly lab and board")
        cell = BoardCell(rel(b["lab"]), str(b["board"]))
        lab.load(cell.lab).board(cell.board)  # an unknown lab or board is refused before the night starts
        boards.append(cell)
    plan = Plan(path=path, name=path.stem, root=rel(doc["root"]) if "root" in doc else None,
                kernel_src=rel(doc["kernel_src"]) if "kernel_src" in doc else None, rev=doc.get("rev"),
                patches=tuple(rel(p) for p in strings("patches", [])),
                default_patches=bool(doc.get("default_patches", True)), suites=strings("suites", [suites.DEFAULT_SUITE]),
                profiles=strings("profiles", []), debug=debugkernels.parse(list(strings("debug", []))),
                history=int(doc.get("history", 14)), boards=tuple(boards))
    if not plan.profiles and not plan.boards:
        raise InputError(f"plan {path} names no profile and no board", "add profiles = [...] or [[boards]]")
    if plan.history < 1:
        raise InputError(f"plan {path}: history must be at least 1")
    for p in plan.patches:
        if not p.exists():
            raise InputError(f"plan {path}: patch input {p} does not exist")
    return plan


def cells(plan: Plan, base: Options) -> list[tuple[str, Options]]:
    """(results dir name, options) of every cell of the plan."""
    out = []
    for suite in plan.suites:
        for profile in plan.profiles:
            out.append((f"{profile}-{suite}", base.but(profile=profile, suite=suite)))
        for b in plan.boards:
            entry = lab.load(b.lab).board(b.board)
            out.append((f"board-{b.board}-{suite}", base.but(profile=entry.profile, suite=suite,
                                                                         lab=b.lab, board=b.board)))
    return out


def night(plan: Plan, work: Path, ui: Ui, name: str | None = None, accel: str = "auto") -> int:
    from harness import jobs

    name = name or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if not NIGHT.match(name):
        raise InputError(f"night {name!r} is not a directory name", "letters, digits, '.', '_' and '-'")
    wd = WorkDir(work).prepare()
    root = (plan.root or wd.root / "nightly" / plan.name).resolve()
    here = root / name
    if here.exists() and any(here.iterdir()):
        raise InputError(f"night {name} already ran under {root}", "pass another --night NAME")
    base = Options.of(work=wd.root, kernel_src=plan.kernel_src, rev=plan.rev, patches=list(plan.patches),
                   default_patches=plan.default_patches, debug=plan.debug, accel=accel)
    todo = cells(plan, base)
    ui.info(f"night {name}: {len(todo)} cell{'s' if len(todo) != 1 else ''} into {here}")
    interrupted = False
    with WorkLock(wd):
        for dirname, opts in todo:
            ui.info(f"night {name}: cell {dirname}")
            _, interrupted = jobs.run_one(opts.but(results=here / dirname), ui, here / dirname,
                                          brief=f"night {name}: {dirname}")
            if interrupted:
                break
    verdict = write_reports(here, root, plan.history, ui)
    ui.out.print(f"night {name}: {verdict.upper()}; summary: {here / 'summary.md'}, page: {here / 'report.html'}",
                 highlight=False, markup=False)
    return EXIT_INTERRUPTED if interrupted else merge.exit_code(verdict)


def write_reports(here: Path, root: Path, last: int, ui: Ui | None = None) -> str:
    """The merged reports of the night ``here`` with the history of the
    nights before it under ``root``."""
    def history(dest: Path):
        try:
            h = hist.build(root, dest, last)
        except (HarnessError, ValueError) as e:
            if ui:
                ui.warn(f"no history: {e}")
            return None
        atomic_write(dest / "history.json", json.dumps(h.to_json(), indent=2) + "\n")
        return h

    return merge.write(merge.cells([here]), here, warn=ui.warn if ui else None, history=history)
