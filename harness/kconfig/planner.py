"""The search for the fragment lines that give a symbol a requested value.

:func:`plan` follows unmet dependencies a few levels down and stops, with a
reason, at symbols a fragment cannot set (no prompt, provided by the
architecture, not defined for this ARCH, fixed by the build environment).
:func:`check` then loads the proposal into kconfiglib on top of the .config,
as merge_config.sh and olddefconfig would, and extends it, or says which
value the symbol still gets.  Both return a :class:`Plan`, which
:mod:`harness.kconfig.explain` turns into fix lines and notes.

Checking loads values into the model for a moment (and puts the original
ones back), so a model must not be used by two threads at once.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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

from harness.kconfig.model import KconfigModel
from harness.kconfig.symbols import (
    PREFIX,
    TRI,
    TRI_STR,
    config_value,
    has_prompt,
    locations,
    prompt_expr,
    promptless_note,
    render_expr,
    same_value,
    terms,
    unique,
)

MAX_DEPTH = 5  # levels of dependencies followed when proposing a fix
CHECK_ROUNDS = 3  # times a proposal is checked with kconfiglib and extended
_BLOCKED = 1000  # cost of a plan that needs something a fragment cannot do


@dataclass(frozen=True)
class Plan:
    """Fragment lines to add; ``blockers``: requirements no fragment can
    meet (the lines are then moot); ``caveats``: where the search stopped."""

    lines: tuple[str, ...] = ()
    blockers: tuple[str, ...] = ()
    caveats: tuple[str, ...] = ()

    def __add__(self, other: Plan) -> Plan:
        return Plan(unique(self.lines + other.lines), unique(self.blockers + other.blockers),
                    unique(self.caveats + other.caveats))

    @property
    def cost(self) -> int:
        return len(self.lines) + _BLOCKED * len(self.blockers)


class _Planner:
    """Finds fragment lines that raise (or lower) a symbol to a value by
    walking its dependencies, prompt conditions, defaults and selects.

    It reasons on the current values, one requirement at a time, and picks
    the cheapest alternative of an ``||`` (fewest lines, nothing blocked);
    for a promptless symbol it tries what selects or implies it and its
    defaults up to the first one that applies.  :func:`check` then tries
    the result in kconfiglib.
    """

    def __init__(self, model: KconfigModel, depth: int = MAX_DEPTH):
        self.model = model
        self.depth = depth
        self.kconf = model.kconf
        self.stack: list[Symbol] = []
        self.memo: dict[tuple[int, int, bool], Plan] = {}

    # expressions ------------------------------------------------------
    def raise_expr(self, expr: object, target: int) -> Plan:
        """Lines that make ``expr`` evaluate to at least ``target``."""
        if kconfiglib.expr_value(expr) >= target:
            return Plan()
        if expr.__class__ is not tuple:
            if expr.__class__ is Choice:
                return Plan(blockers=(f"the choice at {locations(expr)} is not enabled",))
            return self.raise_sym(expr, target)
        op = expr[0]
        if op is AND:
            return self.raise_expr(expr[1], target) + self.raise_expr(expr[2], target)
        if op is OR:
            return self._cheapest(self.raise_expr(t, target) for t in terms(expr, OR))
        if op is NOT:
            return self.lower_expr(expr[1], 2 - target)
        return self._relation(expr, want=True)

    def lower_expr(self, expr: object, limit: int) -> Plan:
        """Lines that make ``expr`` evaluate to at most ``limit``."""
        if kconfiglib.expr_value(expr) <= limit:
            return Plan()
        if expr.__class__ is not tuple:
            if expr.__class__ is Choice:
                return Plan(blockers=(f"the choice at {locations(expr)} is enabled",))
            return self.lower_sym(expr, limit)
        op = expr[0]
        if op is AND:
            return self._cheapest(self.lower_expr(t, limit) for t in terms(expr, AND))
        if op is OR:
            return self.lower_expr(expr[1], limit) + self.lower_expr(expr[2], limit)
        if op is NOT:
            return self.raise_expr(expr[1], 2 - limit)
        return self._relation(expr, want=False)

    def _relation(self, expr: tuple, want: bool) -> Plan:
        """``A = B`` / ``A != B`` with one side a constant: set the symbol."""
        rel, a, b = expr
        if a.is_constant and not b.is_constant:
            a, b = b, a
        shown = render_expr(expr)
        if a.is_constant:
            why = (f"{shown} is fixed by the tree and the build environment "
                   f"(ARCH={self.model.arch}, compiler), not by the .config")
            return Plan(blockers=(why,))
        if b.is_constant and rel in (EQUAL, UNEQUAL):
            equal = (rel is EQUAL) == want  # need a == b, else a != b
            if a.type in (BOOL, TRISTATE) and b.name in TRI:
                value = TRI[b.name]
                if equal:
                    return self.raise_sym(a, value) if value else self.lower_sym(a, 0)
                if value == 0:
                    return self.raise_sym(a, 1)
                return self.lower_sym(a, 0 if value == 1 or a.type is BOOL else 1)
            if equal and a.type in (STRING, INT, HEX):
                val = f'"{kconfiglib.escape(b.name)}"' if a.type is STRING else b.name
                return self.raise_sym(a, 2, assign=val)
        return Plan(blockers=(f"{shown} must become {'true' if want else 'false'}",))

    def _cheapest(self, plans: Iterable[Plan]) -> Plan:
        best = None
        for p in plans:
            if best is None or p.cost < best.cost:
                best = p
        return best or Plan()

    # symbols ----------------------------------------------------------
    def raise_sym(self, sym: Symbol, target: int, top: bool = False, assign: str | None = None) -> Plan:
        """Lines that give ``sym`` at least ``target`` (``assign``: the
        value a string/int symbol must have)."""
        if sym.type is BOOL and target == 1:
            target = 2
        if assign is None and not top and sym.tri_value >= target:
            return Plan()
        key = (id(sym), target, True)
        if assign is None and key in self.memo:
            return self.memo[key]
        if sym.is_constant:
            return Plan(blockers=(f"the constant {render_expr(sym)} is never {TRI_STR[target]}",))
        if not sym.nodes:
            return Plan(blockers=(f"{sym.name} is not defined for ARCH={self.model.arch}",))
        if sym in self.stack:
            return Plan()
        if len(self.stack) >= self.depth:
            line = _line(sym, target, assign) if has_prompt(sym) else None
            return Plan((line,) if line else (), caveats=(_stopped(sym, "", self.depth),))
        self.stack.append(sym)
        try:
            if has_prompt(sym):
                plan = Plan((_line(sym, target, assign),)) + self.raise_expr(prompt_expr(sym), target)
                if target == 1:
                    plan = plan + self.raise_sym(self.kconf.modules, 2)
            else:
                plan = self._raise_promptless(sym, target)
        finally:
            self.stack.pop()
        if assign is None:
            self.memo[key] = plan
        return plan

    def _raise_promptless(self, sym: Symbol, target: int) -> Plan:
        options = []
        for term in terms(sym.rev_dep, OR):  # selected by ...
            if term is not self.kconf.n:
                options.append(self.raise_expr(term, target))
        for term in terms(sym.weak_rev_dep, OR):  # implied by ...
            if term is not self.kconf.n:
                options.append(self.raise_expr((AND, term, sym.direct_dep), target))
        for value, cond in sym.defaults:  # the first default whose condition holds wins
            if value.__class__ is tuple or not value.is_constant or value.name in TRI:
                options.append(self.raise_expr((AND, value, cond), target))
            if kconfiglib.expr_value(cond):
                break
        best = self._cheapest(options)
        if options and not best.blockers:
            return best
        # The top symbol's lack of a prompt is already a note of its own.
        who = sym.name if len(self.stack) == 1 else f"{sym.name} ({promptless_note(sym, short=True)})"
        if not options:
            return Plan(blockers=(f"nothing selects {who} or gives it a default of {TRI_STR[target]}",))
        return Plan(blockers=(f"what would give {who} a value needs: " + "; ".join(best.blockers),))

    def lower_sym(self, sym: Symbol, limit: int, top: bool = False) -> Plan:
        """Lines that give ``sym`` at most ``limit`` (usually n)."""
        if not top and sym.tri_value <= limit:
            return Plan()
        key = (id(sym), limit, False)
        if key in self.memo:
            return self.memo[key]
        if sym.is_constant:
            return Plan(blockers=(f"the constant {render_expr(sym)} is never {TRI_STR[limit]}",))
        if sym in self.stack:
            return Plan()
        if len(self.stack) >= self.depth:
            return Plan(caveats=(_stopped(sym, "=n", self.depth),))
        self.stack.append(sym)
        try:
            plan = Plan()
            for term in terms(sym.rev_dep, OR):  # every active select must go
                if kconfiglib.expr_value(term) > limit:
                    plan = plan + self.lower_expr(term, limit)
            if has_prompt(sym) and sym.visibility:
                plan = Plan((_line(sym, limit),)) + plan
            elif has_prompt(sym):  # hidden prompt: make it visible, then say n
                plan = Plan((_line(sym, limit),)) + plan + self.raise_expr(prompt_expr(sym), 1)
            else:  # promptless: every default (and imply) that applies must go
                for value, cond in sym.defaults:
                    plan = plan + self.lower_expr((AND, value, cond), limit)
                for term in terms(sym.weak_rev_dep, OR):
                    plan = plan + self.lower_expr((AND, term, sym.direct_dep), limit)
        finally:
            self.stack.pop()
        self.memo[key] = plan
        return plan


def plan(model: KconfigModel, sym: Symbol, goal: str, depth: int) -> Plan:
    """Lines that move ``sym`` to ``goal``, judged on the current values."""
    planner = _Planner(model, depth)
    plan = Plan()
    if sym.type in (BOOL, TRISTATE):
        target = TRI[goal]
        if target == 1 and model.kconf.modules.tri_value < 2:
            plan = planner.raise_sym(model.kconf.modules, 2)
        if target > sym.tri_value:
            plan = plan + planner.raise_sym(sym, target, top=True)
        elif target < sym.tri_value:
            plan = plan + planner.lower_sym(sym, target, top=True)
    elif not sym.visibility:
        plan = planner.raise_sym(sym, 2, top=True, assign=goal)
    return plan


def check(model: KconfigModel, sym: Symbol, goal: str, goal_line: str, plan: Plan,
          replan: Callable[[int], Plan]) -> tuple[Plan, str | None]:
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
            got = config_value(sym)
            if same_value(goal, got):
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


def _line(sym: Symbol, value: int, assign: str | None = None) -> str:
    if assign is not None:
        return f"{PREFIX}{sym.name}={assign}"
    if value == 0:
        return f"# {PREFIX}{sym.name} is not set"
    return f"{PREFIX}{sym.name}={TRI_STR[value]}"


def _stopped(sym: Symbol, value: str, depth: int) -> str:
    return (f"stopped following dependencies at {sym.name} ({depth} levels deep): "
            f"check them with 'config --explain {PREFIX}{sym.name}{value}'")
