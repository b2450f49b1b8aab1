"""The work directory: every output of the harness lives below it.

    <work>/cache/      downloads and extracted sources, reusable across runs
    <work>/trees/<key>/src/             the patched working copy of one kernel tree
    <work>/trees/<key>/build/<flavour>/ its kernel and selftest build directories
                                        (x86_64, x86_64+kasan+lockdep, ...)
    <work>/images/     guest initramfs images
    <work>/results/    one directory per run
    <work>/lock        held by the run using this work dir
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from harness import data
from harness.errors import InputError


def default_work() -> Path:
    """$IOMMUFD_HARNESS_WORK, else ./work of the checkout the tool runs from,
    else ./work in the current directory (an installed tool)."""
    if "IOMMUFD_HARNESS_WORK" in os.environ:
        return Path(os.environ["IOMMUFD_HARNESS_WORK"])
    top = data.checkout()
    return (top if top is not None else Path.cwd()) / "work"


def sha256_file(path: Path) -> str:
    """A file's content key for the caches (images, test lists)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class WorkDir:
    root: Path

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def trees(self) -> Path:
        return self.root / "trees"

    def tree_src(self, key: str) -> Path:
        """The working copy of the tree called ``key``."""
        return self.trees / key / "src"

    def tree_build(self, key: str, flavour: str) -> Path:
        """A build directory of that tree.  Every tree has the same layout,
        so the build sees its sources at the same relative path
        (``../../src``) whatever the tree is called: compiler command lines
        are the same, and ccache hits across trees with the same sources."""
        return self.trees / key / "build" / flavour

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def prepare(self) -> "WorkDir":
        try:
            for d in (self.root, self.cache, self.trees, self.images, self.results):
                d.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise InputError(
                f"work dir {self.root} is not usable: {e.strerror or e}",
                "pass a writable directory with --work (and check free disk space)",
            ) from None
        return self


class WorkLock:
    """An exclusive lock on a work dir, so two runs never share a build dir."""

    def __init__(self, work: WorkDir, wait: float = 0.0):
        self.path = work.root / "lock"
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> "WorkLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise InputError(
                        f"work dir {self.path.parent} is in use by another run ({holder or 'unknown pid'})",
                        "wait for it to finish, or use another --work directory",
                    ) from None
                time.sleep(1.0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
