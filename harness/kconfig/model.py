"""Loading a kernel tree into kconfiglib, as the config stage's make saw it.

The config stage runs the tree's own ``make olddefconfig``; to explain what
it did, :func:`load_tree` loads the same tree with kconfiglib (through
:mod:`harness.kconfig.compat`, so current kernels parse and ``$(cc-option
...)`` sees the same compiler: :func:`toolchain_vars` gives make's
command-line variables) and loads the .config that olddefconfig wrote so
every value is the real one.  The result is a :class:`KconfigModel`, which
:mod:`harness.kconfig.explain` queries.

Loading never raises: any failure becomes "no explanation available:
<reason>" (:class:`Unavailable`).  A model is not thread-safe (checking a
proposal, :mod:`harness.kconfig.planner`, loads values into it for a moment).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import kconfiglib
from kconfiglib import Symbol

from harness.kconfig import compat
from harness.kconfig.symbols import bare
from harness.toolchain import Toolchain


@dataclass(frozen=True)
class Unavailable:
    """The tree could not be loaded; ``reason`` is one line."""

    reason: str

    def render(self) -> str:
        return f"no explanation available: {self.reason}"


@dataclass(frozen=True, eq=False)
class KconfigModel:
    """A parsed tree with a .config loaded: what
    :func:`harness.kconfig.explain.explain` queries."""

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
        sym = self.kconf.syms.get(bare(name))
        return sym if sym is not None and sym.nodes else None

    def value(self, name: str) -> str | None:
        """The value the loaded .config gives ``name``; None if undefined."""
        sym = self.symbol(name)
        return None if sym is None else sym.str_value


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
