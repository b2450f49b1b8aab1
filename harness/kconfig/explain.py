"""Why a requested Kconfig symbol did not get its value, and how to fix it.

The config stage runs the tree's own ``make olddefconfig`` and then checks
that every requested symbol kept its value.  When one did not, a bare
"CONFIG_IOMMUFD_TEST=y ended up not set" leaves the user to dig through
Kconfig files.  This module loads the same tree with kconfiglib (through
:mod:`harness.kconfiglib_compat`, so current kernels parse and ``$(cc-option
...)`` sees the same compiler), loads the .config that olddefconfig wrote so
every value is the real one, and answers per symbol:

* its ``depends on`` with the value of each symbol in it
  (``IOMMUFD_TEST depends on DEBUG_KERNEL [=y] && FAULT_INJECTION [=n]``),
* the ``select``/``imply`` lines that forced a value,
* the fragment lines that would fix it, found by following unmet
  dependencies a few levels down and stopping, with a reason, at symbols a
  fragment cannot set (no prompt, provided by the architecture, not defined
  for this ARCH, fixed by the build environment).  Each proposal is then
  loaded into kconfiglib on top of the .config, as merge_config.sh and
  olddefconfig would, and extended or flagged if the symbol still does not
  get its value,
* for a symbol that does not exist: close matches among the tree's symbols,
  and where it is defined if only another architecture has it.

Nothing here may stop a run: any failure becomes "no explanation available:
<reason>" (:class:`Unavailable`).  A model is not thread-safe (checking a
proposal loads values into it for a moment).  Typical use::

    model = load_tree(tree, "x86_64", build_dir / ".config", toolchain_vars(tc))
    print(report(model, {"CONFIG_IOMMUFD_TEST": "y"}))
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import kconfiglib
from kconfiglib import (
    AND,
    BOOL,
    EQUAL,
    HEX,
    INT,
    NOT,
    OR,
    STRING,
    TRISTATE,
    UNEQUAL,
    Choice,
    Symbol,
)

from harness.kconfig import compat
from harness.toolchain import Toolchain

PREFIX = "CONFIG_"
MAX_DEPTH = 5  # levels of dependencies followed when proposing a fix
CHECK_ROUNDS = 3  # times a proposal is checked with kconfiglib and extended
_BLOCKED = 1000  # cost of a plan that needs something a fragment cannot do
_TRI = {"n": 0, "m": 1, "y": 2}
_TRI_STR = ("n", "m", "y")


@dataclass(frozen=True)
class Unavailable:
    """The tree could not be loaded; ``reason`` is one line."""

    reason: str

    def render(self) -> str:
        return f"no explanation available: {self.reason}"


@dataclass(frozen=True, eq=False)
class KconfigModel:
    """A parsed tree with a .config loaded: what :func:`explain` queries."""

    kconf: kconfiglib.Kconfig = field(repr=False)
    tree: Path
    arch: str
    config: Path | None
    env: Mapping[str, str] = field(repr=False)
    notes: tuple[str, ...] = ()  # caveats that apply to every explanation
    seconds: float = 0.0  # parse + load time
    config_text: str = field(default="", repr=False)  # what was loaded; proposals are checked on top of it

    def symbol(self, name: str) -> Symbol | None:
        """The defined symbol ``name`` (with or without CONFIG_), or None."""
        sym = self.kconf.syms.get(_bare(name))
        return sym if sym is not None and sym.nodes else None

    def value(self, name: str) -> str | None:
        """The value the loaded .config gives ``name``; None if undefined."""
        sym = self.symbol(name)
        return None if sym is None else sym.str_value


@dataclass(frozen=True)
class Explanation:
    """What one requested setting got, why, and the lines that fix it."""

    symbol: str  # "CONFIG_IOMMUFD_TEST"
    requested: str  # "y", as in the fragment
    actual: str | None  # the model's value; None: no such symbol
    known: bool  # False: no such symbol in this tree/arch
    close_matches: tuple[str, ...] = ()
    depends: str = ""  # rendered 'depends on' with values, "" if none
    forced_by: tuple[str, ...] = ()  # active select/imply lines with values
    fix: tuple[str, ...] = ()  # fragment lines that would fix it
    note: str = ""  # why the fix is partial or impossible, and other facts

    @property
    def ok(self) -> bool:
        """The model gives the symbol the requested value."""
        return self.known and _same_value(self.requested, self.actual)

    def render(self) -> str:
        name = _bare(self.symbol)
        head = f"{self.symbol}={self.requested}"
        if not self.known:
            line = f"{head}: no symbol {name} in this tree"
            if self.close_matches:
                line += f"; did you mean {' or '.join(self.close_matches)}?"
            lines = [line]
        elif self.ok:
            lines = [f"{head}: has that value"]
        else:
            got = "not set" if self.actual in (None, "", "n") else self.actual
            lines = [f"{head} was requested but it is {got}:"]
        if self.depends:
            lines.append(f"  {name} depends on {self.depends}")
        lines += [f"  {name} is {f}" for f in self.forced_by]
        if self.note:
            lines += [f"  note: {n}" for n in self.note.split("\n")]
        if len(self.fix) == 1:
            lines.append(f"  fix: add {self.fix[0]}")
        elif self.fix:
            lines.append("  fix: add these lines to a fragment (or --kconfig-add):")
            lines += [f"    {f}" for f in self.fix]
        return "\n".join(lines)


# --------------------------------------------------------------------------
# Loading


def toolchain_vars(toolchain: Toolchain) -> dict[str, str]:
    """The VAR=value arguments the harness puts on make's command line for
    ``toolchain``: ARCH,
    CROSS_COMPILE and CC (``ccache gcc`` when ccache is used), so the model
    sees the compiler the real olddefconfig saw."""
    out = {}
    for arg in toolchain.make_argv(Path("."), None):
        name, eq, value = arg.partition("=")
        if eq and name.isupper():
            out[name] = value
    return out


def load_tree(tree: Path, arch: str, config: Path | None,
              env: Mapping[str, str] | None = None) -> KconfigModel | Unavailable:
    """Parse ``tree`` for ``ARCH=arch`` and load ``config`` (the .config
    olddefconfig wrote; None: the tree's defaults).  ``env`` holds make's
    command-line variables (see :func:`toolchain_vars`).

    Takes a few seconds on a real tree (every ``$(shell ...)`` runs).  Never
    raises: a failure is an :class:`Unavailable` with a one-line reason.
    """
    start = time.monotonic()
    try:
        tree = Path(tree)
        full = compat.kbuild_env(tree, arch, {"ARCH": arch, **(env or {})})
        full, note = compat.compiler_fallback(full)
        notes = (note,) if note else ()
        kconf = compat.parse(tree, full)
        text = ""
        if config is not None:
            try:
                text = Path(config).read_text(errors="replace")
                kconf.load_config(str(config))
            except (OSError, kconfiglib.KconfigError) as e:
                return Unavailable(f"cannot load {config}: {compat.one_line(e)}")
        return KconfigModel(kconf, tree, arch, Path(config) if config else None, full, notes,
                            time.monotonic() - start, text)
    except compat.CompatError as e:
        return Unavailable(str(e))
    except Exception as e:  # noqa: BLE001 - explaining must never stop a run
        return Unavailable(f"{type(e).__name__}: {compat.one_line(e)}")


# --------------------------------------------------------------------------
# Explaining


def explain(model: KconfigModel, requested: Mapping[str, str]) -> list[Explanation]:
    """One :class:`Explanation` per requested ``{"CONFIG_X": "y"}`` entry, in
    order (pass the settings that did not stick)."""
    out = []
    for symbol, value in requested.items():
        symbol = symbol if symbol.startswith(PREFIX) else PREFIX + symbol
        try:
            out.append(_explain_one(model, symbol, value))
        except Exception as e:  # noqa: BLE001 - one odd symbol must not hide the others
            out.append(Explanation(symbol, value, model.value(symbol), model.symbol(symbol) is not None,
                                   note=f"no explanation available: {type(e).__name__}: "
                                        f"{compat.one_line(e)}"))
    return out


def report(model: KconfigModel | Unavailable, requested: Mapping[str, str]) -> str:
    """Everything :func:`explain` says, as text for the terminal or a log;
    the one call a caller needs (handles :class:`Unavailable`)."""
    if isinstance(model, Unavailable):
        return model.render()
    parts = [e.render() for e in explain(model, requested)]
    parts += [f"note: {n}" for n in model.notes]
    return "\n".join(parts)


def explain_symbol(model: KconfigModel | Unavailable, symbol: str) -> str:
    """Everything about one symbol, for ``config --explain CONFIG_X[=value]``:
    where it is defined, type and value, dependencies, what selects and
    implies it, what it selects, and (when it does not have the value; y by
    default) how to get it."""
    if isinstance(model, Unavailable):
        return model.render()
    name, _, value = symbol.strip().partition("=")
    name = name if name.startswith(PREFIX) else PREFIX + name
    sym = model.symbol(name)
    if sym is None:
        return explain(model, {name: value or "y"})[0].render()
    lines = [f"{name} ({kconfiglib.TYPE_TO_STR[sym.orig_type]}) = {_config_value(sym)}"]
    for node in sym.nodes:
        prompt = f' "{node.prompt[0]}"' if node.prompt else " (no prompt: a fragment cannot set it)"
        lines.append(f"  defined at {node.filename}:{node.linenr}{prompt}")
    if sym.direct_dep is not model.kconf.y:
        lines.append(f"  depends on {_expr(sym.direct_dep)}")
    for kind, expr in (("selected by", sym.rev_dep), ("implied by", sym.weak_rev_dep)):
        lines += [f"  {kind} {_expr(t)}" for t in _terms(expr, OR) if t is not model.kconf.n]
    lines += [f"  {_default_str(sym, v, c)}" for v, c in sym.defaults]
    for kind, items in (("selects", sym.selects), ("implies", sym.implies)):
        for target, cond in items:
            extra = _without(cond, sym.direct_dep)
            lines.append(f"  {kind} {target.name}" + ("" if extra is None else f" if {_expr(extra)}"))
    want = value or ("y" if sym.type in (BOOL, TRISTATE) else "")
    if want and not _same_value(want, _config_value(sym)):
        e = explain(model, {name: want})[0]
        lines.append(f"  to get {_setting_line(name, want)}:")
        lines += [f"    note: {n}" for n in e.note.split("\n") if n]
        lines += [f"    add {f}" for f in e.fix]
    lines += [f"note: {n}" for n in model.notes]
    return "\n".join(lines)


def _explain_one(model: KconfigModel, symbol: str, requested: str) -> Explanation:
    sym = model.symbol(symbol)
    if sym is None:
        return _unknown(model, symbol, requested)
    actual = _config_value(sym)
    depends = "" if sym.direct_dep is model.kconf.y else _expr(sym.direct_dep)
    forced = _forced_by(sym)
    if _same_value(requested, actual):
        return Explanation(symbol, requested, actual, True, depends=depends, forced_by=forced)

    notes: list[str] = []
    req = requested.strip()
    own_line = _setting_line(symbol, req)
    goal = req  # the value the fix aims at
    if sym.type in (BOOL, TRISTATE) and req not in _TRI:
        return Explanation(symbol, requested, actual, True, depends=depends, forced_by=forced,
                           note=f"{sym.name} is a {kconfiglib.TYPE_TO_STR[sym.orig_type]}: "
                                "its values are y, m or n")
    if req == "m" and sym.orig_type is BOOL:
        notes.append(f"{sym.name} is a bool: it can be y or n, not m")
        goal = "y"
    elif req == "m" and model.kconf.modules.tri_value < 2:
        notes.append("m needs CONFIG_MODULES=y; without it a module is built in (y)")
    if sym.type not in (BOOL, TRISTATE):
        notes += _range_notes(sym, req)
    hidden = _hidden_prompt(sym)
    if hidden:
        notes.append(hidden)
    if not _has_prompt(sym):
        active = [_default_str(sym, v, c) for v, c in sym.defaults if kconfiglib.expr_value(c)]
        source = (f"its default ({active[0]}) and what selects or implies it" if active
                  else "what selects or implies it (no default applies)" if sym.defaults
                  else "what selects or implies it (it has no default)")
        notes.append(f"{_promptless(sym)}: a fragment line for it has no effect; its value comes from {source}")
    if sym.choice is not None and req == "y" and sym.choice.selection is not sym:
        sel = sym.choice.selection
        notes.append(f"{sym.name} is one option of the choice at {_loc(sym.choice)}, where "
                     f"{PREFIX + sel.name if sel else 'nothing'} is selected; "
                     "set the one you want =y and leave the others unset")

    goal_line = _setting_line(symbol, goal)
    plan = _plan(model, sym, goal, MAX_DEPTH)
    if goal != req:  # the requested line itself must change
        plan = _Plan((goal_line,)) + plan
    if not plan.blockers and plan.lines:
        plan, got = _check(model, sym, goal, goal_line, plan, lambda depth: _plan(model, sym, goal, depth))
        if got is None:  # confirmed: where the search stopped no longer matters
            plan = _Plan(plan.lines, plan.blockers)
        else:
            notes.append(f"kconfiglib still gives {sym.name}={got} with these lines: look further with "
                         f"'config --explain {symbol}'")
    fix = tuple(line for line in plan.lines if line != own_line)
    if plan.blockers:
        notes.append("a fragment cannot fix this: " + "; ".join(plan.blockers))
        fix = ()
    notes += plan.caveats
    if not fix and not notes:
        notes.append(f"nothing stops {sym.name} from being {req} here: check that the line reaches "
                     "the merged fragment and that no later fragment or --kconfig-add overrides it")
    return Explanation(symbol, requested, actual, True, depends=depends, forced_by=forced,
                       fix=fix, note="\n".join(_unique(notes)))


def _plan(model: KconfigModel, sym: Symbol, goal: str, depth: int) -> _Plan:
    """Lines that move ``sym`` to ``goal``, judged on the current values."""
    planner = _Planner(model, depth)
    plan = _Plan()
    if sym.type in (BOOL, TRISTATE):
        target = _TRI[goal]
        if target == 1 and model.kconf.modules.tri_value < 2:
            plan = planner.raise_sym(model.kconf.modules, 2)
        if target > sym.tri_value:
            plan = plan + planner.raise_sym(sym, target, top=True)
        elif target < sym.tri_value:
            plan = plan + planner.lower_sym(sym, target, top=True)
    elif not sym.visibility:
        plan = planner.raise_sym(sym, 2, top=True, assign=goal)
    return plan


def _check(model: KconfigModel, sym: Symbol, goal: str, goal_line: str, plan: _Plan,
           replan: Callable[[int], _Plan]) -> tuple[_Plan, str | None]:
    """Load the .config plus the proposed lines into kconfiglib (what
    merge_config.sh + olddefconfig would do) and see whether ``sym`` gets
    ``goal``.  If not, plan again from those values and add what that finds:
    some requirements only show once others are met (``A = y || A = B`` is
    true while both are n), and a chain deeper than the search went needs a
    deeper search.  Returns the plan and None when kconfiglib confirms it,
    else the value ``sym`` still gets."""
    got = None
    for round_ in range(CHECK_ROUNDS):
        with _applied(model, (*plan.lines, goal_line)):
            got = _config_value(sym)
            if _same_value(goal, got):
                return plan, None
            more = replan(MAX_DEPTH * (round_ + 2))
        if more.blockers or set(more.lines) <= set(plan.lines):
            break
        plan = plan + more
    return plan, got


@contextmanager
def _applied(model: KconfigModel, lines: Iterable[str]) -> Iterator[None]:
    """The model's .config with ``lines`` appended is loaded for the block;
    the original values (and warnings list) are back afterwards."""
    kconf = model.kconf
    warnings = len(kconf.warnings)
    try:
        _load_text(kconf, model.config_text + "\n" + "\n".join(lines) + "\n")
        yield
    finally:
        _load_text(kconf, model.config_text)
        del kconf.warnings[warnings:]


def _load_text(kconf: kconfiglib.Kconfig, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", prefix="kconfig-explain-", suffix=".config") as f:
        f.write(text)
        f.flush()
        kconf.load_config(f.name)


def _hidden_prompt(sym: Symbol) -> str:
    """A note when the dependencies are met but the prompt's own condition
    (``bool "..." if EXPERT``, ``visible if``) hides it."""
    if not _has_prompt(sym) or sym.visibility or not kconfiglib.expr_value(sym.direct_dep):
        return ""
    extra = _without(_prompt_expr(sym), sym.direct_dep)
    cond = _expr(extra) if extra is not None else _expr(_prompt_expr(sym))
    return f"the prompt of {sym.name} is hidden (shown only if {cond}), so its value comes from its default"


def _default_str(sym: Symbol, value: object, cond: object) -> str:
    extra = _without(cond, sym.direct_dep)
    return f"default {_expr(value)}" + ("" if extra is None else f" if {_expr(extra)}")


def _setting_line(symbol: str, value: str) -> str:
    return f"# {symbol} is not set" if value == "n" else f"{symbol}={value}"


def _unknown(model: KconfigModel, symbol: str, requested: str) -> Explanation:
    name = _bare(symbol)
    names = [s.name for s in model.kconf.unique_defined_syms]
    close = tuple(PREFIX + n for n in difflib.get_close_matches(name, names, n=3, cutoff=0.75))
    elsewhere = _defined_elsewhere(model, name)
    if elsewhere:
        note = (f"{name} is defined in {', '.join(elsewhere[:3])}, which ARCH={model.arch} does not "
                "use: it does not exist for this architecture")
    else:
        note = f"no Kconfig file in {model.tree.name} defines {name}"
    return Explanation(symbol, requested, None, False, close_matches=close, note=note)


def _defined_elsewhere(model: KconfigModel, name: str) -> list[str]:
    """Kconfig files of the tree that were not parsed for this ARCH (other
    architectures' files and what only they source) and define ``name``."""
    parsed = {os.path.normpath(f) for f in model.kconf.kconfig_filenames}
    pattern = re.compile(rf"^\s*(?:menu)?config\s+{re.escape(name)}\s*$", re.MULTILINE)
    hits = []
    for root, dirs, files in os.walk(model.tree):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith("Kconfig"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, model.tree)
            if rel in parsed:
                continue
            try:
                text = Path(path).read_text(errors="replace")
            except OSError:
                continue
            if name in text and pattern.search(text):
                hits.append(rel)
    return sorted(hits)


def _forced_by(sym: Symbol) -> tuple[str, ...]:
    out = []
    for kind, expr in (("selected by", sym.rev_dep), ("implied by", sym.weak_rev_dep)):
        for term in _terms(expr, OR):
            if kconfiglib.expr_value(term):
                out.append(f"{kind} {_expr(term)}")
    return tuple(out)


def _range_notes(sym: Symbol, req: str) -> list[str]:
    if sym.type not in (INT, HEX):
        return []
    out = []
    for low, high, cond in sym.ranges:
        if kconfiglib.expr_value(cond):
            out.append(f"{sym.name} must be in the range {low.str_value}..{high.str_value}"
                       f" (asked for {req}); a value outside it is ignored")
            break
    return out


# --------------------------------------------------------------------------
# Proposing fragment lines


@dataclass(frozen=True)
class _Plan:
    """Fragment lines to add; ``blockers``: requirements no fragment can
    meet (the lines are then moot); ``caveats``: where the search stopped."""

    lines: tuple[str, ...] = ()
    blockers: tuple[str, ...] = ()
    caveats: tuple[str, ...] = ()

    def __add__(self, other: _Plan) -> _Plan:
        return _Plan(_unique(self.lines + other.lines), _unique(self.blockers + other.blockers),
                     _unique(self.caveats + other.caveats))

    @property
    def cost(self) -> int:
        return len(self.lines) + _BLOCKED * len(self.blockers)


class _Planner:
    """Finds fragment lines that raise (or lower) a symbol to a value by
    walking its dependencies, prompt conditions, defaults and selects.

    It reasons on the current values, one requirement at a time, and picks
    the cheapest alternative of an ``||`` (fewest lines, nothing blocked);
    for a promptless symbol it tries what selects or implies it and its
    defaults up to the first one that applies.  :func:`_check` then tries
    the result in kconfiglib.
    """

    def __init__(self, model: KconfigModel, depth: int = MAX_DEPTH):
        self.model = model
        self.depth = depth
        self.kconf = model.kconf
        self.stack: list[Symbol] = []
        self.memo: dict[tuple[int, int, bool], _Plan] = {}

    # expressions ------------------------------------------------------
    def raise_expr(self, expr: object, target: int) -> _Plan:
        """Lines that make ``expr`` evaluate to at least ``target``."""
        if kconfiglib.expr_value(expr) >= target:
            return _Plan()
        if expr.__class__ is not tuple:
            if expr.__class__ is Choice:
                return _Plan(blockers=(f"the choice at {_loc(expr)} is not enabled",))
            return self.raise_sym(expr, target)
        op = expr[0]
        if op is AND:
            return self.raise_expr(expr[1], target) + self.raise_expr(expr[2], target)
        if op is OR:
            return self._cheapest(self.raise_expr(t, target) for t in _terms(expr, OR))
        if op is NOT:
            return self.lower_expr(expr[1], 2 - target)
        return self._relation(expr, want=True)

    def lower_expr(self, expr: object, limit: int) -> _Plan:
        """Lines that make ``expr`` evaluate to at most ``limit``."""
        if kconfiglib.expr_value(expr) <= limit:
            return _Plan()
        if expr.__class__ is not tuple:
            if expr.__class__ is Choice:
                return _Plan(blockers=(f"the choice at {_loc(expr)} is enabled",))
            return self.lower_sym(expr, limit)
        op = expr[0]
        if op is AND:
            return self._cheapest(self.lower_expr(t, limit) for t in _terms(expr, AND))
        if op is OR:
            return self.lower_expr(expr[1], limit) + self.lower_expr(expr[2], limit)
        if op is NOT:
            return self.raise_expr(expr[1], 2 - limit)
        return self._relation(expr, want=False)

    def _relation(self, expr: tuple, want: bool) -> _Plan:
        """``A = B`` / ``A != B`` with one side a constant: set the symbol."""
        rel, a, b = expr
        if a.is_constant and not b.is_constant:
            a, b = b, a
        shown = _expr(expr)
        if a.is_constant:
            why = (f"{shown} is fixed by the tree and the build environment "
                   f"(ARCH={self.model.arch}, compiler), not by the .config")
            return _Plan(blockers=(why,))
        if b.is_constant and rel in (EQUAL, UNEQUAL):
            equal = (rel is EQUAL) == want  # need a == b, else a != b
            if a.type in (BOOL, TRISTATE) and b.name in _TRI:
                value = _TRI[b.name]
                if equal:
                    return self.raise_sym(a, value) if value else self.lower_sym(a, 0)
                if value == 0:
                    return self.raise_sym(a, 1)
                return self.lower_sym(a, 0 if value == 1 or a.type is BOOL else 1)
            if equal and a.type in (STRING, INT, HEX):
                val = f'"{kconfiglib.escape(b.name)}"' if a.type is STRING else b.name
                return self.raise_sym(a, 2, assign=val)
        return _Plan(blockers=(f"{shown} must become {'true' if want else 'false'}",))

    def _cheapest(self, plans: Iterable[_Plan]) -> _Plan:
        best = None
        for p in plans:
            if best is None or p.cost < best.cost:
                best = p
        return best or _Plan()

    # symbols ----------------------------------------------------------
    def raise_sym(self, sym: Symbol, target: int, top: bool = False, assign: str | None = None) -> _Plan:
        """Lines that give ``sym`` at least ``target`` (``assign``: the
        value a string/int symbol must have)."""
        if sym.type is BOOL and target == 1:
            target = 2
        if assign is None and not top and sym.tri_value >= target:
            return _Plan()
        key = (id(sym), target, True)
        if assign is None and key in self.memo:
            return self.memo[key]
        if sym.is_constant:
            return _Plan(blockers=(f"the constant {_expr(sym)} is never {_TRI_STR[target]}",))
        if not sym.nodes:
            return _Plan(blockers=(f"{sym.name} is not defined for ARCH={self.model.arch}",))
        if sym in self.stack:
            return _Plan()
        if len(self.stack) >= self.depth:
            line = _line(sym, target, assign) if _has_prompt(sym) else None
            return _Plan((line,) if line else (), caveats=(_stopped(sym, "", self.depth),))
        self.stack.append(sym)
        try:
            if _has_prompt(sym):
                plan = _Plan((_line(sym, target, assign),)) + self.raise_expr(_prompt_expr(sym), target)
                if target == 1:
                    plan = plan + self.raise_sym(self.kconf.modules, 2)
            else:
                plan = self._raise_promptless(sym, target)
        finally:
            self.stack.pop()
        if assign is None:
            self.memo[key] = plan
        return plan

    def _raise_promptless(self, sym: Symbol, target: int) -> _Plan:
        options = []
        for term in _terms(sym.rev_dep, OR):  # selected by ...
            if term is not self.kconf.n:
                options.append(self.raise_expr(term, target))
        for term in _terms(sym.weak_rev_dep, OR):  # implied by ...
            if term is not self.kconf.n:
                options.append(self.raise_expr((AND, term, sym.direct_dep), target))
        for value, cond in sym.defaults:  # the first default whose condition holds wins
            if value.__class__ is tuple or not value.is_constant or value.name in _TRI:
                options.append(self.raise_expr((AND, value, cond), target))
            if kconfiglib.expr_value(cond):
                break
        best = self._cheapest(options)
        if options and not best.blockers:
            return best
        # The top symbol's lack of a prompt is already a note of its own.
        who = sym.name if len(self.stack) == 1 else f"{sym.name} ({_promptless(sym, short=True)})"
        if not options:
            return _Plan(blockers=(f"nothing selects {who} or gives it a default of {_TRI_STR[target]}",))
        return _Plan(blockers=(f"what would give {who} a value needs: " + "; ".join(best.blockers),))

    def lower_sym(self, sym: Symbol, limit: int, top: bool = False) -> _Plan:
        """Lines that give ``sym`` at most ``limit`` (usually n)."""
        if not top and sym.tri_value <= limit:
            return _Plan()
        key = (id(sym), limit, False)
        if key in self.memo:
            return self.memo[key]
        if sym.is_constant:
            return _Plan(blockers=(f"the constant {_expr(sym)} is never {_TRI_STR[limit]}",))
        if sym in self.stack:
            return _Plan()
        if len(self.stack) >= self.depth:
            return _Plan(caveats=(_stopped(sym, "=n", self.depth),))
        self.stack.append(sym)
        try:
            plan = _Plan()
            for term in _terms(sym.rev_dep, OR):  # every active select must go
                if kconfiglib.expr_value(term) > limit:
                    plan = plan + self.lower_expr(term, limit)
            if _has_prompt(sym) and sym.visibility:
                plan = _Plan((_line(sym, limit),)) + plan
            elif _has_prompt(sym):  # hidden prompt: make it visible, then say n
                plan = _Plan((_line(sym, limit),)) + plan + self.raise_expr(_prompt_expr(sym), 1)
            else:  # promptless: every default (and imply) that applies must go
                for value, cond in sym.defaults:
                    plan = plan + self.lower_expr((AND, value, cond), limit)
                for term in _terms(sym.weak_rev_dep, OR):
                    plan = plan + self.lower_expr((AND, term, sym.direct_dep), limit)
        finally:
            self.stack.pop()
        self.memo[key] = plan
        return plan


# --------------------------------------------------------------------------
# Helpers


def _bare(name: str) -> str:
    name = name.strip()
    return name.removeprefix(PREFIX)


def _stopped(sym: Symbol, value: str, depth: int) -> str:
    return (f"stopped following dependencies at {sym.name} ({depth} levels deep): "
            f"check them with 'config --explain {PREFIX}{sym.name}{value}'")


def _has_prompt(sym: Symbol) -> bool:
    return any(n.prompt for n in sym.nodes)


def _prompt_expr(sym: Symbol) -> object:
    """When the prompt shows (its ``if``, ``visible if`` and dependencies)."""
    exprs = [n.prompt[1] for n in sym.nodes if n.prompt]
    out = exprs[0] if exprs else sym.kconfig.n
    for e in exprs[1:]:
        out = (OR, out, e)
    return out


def _promptless(sym: Symbol, short: bool = False) -> str:
    where = _loc(sym)
    what = "provided by the architecture" if where.startswith("arch/") else "not user-settable"
    return f"no prompt: {what}, {where}" if short else f"{sym.name} has no prompt ({what}, {where})"


def _without(cond: object, dep: object) -> object:
    """``cond`` minus the ``&&`` terms it shares with ``dep``: kconfiglib
    folds a symbol's dependencies into every default/select condition, which
    only repeats the 'depends on' line."""
    shared = set(map(id, _terms(dep, AND)))
    keep = [t for t in _terms(cond, AND) if id(t) not in shared and t not in _terms(dep, AND)]
    if not keep:
        return None
    out = keep[0]
    for t in keep[1:]:
        out = (AND, out, t)
    return out


def _line(sym: Symbol, value: int, assign: str | None = None) -> str:
    if assign is not None:
        return f"{PREFIX}{sym.name}={assign}"
    if value == 0:
        return f"# {PREFIX}{sym.name} is not set"
    return f"{PREFIX}{sym.name}={_TRI_STR[value]}"


def _config_value(sym: Symbol) -> str:
    """The value as a .config line would carry it (strings quoted)."""
    if sym.type is STRING:
        return f'"{kconfiglib.escape(sym.str_value)}"'
    return sym.str_value


def _same_value(requested: str, actual: str | None) -> bool:
    """Same rule as config.check(): n matches unset; numbers compare by value."""
    req = requested.strip()
    if req == "n":
        return actual in (None, "", "n")
    if actual is None:
        return False
    if req == actual:
        return True
    try:
        return int(req, 0) == int(actual, 0)
    except ValueError:
        return False


def _terms(expr: object, op: int) -> list:
    return kconfiglib.split_expr(expr, op)


def _with_value(sc: object) -> str:
    """``NAME [=value]`` like menuconfig's help; constants as written."""
    if sc.__class__ is Symbol and not sc.is_constant:
        return f"{sc.name} [={sc.str_value if sc.nodes else 'n'}]"
    return kconfiglib.standard_sc_expr_str(sc)


def _expr(expr: object) -> str:
    return kconfiglib.expr_str(expr, _with_value)


def _loc(item: Symbol | Choice) -> str:
    return ", ".join(f"{n.filename}:{n.linenr}" for n in item.nodes) or "nowhere"


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
