"""Debug kernels: ``configs/debug/<name>.config``, chosen with ``--debug
NAME[,NAME]`` (``lockdep``, ``kasan``, ...).  Their fragments go on top of the
profile's, and each combination is built in a build directory of its own, so
switching between them does not rebuild from scratch.  ``<name>.toml`` next
to a fragment holds what the harness does differently on that kernel: its
measured ``slowdown`` (per-test limits grow by it) and the debug kernels it
``conflicts`` with (KCSAN and KASAN)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

from harness import data
from harness.errors import InputError


def directory() -> Path:
    return data.folder("configs") / "debug"


def available() -> list[str]:
    return sorted(p.stem for p in directory().glob("*.config"))


def parse(specs: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Names from --debug values ("lockdep,kasan", repeatable), checked,
    without duplicates, in a stable order (the build directory's name)."""
    names = {n.strip() for spec in specs for n in spec.split(",") if n.strip()}
    unknown = sorted(names - set(available()))
    if unknown:
        raise InputError(f"unknown debug kernel {', '.join(unknown)}",
                         f"available: {', '.join(available())} (configs/debug/*.config)")
    for name in sorted(names):
        clash = sorted(names & set(_facts(name).get("conflicts", [])))
        if clash:
            raise InputError(f"debug kernels {name} and {', '.join(clash)} cannot be combined",
                             f"the kernel builds one of them at a time (configs/debug/{name}.toml); "
                             "run them as two runs")
    return tuple(sorted(names))


def fragments(names: tuple[str, ...]) -> tuple[Path, ...]:
    """The debug kernels' fragments, and with any of them the line tables
    (``configs/debuginfo.config``) that decode their traces to file:line."""
    return tuple(directory() / f"{n}.config" for n in names) + \
        ((data.folder("configs") / "debuginfo.config",) if names else ())


def build_suffix(names: tuple[str, ...]) -> str:
    """"" for the default kernel, "+kasan+lockdep" for a debug one."""
    return "".join(f"+{n}" for n in names)


def _facts(name: str) -> dict:
    path = directory() / f"{name}.toml"
    if not path.is_file():
        return {}
    try:
        facts = tomllib.loads(path.read_text())
        float(facts.get("slowdown", 1))
    except (tomllib.TOMLDecodeError, TypeError, ValueError) as e:
        raise InputError(f"{path} is invalid: {e}") from None
    return facts


def slowdown(names: tuple[str, ...]) -> float:
    """How much slower the tests run on this debug kernel than on the
    default one: the product of each option's measured factor."""
    return math.prod(float(_facts(n).get("slowdown", 1)) for n in names)

