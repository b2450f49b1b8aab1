"""Why a requested Kconfig symbol did not get its value, and how to fix it.

The config stage runs the tree's own ``make olddefconfig`` and then checks
that every requested symbol kept its value.  When one did not, a bare
"CONFIG_IOMMUFD_TEST=y ended up not set" leaves the user to dig through
Kconfig files.  Given the tree and the .config that olddefconfig wrote,
loaded into kconfiglib (:mod:`harness.kconfig.model`), this module answers
per symbol:

* its ``depends on`` with the value of each symbol in it
  (``IOMMUFD_TEST depends on DEBUG_KERNEL [=y] && FAULT_INJECTION [=n]``),
* the ``select``/``imply`` lines that forced a value,
* the fragment lines that would fix it, found by following unmet
  dependencies a few levels down and stopping, with a reason, at symbols a
  fragment cannot set (no prompt, provided by the architecture, not defined
  for this ARCH, fixed by the build environment).  Each proposal is then
  loaded into kconfiglib on top of the .config, as merge_config.sh and
  olddefconfig would, and extended or flagged if the symbol still does not
  get its value (that search and check: :mod:`harness.kconfig.planner`),
* for a symbol that does not exist: close matches among the tree's symbols,
  and where it is defined if only another architecture has it.

It owns :class:`Explanation`, :func:`explain`, :func:`report` (what the
config stage prints), :func:`explain_symbol` (``config --explain``) and the
text they render.  Nothing here may stop a run: any failure becomes "no
explanation available: <reason>" (:class:`~harness.kconfig.model.Unavailable`).
Typical use::

    from harness.kconfig.model import load_tree, toolchain_vars

    model = load_tree(tree, "x86_64", build_dir / ".config", toolchain_vars(tc))
    print(report(model, {"CONFIG_IOMMUFD_TEST": "y"}))
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import kconfiglib
from kconfiglib import AND, BOOL, HEX, INT, OR, TRISTATE, Symbol

from harness.kconfig import compat, planner
from harness.kconfig.model import KconfigModel, Unavailable
from harness.kconfig.symbols import (
    PREFIX,
    TRI,
    bare,
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
        return self.known and same_value(self.requested, self.actual)

    def render(self) -> str:
        name = bare(self.symbol)
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
    lines = [f"{name} ({kconfiglib.TYPE_TO_STR[sym.orig_type]}) = {config_value(sym)}"]
    for node in sym.nodes:
        prompt = f' "{node.prompt[0]}"' if node.prompt else " (no prompt: a fragment cannot set it)"
        lines.append(f"  defined at {node.filename}:{node.linenr}{prompt}")
    if sym.direct_dep is not model.kconf.y:
        lines.append(f"  depends on {render_expr(sym.direct_dep)}")
    for kind, expr in (("selected by", sym.rev_dep), ("implied by", sym.weak_rev_dep)):
        lines += [f"  {kind} {render_expr(t)}" for t in terms(expr, OR) if t is not model.kconf.n]
    lines += [f"  {_default_str(sym, v, c)}" for v, c in sym.defaults]
    for kind, items in (("selects", sym.selects), ("implies", sym.implies)):
        for target, cond in items:
            extra = _without(cond, sym.direct_dep)
            lines.append(f"  {kind} {target.name}" + ("" if extra is None else f" if {render_expr(extra)}"))
    want = value or ("y" if sym.type in (BOOL, TRISTATE) else "")
    if want and not same_value(want, config_value(sym)):
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
    actual = config_value(sym)
    depends = "" if sym.direct_dep is model.kconf.y else render_expr(sym.direct_dep)
    forced = _forced_by(sym)
    if same_value(requested, actual):
        return Explanation(symbol, requested, actual, True, depends=depends, forced_by=forced)

    notes: list[str] = []
    req = requested.strip()
    own_line = _setting_line(symbol, req)
    goal = req  # the value the fix aims at
    if sym.type in (BOOL, TRISTATE) and req not in TRI:
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
    if not has_prompt(sym):
        active = [_default_str(sym, v, c) for v, c in sym.defaults if kconfiglib.expr_value(c)]
        source = (f"its default ({active[0]}) and what selects or implies it" if active
                  else "what selects or implies it (no default applies)" if sym.defaults
                  else "what selects or implies it (it has no default)")
        notes.append(f"{promptless_note(sym)}: a fragment line for it has no effect; "
                     f"its value comes from {source}")
    if sym.choice is not None and req == "y" and sym.choice.selection is not sym:
        sel = sym.choice.selection
        notes.append(f"{sym.name} is one option of the choice at {locations(sym.choice)}, where "
                     f"{PREFIX + sel.name if sel else 'nothing'} is selected; "
                     "set the one you want =y and leave the others unset")

    goal_line = _setting_line(symbol, goal)
    plan = planner.plan(model, sym, goal, planner.MAX_DEPTH)
    if goal != req:  # the requested line itself must change
        plan = planner.Plan((goal_line,)) + plan
    if not plan.blockers and plan.lines:
        plan, got = planner.check(model, sym, goal, goal_line, plan,
                                  lambda depth: planner.plan(model, sym, goal, depth))
        if got is None:  # confirmed: where the search stopped no longer matters
            plan = planner.Plan(plan.lines, plan.blockers)
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
                       fix=fix, note="\n".join(unique(notes)))


def _hidden_prompt(sym: Symbol) -> str:
    """A note when the dependencies are met but the prompt's own condition
    (``bool "..." if EXPERT``, ``visible if``) hides it."""
    if not has_prompt(sym) or sym.visibility or not kconfiglib.expr_value(sym.direct_dep):
        return ""
    extra = _without(prompt_expr(sym), sym.direct_dep)
    cond = render_expr(extra) if extra is not None else render_expr(prompt_expr(sym))
    return f"the prompt of {sym.name} is hidden (shown only if {cond}), so its value comes from its default"


def _default_str(sym: Symbol, value: object, cond: object) -> str:
    extra = _without(cond, sym.direct_dep)
    return f"default {render_expr(value)}" + ("" if extra is None else f" if {render_expr(extra)}")


def _setting_line(symbol: str, value: str) -> str:
    return f"# {symbol} is not set" if value == "n" else f"{symbol}={value}"


def _unknown(model: KconfigModel, symbol: str, requested: str) -> Explanation:
    name = bare(symbol)
    names = [s.name for s in model.kconf.unique_defined_syms]
    close = tuple(PREFIX + n for n in difflib.get_close_matches(name, names, n=3, cutoff=0.75))
    elsewhere = _defined_elsewhere(model, name)
    if elsewhere:
        note = (f"{name} is defined in {', '.join(elsewhere[:3])}, which ARCH={model.arch} does not "
                "use: it does not exist for this architecture")
    else:
        note = f"no Kconfig file in {model.tree} defines {name}"
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
        for term in terms(expr, OR):
            if kconfiglib.expr_value(term):
                out.append(f"{kind} {render_expr(term)}")
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


def _without(cond: object, dep: object) -> object:
    """``cond`` minus the ``&&`` terms it shares with ``dep``: kconfiglib
    folds a symbol's dependencies into every default/select condition, which
    only repeats the 'depends on' line."""
    shared = set(map(id, terms(dep, AND)))
    keep = [t for t in terms(cond, AND) if id(t) not in shared and t not in terms(dep, AND)]
    if not keep:
        return None
    out = keep[0]
    for t in keep[1:]:
        out = (AND, out, t)
    return out
