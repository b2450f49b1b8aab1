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
from harness.stages.progress import ANY_LINE, BuildProgress
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


# The first release with iommufd, and with it the selftest support
# (CONFIG_IOMMUFD_TEST, the mock driver the selftests drive).
FIRST_IOMMUFD = (6, 2)
_DEBIAN_NAME = re.compile(r"linux-source-(\d+)\.(\d+)")


@dataclass(frozen=True)
class SourceRequest:
    kernel_src: Path | None = None  # None: Debian's linux-source package
    debian_package: str = DEBIAN_PACKAGE
    rev: str | None = None  # a commit of the --kernel-src git repository instead of its working tree


@dataclass(frozen=True)
class SourceOrigin:
    """A pristine tree the working copy is synced from."""

    path: Path
    kind: str  # "debian-package" | "directory" | "git" (a working tree) | "git-rev" (one commit of it)
    description: str  # e.g. "linux-source-6.12 6.12.117-1~deb12u1"
    key: str  # short, stable, filesystem-safe name for the working copy
    git: dict | None = None  # repo, head, describe (--dirty), diff_sha256, untracked, rev: see git_state()
    state: str = ""  # what the tree's content is, as far as the origin can say (a commit, a diff hash)


@dataclass(frozen=True)
class SourceTree:
    path: Path
    origin: SourceOrigin
    version: str  # "6.12.117"
    changed: tuple[str, ...]  # paths rsync updated in this sync
    protected: frozenset[str] = frozenset()  # paths the sync left alone
    state: str = ""  # a token for the origin's content: equal tokens, equal trees (see prepare())


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
    try:
        version = kernel_version(path)
    except SourceError:
        version = ""
    if not (path / "drivers/iommu/iommufd").is_dir():
        raise SourceError(f"{path} is Linux {version or '(unknown version)'}, which has no iommufd "
                          "(no drivers/iommu/iommufd)", _TOO_OLD_HINT)
    kconfig = path / "drivers/iommu/iommufd/Kconfig"
    if kconfig.is_file() and not re.search(r"^config IOMMUFD_TEST\b", kconfig.read_text(errors="replace"), re.M):
        raise SourceError(f"{path} (Linux {version}) has iommufd but no CONFIG_IOMMUFD_TEST in {kconfig}",
                          _TOO_OLD_HINT)


_TOO_OLD_HINT = (f"iommufd and its selftest support (CONFIG_IOMMUFD_TEST) appeared in Linux "
                 f"{FIRST_IOMMUFD[0]}.{FIRST_IOMMUFD[1]}; use a tree of {FIRST_IOMMUFD[0]}.{FIRST_IOMMUFD[1]} "
                 f"or later, e.g. Debian's {DEBIAN_PACKAGE} (the default)")


def debian_package_name(spec: Path | str | None) -> str | None:
    """``--kernel-src linux-source-X.Y`` names a Debian package, unless a
    directory of that name exists."""
    if spec is None or Path(spec).exists():
        return None
    return str(spec) if _DEBIAN_NAME.fullmatch(str(spec)) else None


def check_debian_package(package: str) -> None:
    """Refuse a Debian kernel source too old for iommufd before extracting it."""
    m = _DEBIAN_NAME.fullmatch(package)
    if m and (int(m.group(1)), int(m.group(2))) < FIRST_IOMMUFD:
        version = _dpkg_version(package)
        raise SourceError(f"{package} ({'version ' + version if version else 'Linux ' + m.group(1) + '.' + m.group(2)}) "
                          "has no iommufd", _TOO_OLD_HINT)


def debian_origin(work: WorkDir, package: str = DEBIAN_PACKAGE, show=None) -> SourceOrigin:
    """Extract Debian's ``linux-source-X.Y`` tarball once into the cache."""
    check_debian_package(package)
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
        progress = BuildProgress(f"extracting {tarball.name}", 0, show, pattern=ANY_LINE, unit="files") \
            if show else None
        proc.run(["tar", "-xvf", tarball, "-C", tmp], timeout=900, error=SourceError,
                 what=f"extracting {tarball}", keep_output=False,
                 on_output=progress.feed if progress else None)
        if progress:
            progress.done()
        inner = tmp / package
        if not inner.is_dir():
            subdirs = [p for p in tmp.iterdir() if p.is_dir()]
            if len(subdirs) != 1:
                raise SourceError(f"{tarball} does not unpack into one kernel tree")
            subdirs[0].rename(inner)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        stamp.write_text(f"{tarball} {pkg_version}\n")
    return SourceOrigin(tree, "debian-package", f"{package} {pkg_version}", f"debian-{series}",
                        state=f"{package} {pkg_version} {ident}")


