"""How to invoke the kernel build for one architecture (facts from arches/)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness import arches
from harness.errors import ToolMissing


@dataclass(frozen=True)
class Toolchain:
    arch: str  # a name from arches/: "x86_64", "arm64"
    jobs: int = 0  # 0: one per CPU
    use_ccache: bool = True

    def __post_init__(self):
        arches.load(self.arch)  # an unknown architecture is an input error here

    @property
    def spec(self) -> arches.Arch:
        return arches.load(self.arch)

    @property
    def kernel_arch(self) -> str:
        return self.spec.kernel_arch

    @property
    def image_target(self) -> str:
        return self.spec.image_target

    @property
    def image_path(self) -> str:
        return self.spec.image_path

    @property
    def elf_machine(self) -> str:
        return self.spec.elf_machine

    @property
    def native(self) -> bool:
        return self.spec.native

    @property
    def cross_compile(self) -> str:
        return "" if self.native else self.spec.cross_compile

    @property
    def cc(self) -> str:
        return self.cross_compile + "gcc"

    @property
    def gcov(self) -> str:
        """The gcov that reads this compiler's coverage notes (--coverage)."""
        return self.cross_compile + "gcov"

    @property
    def ccache(self) -> bool:
        return self.use_ccache and shutil.which("ccache") is not None

    def check(self) -> None:
        if shutil.which(self.cc) is None:
            pkg = "gcc libc6-dev" if self.native else " ".join(self.spec.cross_packages)
            raise ToolMissing(f"compiler {self.cc} for {self.arch} is not installed",
                              f"install it with: apt-get install {pkg}  (or run 'make setup')")

    def env(self) -> dict[str, str]:
        env = {"ARCH": self.kernel_arch}
        if self.cross_compile:
            env["CROSS_COMPILE"] = self.cross_compile
        return env

    def ccache_env(self, tree: Path, build_dir: Path) -> dict[str, str]:
        """ccache's base dir for a build of ``tree`` in ``build_dir``: paths
        under it are hashed relative to the build dir, so another checkout
        (another work dir with the same sources) hits the same cache.  A
        debug kernel's objects carry line tables, whose compile directory
        ccache would otherwise hash too (hash_dir): the directory named in
        them may be another checkout's, and decoded traces name files
        relative to the tree whatever it is (reports.decode)."""
        if not self.ccache:
            return {}
        return {"CCACHE_BASEDIR": os.path.commonpath([tree.resolve(), build_dir.resolve()]),
                "CCACHE_NOHASHDIR": "1"}

    def make_argv(self, tree: Path, build_dir: Path | None = None, jobs: bool = False) -> list[str]:
        argv = ["make", "-C", str(tree), f"ARCH={self.kernel_arch}"]
        if build_dir is not None:
            argv.append(f"O={build_dir}")
        if self.cross_compile:
            argv.append(f"CROSS_COMPILE={self.cross_compile}")
        if self.ccache:
            argv.append(f"CC=ccache {self.cc}")
            if build_dir is not None:
                # with ccache_env()'s base dir, ccache hands the compiler the
                # source as a path relative to the build dir; this maps it
                # back as Kbuild maps the absolute one, so __FILE__ (and the
                # "WARNING: ... at drivers/...: " of kernel reports) stays
                # drivers/...
                argv.append(f"KCFLAGS=-fmacro-prefix-map={_relative(tree, build_dir)}/=")
        if jobs:
            argv.append(f"-j{self.jobs or os.cpu_count() or 1}")
        return argv


def _relative(tree: Path, build_dir: Path) -> str:
    return os.path.relpath(tree.resolve(), build_dir.resolve())
