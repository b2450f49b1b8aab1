"""Small helpers on kconfiglib symbols and expressions, shared by
:mod:`harness.kconfig.model`, :mod:`harness.kconfig.explain` and
:mod:`harness.kconfig.planner`: symbol names with and without ``CONFIG_``,
values as a .config line carries them and the rule that compares them,
prompts, and expressions and locations rendered for a person to read.
"""

from __future__ import annotations

from collections.abc import Iterable

import kconfiglib
from kconfiglib import OR, STRING, Choice, Symbol

PREFIX = "CONFIG_"
TRI = {"n": 0, "m": 1, "y": 2}
TRI_STR = ("n", "m", "y")


def bare(name: str) -> str:
    name = name.strip()
    return name.removeprefix(PREFIX)


def config_value(sym: Symbol) -> str:
    """The value as a .config line would carry it (strings quoted)."""
    if sym.type is STRING:
        return f'"{kconfiglib.escape(sym.str_value)}"'
    return sym.str_value


def same_value(requested: str, actual: str | None) -> bool:
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


def terms(expr: object, op: int) -> list:
    return kconfiglib.split_expr(expr, op)


def _with_value(sc: object) -> str:
    """``NAME [=value]`` like menuconfig's help; constants as written."""
    if sc.__class__ is Symbol and not sc.is_constant:
        return f"{sc.name} [={sc.str_value if sc.nodes else 'n'}]"
    return kconfiglib.standard_sc_expr_str(sc)


def render_expr(expr: object) -> str:
    return kconfiglib.expr_str(expr, _with_value)


def locations(item: Symbol | Choice) -> str:
    return ", ".join(f"{n.filename}:{n.linenr}" for n in item.nodes) or "nowhere"


def has_prompt(sym: Symbol) -> bool:
    return any(n.prompt for n in sym.nodes)


def prompt_expr(sym: Symbol) -> object:
    """When the prompt shows (its ``if``, ``visible if`` and dependencies)."""
    exprs = [n.prompt[1] for n in sym.nodes if n.prompt]
    out = exprs[0] if exprs else sym.kconfig.n
    for e in exprs[1:]:
        out = (OR, out, e)
    return out


def promptless_note(sym: Symbol, short: bool = False) -> str:
    where = locations(sym)
    what = "provided by the architecture" if where.startswith("arch/") else "not user-settable"
    return f"no prompt: {what}, {where}" if short else f"{sym.name} has no prompt ({what}, {where})"


def unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
