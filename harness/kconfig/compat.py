"""Make kconfiglib 14.1.0 parse current Linux trees the way Kbuild does.

kconfiglib has not followed the kernel's Kconfig language since 2020, and it
evaluates ``$(shell ...)`` (hence ``$(cc-option ...)`` and friends from
``scripts/Kconfig.include``) with the calling process's environment and
working directory.  Three small differences matter for the kernels the
harness builds, and this module papers over exactly those:

* Linux >= 5.13 marks the modules symbol with a bare ``modules`` line; older
  trees (and kconfiglib) spell it ``option modules``.  The tokenizer hands
  the bare line to kconfiglib as ``option modules``, which kconfiglib accepts
  (it assumes the symbol is called MODULES, which it is).
* Linux >= 6.18 has ``transitional`` symbols: promptless, never written to a
  .config, only read from old ones to migrate renamed options.  The line is
  dropped, so such a symbol is an ordinary promptless symbol.  A .config
  produced by ``olddefconfig`` never contains one, so values loaded from it
  are unaffected; only a value given under the old name is not migrated.
* Macros see the environment Kbuild exports for config targets
  (:func:`kbuild_env`) instead of ``os.environ``, and ``$(shell ...)`` runs
  with that environment in a scratch directory: ``$(cc-option ...)`` creates
  ``.tmp_$$`` in its working directory, which must be writable, and Kbuild
  runs it in the build directory, not in the caller's.  ``$(info ...)``
  goes to the warnings list instead of stdout.

Everything else is kconfiglib as released.  :func:`parse` is the one entry
point; it raises :class:`CompatError` (a one-line reason) for anything that
goes wrong, whatever kconfiglib raised.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import kconfiglib

from harness import arches, proc
from harness.errors import HarnessError

_VERSION_VAR = re.compile(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=[ \t]*(\S*)", re.MULTILINE)
SHELL_TIMEOUT_S = 60
# kconfiglib reads $srctree from os.environ while it constructs the object;
# serialise the few milliseconds where it is set.
_ENV_LOCK = threading.Lock()


class CompatError(Exception):
    """Parsing failed; ``str()`` is a one-line reason fit for a user."""


def srcarch(arch: str) -> str:
    """The arch/ directory name Kbuild uses for ``ARCH=arch``: from arches/,
    else ARCH itself (the top Makefile's default)."""
    return next((a.srcarch for a in map(arches.load, arches.available()) if a.kernel_arch == arch), arch)


def kernel_version(tree: Path) -> str:
    """KERNELVERSION as the top Makefile computes it (e.g. ``6.12.117``)."""
    try:
        head = (tree / "Makefile").read_text(errors="replace")[:4096]
    except OSError:
        return ""
    v = dict(_VERSION_VAR.findall(head))
    out = v.get("VERSION", "")
    if v.get("PATCHLEVEL"):
        out += "." + v["PATCHLEVEL"]
        if v.get("SUBLEVEL"):
            out += "." + v["SUBLEVEL"]
    return out + v.get("EXTRAVERSION", "")


def _first_line(argv: str, env: Mapping[str, str]) -> str:
    """First line of ``argv --version``, '#' removed, like the Makefile's
    CC_VERSION_TEXT; "" when the tool is missing."""
    try:
        res = proc.run(shlex.split(argv) + ["--version"], env={**env, "LC_ALL": "C"}, timeout=SHELL_TIMEOUT_S,
                       split_stderr=True)
    except (OSError, HarnessError, ValueError):
        return ""
    lines = res.output.splitlines()
    return lines[0].replace("#", "") if lines else ""


def tool_exists(command: str) -> bool:
    """True if the program a Kbuild tool variable names (``ccache gcc``: all
    of its words that are programs) is on PATH."""
    words = shlex.split(command) if command.strip() else []
    return bool(words) and all(shutil.which(w) for w in words if not w.startswith("-"))


def kbuild_env(tree: Path, arch: str, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables the top Makefile exports to ``scripts/kconfig`` for
    ``make ARCH=arch [CROSS_COMPILE=..] [CC=..] *config``.

    ``overrides`` are what the harness puts on make's command line (ARCH,
    CROSS_COMPILE, CC, LD, ...) and win, as they do in make.  Only gcc/binutils
    builds are modelled (no LLVM=1, so no CLANG_FLAGS).
    """
    o = dict(overrides or {})
    arch = o.get("ARCH", arch)
    cross = o.get("CROSS_COMPILE", "")
    env = {
        "srctree": str(tree),
        "ARCH": arch,
        "SRCARCH": o.get("SRCARCH", srcarch(arch)),
        "CROSS_COMPILE": cross,
        "CC": f"{cross}gcc",
        "LD": f"{cross}ld",
        "AR": f"{cross}ar",
        "NM": f"{cross}nm",
        "OBJCOPY": f"{cross}objcopy",
        "OBJDUMP": f"{cross}objdump",
        "READELF": f"{cross}readelf",
        "STRIP": f"{cross}strip",
        "HOSTCC": "gcc",
        "HOSTCXX": "g++",
        "RUSTC": "rustc",
        "BINDGEN": "bindgen",
        "PAHOLE": "pahole",
        "PYTHON3": "python3",
        "PERL": "perl",
        "CONFIG_SHELL": "sh",
        "LC_COLLATE": "C",
        "LC_NUMERIC": "C",
        "KERNELVERSION": kernel_version(tree),
    }
    env.update(o)
    base = {**os.environ, **env}
    env.setdefault("CC_VERSION_TEXT", _first_line(env["CC"], base))
    env.setdefault("RUSTC_VERSION_TEXT", _first_line(env["RUSTC"], base))
    return env


_PREFIXED = ("CC", "LD", "AR", "NM", "OBJCOPY", "OBJDUMP", "READELF", "STRIP")


def compiler_fallback(env: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """``env`` unchanged if its compiler is installed.  Otherwise (typically
    a missing cross compiler) the host toolchain instead, plus a note: the
    kernel's ``$(error-if ...)`` would reject the missing compiler outright,
    while the host one still answers the generic probes (gcc version,
    ``-fstack-protector-strong``, ...) and gets arch-specific ones (arm64's
    ``-mbranch-protection``, assembler extensions) wrong, as "n"."""
    out = dict(env)
    if tool_exists(out.get("CC", "")):
        return out, None
    missing = out.get("CC", "")
    cross = out.get("CROSS_COMPILE", "")
    for var in _PREFIXED:
        value = out.get(var, "")
        if cross and value.startswith(cross):
            out[var] = value[len(cross):]
    if out.get("CC") == missing:
        out["CC"] = "gcc"
        out["LD"] = "ld"
    out["CROSS_COMPILE"] = ""
    if not tool_exists(out["CC"]):
        return dict(env), None  # nothing better: let the tree's own check name the compiler
    out["CC_VERSION_TEXT"] = _first_line(out["CC"], {**os.environ, **out})
    return out, (f"{missing} is not installed: compiler probes ($(cc-option ...), $(as-instr ...)) "
                 f"ran with the host's {out['CC']}, so symbols that depend on them may differ "
                 "from a real build")


class CompatKconfig(kconfiglib.Kconfig):
    """kconfiglib.Kconfig with the three fixes described in the module doc.

    ``env`` replaces ``os.environ`` for ``$(VAR)`` references and for the
    commands ``$(shell ...)`` runs; ``workdir`` is where they run.
    """

    def __init__(self, filename: str, env: Mapping[str, str], workdir: Path):
        # Set before kconfiglib starts parsing: it calls the overrides below.
        self._compat_env = dict(env)
        self._compat_workdir = workdir
        self.shell_calls = 0
        super().__init__(filename, warn=True, warn_to_stderr=False)

    def _tokenize(self, s: str) -> tuple:
        stripped = s.strip()
        if stripped == "modules":
            return (kconfiglib._T_OPTION, kconfiglib._T_MODULES, None)
        if stripped == "transitional":
            return (None,)
        return super()._tokenize(s)

    def _fn_val(self, args: list[str]) -> str:
        fn = args[0]
        if fn not in self.variables:
            if fn in ("shell", "info"):
                if len(args) != 2:
                    raise kconfiglib.KconfigError(
                        f"{self.filename}:{self.linenr}: bad number of arguments in call to {fn}")
                if fn == "info":  # kconfiglib print()s it; keep the caller's terminal clean
                    self.warnings.append(f"{self.filename}:{self.linenr}: {args[1]}")
                    return ""
                return self._compat_shell(args[1])
            if fn not in self._functions:
                if fn in self._compat_env:
                    self.env_vars.add(fn)
                    return self._compat_env[fn]
                return ""
        return super()._fn_val(args)

    def _compat_shell(self, command: str) -> str:
        """``$(shell,command)`` as Kbuild runs it; output post-processed the
        way kconfiglib's own implementation does."""
        self.shell_calls += 1
        res = proc.run(["/bin/sh", "-c", command], env=self._compat_env, cwd=self._compat_workdir,
                       timeout=SHELL_TIMEOUT_S, split_stderr=True)
        if res.timed_out:
            raise kconfiglib.KconfigError(
                f"{self.filename}:{self.linenr}: $(shell,{command}) did not finish in "
                f"{SHELL_TIMEOUT_S}s")
        stdout, stderr = res.output, res.stderr
        if stderr:
            self._warn(f"'{command}' wrote to stderr: {' '.join(stderr.splitlines())}",
                       self.filename, self.linenr)
        return "\n".join(stdout.splitlines()).rstrip("\n").replace("\n", " ")


@contextmanager
def _srctree(tree: Path) -> Iterator[None]:
    """kconfiglib takes $srctree (and nothing else we care about) from
    os.environ while it constructs; set it for that long only."""
    with _ENV_LOCK:
        saved = os.environ.get("srctree")
        os.environ["srctree"] = str(tree)
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("srctree", None)
            else:
                os.environ["srctree"] = saved


def one_line(e: BaseException) -> str:
    """The first meaningful line of an exception's message."""
    for line in str(e).splitlines():
        if line.strip():
            text = line.strip()
            return text if len(text) <= 300 else text[:297] + "..."
    return type(e).__name__


def parse(tree: Path, env: Mapping[str, str], top: str = "Kconfig") -> CompatKconfig:
    """Parse ``tree/top`` with ``env`` (see :func:`kbuild_env`).

    Raises :class:`CompatError` with a one-line reason on any failure: a
    syntax kconfiglib does not know, a missing file, ``$(error-if ...)``
    firing (no compiler), a command that hangs, or a bug in kconfiglib.
    """
    tree = Path(tree).resolve()
    if not (tree / top).is_file():
        raise CompatError(f"{tree / top} does not exist")
    full_env = {**os.environ, **env, "srctree": str(tree)}
    try:
        with tempfile.TemporaryDirectory(prefix="kconfig-shell-") as work, _srctree(tree):
            return CompatKconfig(top, full_env, Path(work))
    except kconfiglib.KconfigError as e:
        raise CompatError(f"kconfiglib cannot parse {tree.name}: {one_line(e)}") from None
    except OSError as e:
        raise CompatError(f"kconfiglib cannot read {tree.name}: {one_line(e)}") from None
    except RecursionError:
        raise CompatError(f"kconfiglib cannot parse {tree.name}: expressions nest too deeply") from None
    except Exception as e:  # noqa: BLE001 - kconfiglib internals: degrade, never crash
        raise CompatError(f"kconfiglib failed on {tree.name}: {type(e).__name__}: {one_line(e)}") from None