def _repo_key(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name)[:40]
    return f"{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def user_origin(path: Path, work: WorkDir | None = None, rev: str | None = None) -> SourceOrigin:
    """A user's tree: a directory, a git working tree as it is (uncommitted
    changes included), or with ``rev`` one commit of that repository,
    exported to the work dir (the repository is only read)."""
    path = path.expanduser().resolve()
    if rev is not None:
        if not (path / ".git").exists():
            raise SourceError(f"--rev {rev}: {path} is not a git repository", "pass a git checkout with --kernel-src")
        if work is None:
            raise SourceError("--rev needs a work dir")
        return rev_origin(path, rev, work)
    check_kernel_tree(path)
    key = _repo_key(path)
    if not (path / ".git").exists():
        return SourceOrigin(path, "directory", str(path), key)
    git = git_state(path)
    return SourceOrigin(path, "git", f"{path} @ {git['describe']}", key, git=git,
                        state=f"git {git['head']} {git['diff_sha256']}")


def find_origin(req: SourceRequest, work: WorkDir, show=None) -> SourceOrigin:
    package = req.debian_package if req.kernel_src is None else debian_package_name(req.kernel_src)
    if package is not None:
        if req.rev is not None:
            raise SourceError(f"--rev {req.rev} needs a git repository", "pass a git checkout with --kernel-src")
        origin = debian_origin(work, package, show)
        check_kernel_tree(origin.path)
        return origin
    return user_origin(req.kernel_src, work, req.rev)


# --- git ----------------------------------------------------------------------------


def git(repo: Path, *args: str, env: dict | None = None, text: bool = True, what: str = "") -> str | bytes:
    """Run a read-only git command in ``repo`` (GIT_OPTIONAL_LOCKS=0: not even
    the index's stat cache is written); SourceError naming ``what`` if it fails."""
    proc.require_tool("git")
    import os
    import subprocess

    # GIT_NO_LAZY_FETCH: a partial clone must not fetch objects into the user's .git
    full = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_NO_LAZY_FETCH": "1", "LC_ALL": "C", **(env or {})}
    try:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, env=full, timeout=600)
    except subprocess.TimeoutExpired:
        raise SourceError(f"git {' '.join(args[:2])} in {repo} took more than 600 s") from None
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        raise SourceError(f"{what or 'git ' + ' '.join(args)} in {repo} failed: {err[-1] if err else res.returncode}",
                          "check the revision or range and that the repository is healthy")
    return res.stdout.decode(errors="replace") if text else res.stdout


def resolve(repo: Path, rev: str) -> str:
    """The full commit id ``rev`` names."""
    return git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}",
               what=f"finding commit {rev!r}").strip()


def describe(repo: Path, rev: str = "HEAD") -> str:
    return git(repo, "describe", "--tags", "--always", "--abbrev=12", rev).strip()


def git_state(repo: Path) -> dict:
    """What a git working tree holds: its commit, ``git describe --dirty``,
    and a hash of everything that is not committed (the diff against HEAD
    and the untracked, not ignored files), which the working copy carries."""
    head = resolve(repo, "HEAD")
    status = git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")
    entries = [e for e in status.split("\0") if e]
    untracked = sorted(e[3:] for e in entries if e.startswith("?? "))
    dirty = any(not e.startswith("?? ") for e in entries)
    h = hashlib.sha256(git(repo, "diff", "--binary", "--no-ext-diff", "--no-textconv", "HEAD", text=False))
    for rel in untracked:
        h.update(b"\0" + rel.encode() + b"\0")
        try:
            h.update((repo / rel).read_bytes())
        except OSError:
            pass
    return {"repo": str(repo), "head": head, "describe": describe(repo) + ("-dirty" if dirty else ""),
            "dirty": dirty, "untracked": len(untracked), "diff_sha256": h.hexdigest()}


def rev_origin(repo: Path, rev: str, work: WorkDir) -> SourceOrigin:
    """Commit ``rev`` of ``repo``, exported into ``<work>/cache/git/<key>/tree``
    with a private index: a switch to another commit rewrites only the files
    that differ (as ``git checkout`` would), so builds stay incremental."""
    sha = resolve(repo, rev)
    gitdir = git(repo, "rev-parse", "--absolute-git-dir").strip()
    key = _repo_key(repo)
    base = work.cache / "git" / key
    tree, index, stamp = base / "tree", base / "index", base / "exported"
    tree.mkdir(parents=True, exist_ok=True)
    try:
        previous = stamp.read_text().strip()
    except OSError:
        previous = ""
    if previous != sha:
        stamp.unlink(missing_ok=True)  # an interrupted switch starts over
        env = {"GIT_INDEX_FILE": str(index)}
        base_args = [f"--git-dir={gitdir}", f"--work-tree={tree}"]
        try:
            if not previous:
                raise SourceError("no previous export")
            git(Path(tree), *base_args, "read-tree", "-m", "-u", previous, sha, env=env,
                what=f"exporting {rev} ({sha[:12]})")
        except SourceError:
            # first export, or the previous one cannot be merged from (its commit
            # is gone after a rebase and gc, a killed git left index.lock):
            # write the tree afresh
            for stale in (index, index.with_name(index.name + ".lock")):
                stale.unlink(missing_ok=True)
            git(Path(tree), *base_args, "read-tree", "--reset", "-u", sha, env=env,
                what=f"exporting {rev} ({sha[:12]})")
        stamp.write_text(sha + "\n")
    check_kernel_tree(tree)
    desc = describe(repo, sha)
    info = {"repo": str(repo), "head": sha, "describe": desc, "dirty": False, "untracked": 0, "rev": rev}
    return SourceOrigin(tree, "git-rev", f"{repo} @ {desc}" + (f" ({rev})" if rev not in (desc, sha) else ""),
                        key + "-rev", git=info, state=f"git {sha}")


