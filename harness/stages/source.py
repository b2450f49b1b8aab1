"""Stage 1 (source): find the kernel tree and keep a working copy of it.

The user's tree is never modified: the harness works on a copy under
``<work>/trees/<key>/src`` that is synced with rsync, which keeps modification times, so a
re-run only rebuilds what really changed.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from harness import proc
from harness.errors import HarnessError, SourceError
from harness.workdir import WorkDir

DEBIAN_PACKAGE = "linux-source-6.12"

# In-tree build outputs that must not reach the working copy (``make O=``
# refuses a source tree that holds a configured build).
BUILD_OUTPUTS = [
    "/.git", "/.config", "/.config.old", "/include/config/", "/include/generated/",
    "/arch/*/include/generated/", "*.o", "*.a", "*.ko", "*.cmd", "*.mod", "*.mod.c",
    "*.order", "/vmlinux", "/vmlinux.*", "/System.map", "/Module.symvers", "/modules.*",
    "/.tmp_*", "/.version", "/usr/include/", "/scripts/basic/fixdep",
]


@dataclass(frozen=True)
class SourceRequest:
    kernel_src: Path | None = None  # None: Debian's linux-source package
    debian_package: str = DEBIAN_PACKAGE


@dataclass(frozen=True)
class SourceOrigin:
    """A pristine tree the working copy is synced from."""

    path: Path
    kind: str  # "debian-package" | "directory" | "git"
    description: str  # e.g. "linux-source-6.12 6.12.117-1~deb12u1"
    key: str  # short, stable, filesystem-safe name for the working copy


@dataclass(frozen=True)
class SourceTree:
    path: Path
    origin: SourceOrigin
    version: str  # "6.12.117"
    changed: tuple[str, ...]  # paths rsync updated in this sync
    protected: frozenset[str] = frozenset()  # paths the sync left alone


def kernel_version(tree: Path) -> str:
    """Version from the top-level Makefile, as ``make kernelversion`` prints it."""
    try:
        text = (tree / "Makefile").read_text(errors="replace")
    except OSError:
        raise SourceError(f"{tree} has no top-level Makefile", "point --kernel-src at the top of a Linux tree") from None
    fields = {}
    for name in ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION"):
        m = re.search(rf"^{name}\s*=\s*(\S*)\s*$", text, re.M)
        fields[name] = m.group(1) if m else ""
    if not fields["VERSION"] or not fields["PATCHLEVEL"]:
        raise SourceError(f"{tree}/Makefile does not look like a Linux kernel Makefile",
                          "point --kernel-src at the top of a Linux tree")
    ver = f"{fields['VERSION']}.{fields['PATCHLEVEL']}"
    if fields["SUBLEVEL"] and fields["SUBLEVEL"] != "0":
        ver += f".{fields['SUBLEVEL']}"
    return ver + fields["EXTRAVERSION"]


def check_kernel_tree(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"kernel source {path} does not exist", "pass the path of a Linux source tree with --kernel-src")
    if not path.is_dir():
        raise SourceError(f"kernel source {path} is not a directory", "pass the path of a Linux source tree with --kernel-src")
    missing = [p for p in ("Makefile", "Kconfig", "drivers/iommu") if not (path / p).exists()]
    if missing:
        raise SourceError(
            f"{path} is not a Linux kernel tree (missing {', '.join(missing)})",
            "pass the top directory of a Linux source tree with --kernel-src",
        )
    if not (path / "drivers/iommu/iommufd").is_dir():
        raise SourceError(f"{path} has no drivers/iommu/iommufd (kernel older than 6.2?)",
                          "iommufd first appeared in Linux 6.2; use a newer tree")


def debian_origin(work: WorkDir, package: str = DEBIAN_PACKAGE) -> SourceOrigin:
    """Extract Debian's ``linux-source-X.Y`` tarball once into the cache."""
    series = package.removeprefix("linux-source-")
    tarballs = [Path(f"/usr/src/{package}.tar.{ext}") for ext in ("xz", "bz2", "gz")]
    tarball = next((t for t in tarballs if t.exists()), None)
    if tarball is None:
        raise SourceError(
            f"Debian package {package} is not installed (no /usr/src/{package}.tar.xz)",
            f"install it with: apt-get install {package}  (or run 'make setup')",
        )
    pkg_version = _dpkg_version(package) or "unknown"
    st = tarball.stat()
    ident = hashlib.sha256(f"{tarball}:{st.st_size}:{st.st_mtime_ns}:{pkg_version}".encode()).hexdigest()[:12]
    dest = work.cache / "debian" / f"{package}-{ident}"
    stamp = dest / ".harness-extracted"
    tree = dest / package
    if not stamp.exists():
        proc.require_tool("tar")
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        proc.run(["tar", "-xf", tarball, "-C", tmp], timeout=900, error=SourceError,
                 what=f"extracting {tarball}", keep_output=False)
        inner = tmp / package
        if not inner.is_dir():
            subdirs = [p for p in tmp.iterdir() if p.is_dir()]
            if len(subdirs) != 1:
                raise SourceError(f"{tarball} does not unpack into one kernel tree")
            subdirs[0].rename(inner)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        stamp.write_text(f"{tarball} {pkg_version}\n")
    return SourceOrigin(tree, "debian-package", f"{package} {pkg_version}", f"debian-{series}")


