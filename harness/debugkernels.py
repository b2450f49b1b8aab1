"""Debug kernels: ``configs/debug/<name>.config``, chosen with ``--debug
NAME[,NAME]`` (``lockdep``, ``kasan``, ...).  Their fragments go on top of the
profile's, and each combination is built in a build directory of its own, so
switching between them does not rebuild from scratch."""

from __future__ import annotations

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
    return tuple(sorted(names))


def fragments(names: tuple[str, ...]) -> tuple[Path, ...]:
    return tuple(directory() / f"{n}.config" for n in names)


def build_suffix(names: tuple[str, ...]) -> str:
    """"" for the default kernel, "+kasan+lockdep" for a debug one."""
    return "".join(f"+{n}" for n in names)