def sync(origin: SourceOrigin, dest: Path, protect: frozenset[str] = frozenset(), show=None) -> tuple[str, ...]:
    """Make ``dest`` a copy of the origin tree; returns the paths that changed.

    Paths in ``protect`` (relative, patched in ``dest`` and unchanged in the
    origin) are left alone so the patches stage need not re-apply them.
    """
    proc.require_tool("rsync")
    dest.mkdir(parents=True, exist_ok=True)
    # nanosecond times (-@-1): a file rewritten within the second of the last sync, same size, is seen
    argv = ["rsync", "-a", "--modify-window=-1", "--delete", "--itemize-changes", "--out-format=%i %n"]
    for pattern in BUILD_OUTPUTS:
        argv.append(f"--exclude={pattern}")
    for rel in sorted(protect):
        argv.append("--exclude=/" + _rsync_escape(rel))
    # State files the harness keeps in the working copy.
    argv += ["--exclude=/.harness-*"]
    argv += [f"{origin.path}/", f"{dest}/"]
    progress = BuildProgress(f"copying {origin.path.name}", 0, show, pattern=ANY_LINE, unit="files") \
        if show else None
    res = proc.run(argv, timeout=1800, error=SourceError, what=f"copying {origin.path}",
                   on_output=progress.feed if progress else None)
    if progress:
        progress.done(quiet=progress.steps <= 1000)  # say it when it was a real copy
    changed = []
    for line in res.output.splitlines():
        # "%i %n": an 11-character change summary, then the path.
        if len(line) > 12 and line[0] in "<>ch*" and line[11] == " ":
            name = line[12:]
            if not name.endswith("/"):
                changed.append(name)
    return tuple(changed)


def prepare(req: SourceRequest, work: WorkDir, protect_fn=None, show=None) -> SourceTree:
    """Find the origin and sync the working copy.  ``protect_fn(origin, dest)``
    returns the paths the sync must leave alone (see :func:`sync`)."""
    origin = find_origin(req, work, show)
    dest = work.tree_src(origin.key)
    protect = frozenset(protect_fn(origin, dest)) if protect_fn else frozenset()
    changed = _sync_unless_synced(origin, dest, protect, show)
    # a plain directory says nothing about its content: the working copy
    # counts the syncs that changed something
    state = origin.state or f"{origin.path} sync {bump_generation(dest, changed, SOURCE_GENERATION_FILE)}"
    return SourceTree(dest, origin, kernel_version(dest), changed, protect, state)


SYNCED_FILE = ".harness-synced"
IMMUTABLE = ("debian-package", "git-rev")  # origins whose content their state names exactly


def _sync_unless_synced(origin: SourceOrigin, dest: Path, protect: frozenset[str], show=None) -> tuple[str, ...]:
    """:func:`sync`, skipped when the working copy was last synced in full
    from this very state of an origin that never changes under the same
    state (an extracted package, an exported commit): nothing to copy, and
    the ~80,000 files need not be compared again.  The working copy is the
    harness's own; only the patches stage changes it, and it keeps track."""
    stamp = dest / SYNCED_FILE
    mark = f"{origin.kind} {origin.path} {origin.state}"
    if origin.kind in IMMUTABLE and origin.state:
        try:
            if stamp.read_text().strip() == mark:
                return ()
        except OSError:
            pass
    stamp.unlink(missing_ok=True)  # an interrupted sync is no sync
    changed = sync(origin, dest, protect, show)
    if origin.kind in IMMUTABLE and origin.state:
        stamp.write_text(mark + "\n")
    return changed


GENERATION_FILE = ".harness-generation"
SOURCE_GENERATION_FILE = ".harness-source-generation"
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


DPKG_STATUS = Path("/var/lib/dpkg/status")


def _dpkg_version(package: str, status: Path = DPKG_STATUS) -> str | None:
    """The version dpkg records for ``package`` (what ``dpkg-query -W -f
    '${Version}'`` prints), read from dpkg's status file: every run asks, and
    a dpkg-query process is a measurable part of a run that changes nothing."""
    try:
        text = status.read_text(errors="replace")
    except OSError:
        return _first_output(["dpkg-query", "-W", "-f", "${Version}", package])
    start = text.find(f"\nPackage: {package}\n")
    if start < 0 and not text.startswith(f"Package: {package}\n"):
        return None
    stanza = text[start + 1:].split("\n\n", 1)[0]
    m = re.search(r"^Version: (\S+)$", stanza, re.M)
    return m.group(1) if m else None


def _first_output(argv: list[str]) -> str | None:
    """What a query command printed on stdout, or None if it failed."""
    try:
        res = proc.run(argv, timeout=60, split_stderr=True)
    except (OSError, HarnessError):
        return None
    return res.output.strip() if res.returncode == 0 and not res.timed_out else None