def user_origin(path: Path) -> SourceOrigin:
    path = path.expanduser().resolve()
    check_kernel_tree(path)
    kind = "git" if (path / ".git").exists() else "directory"
    desc = str(path)
    if kind == "git":
        head = _git_describe(path)
        if head:
            desc += f" @ {head}"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name)[:40]
    key = f"{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    return SourceOrigin(path, kind, desc, key)


def find_origin(req: SourceRequest, work: WorkDir) -> SourceOrigin:
    if req.kernel_src is None:
        origin = debian_origin(work, req.debian_package)
        check_kernel_tree(origin.path)
        return origin
    return user_origin(req.kernel_src)


def sync(origin: SourceOrigin, dest: Path, protect: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Make ``dest`` a copy of the origin tree; returns the paths that changed.

    Paths in ``protect`` (relative, patched in ``dest`` and unchanged in the
    origin) are left alone so the patches stage need not re-apply them.
    """
    proc.require_tool("rsync")
    dest.mkdir(parents=True, exist_ok=True)
    argv = ["rsync", "-a", "--delete", "--itemize-changes", "--out-format=%i %n"]
    for pattern in BUILD_OUTPUTS:
        argv.append(f"--exclude={pattern}")
    for rel in sorted(protect):
        argv.append("--exclude=/" + _rsync_escape(rel))
    # State files the harness keeps in the working copy.
    argv += ["--exclude=/.harness-*"]
    argv += [f"{origin.path}/", f"{dest}/"]
    res = proc.run(argv, timeout=1800, error=SourceError, what=f"copying {origin.path}")
    changed = []
    for line in res.output.splitlines():
        # "%i %n": an 11-character change summary, then the path.
        if len(line) > 12 and line[0] in "<>ch*" and line[11] == " ":
            name = line[12:]
            if not name.endswith("/"):
                changed.append(name)
    return tuple(changed)


def prepare(req: SourceRequest, work: WorkDir, protect_fn=None) -> SourceTree:
    """Find the origin and sync the working copy.  ``protect_fn(origin, dest)``
    returns the paths the sync must leave alone (see :func:`sync`)."""
    origin = find_origin(req, work)
    dest = work.tree_src(origin.key)
    protect = frozenset(protect_fn(origin, dest)) if protect_fn else frozenset()
    changed = sync(origin, dest, protect)
    return SourceTree(dest, origin, kernel_version(dest), changed, protect)


GENERATION_FILE = ".harness-generation"
KCONFIG_GENERATION_FILE = ".harness-kconfig-generation"


def is_kconfig(rel: str) -> bool:
    """A file Kconfig reads: Kconfig, Kconfig.debug, arch/*/Kconfig.platforms, ..."""
    return Path(rel).name.startswith("Kconfig")


def bump_generation(tree: Path, changed, name: str = GENERATION_FILE) -> str:
    """A token that changes whenever the working copy's content changes, so
    the build stage can tell that nothing changed without running make.
    With ``name=KCONFIG_GENERATION_FILE`` and only the Kconfig files among
    ``changed``, the same for the tree's Kconfig (the config stage's key)."""
    path = tree / name
    try:
        current = path.read_text().strip()
    except OSError:
        current = ""
    if changed or not current:
        current = hashlib.sha256(f"{current}:{time.time_ns()}:{sorted(changed)}".encode()).hexdigest()[:16]
        path.write_text(current + "\n")
    return current


def _rsync_escape(rel: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", rel)


def _dpkg_version(package: str) -> str | None:
    return _first_output(["dpkg-query", "-W", "-f", "${Version}", package])


def _git_describe(path: Path) -> str | None:
    return _first_output(["git", "-C", str(path), "describe", "--always", "--dirty", "--abbrev=12"])


def _first_output(argv: list[str]) -> str | None:
    """What a query command printed on stdout, or None if it failed."""
    try:
        res = proc.run(argv, timeout=60, split_stderr=True)
    except (OSError, HarnessError):
        return None
    return res.output.strip() if res.returncode == 0 and not res.timed_out else None
